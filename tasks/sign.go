package tasks

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"

	"github.com/pbsq/pbsq/datastore/name"
)

// Signed tasks (DESIGN: trust). Whoever can write to Redis can queue any
// task; a key shared by the enqueuers and the workers (and nobody else)
// lets workers refuse tasks that no key holder queued. The signature is an
// HMAC-SHA-256 over the task type, its id, an expiry and the payload bytes,
// carried in two asynq task headers beside the payload (which stays the
// plain JSON every tool shows). Binding the id means a signed payload
// cannot be queued again under another id; asynq refuses a second task
// with the same id while the first is retained, and the expiry (the
// retention, 7 days) ends the replay window after that.
const (
	// HeaderSignature holds the hex HMAC.
	HeaderSignature = "pbsq-signature"
	// HeaderExpires holds the expiry in Unix seconds.
	HeaderExpires = "pbsq-expires"
	// SignatureTTL is how long a signed task may wait to start (or retry).
	SignatureTTL = 7 * 24 * time.Hour
	// MinKeyLen is the least length of a key line.
	MinKeyLen = 32
	// maxKeyFile bounds the key file read.
	maxKeyFile = 64 << 10
)

// Errors of Verify; all wrap name.ErrInvalid, so the task is archived as invalid.
var (
	ErrUnsigned     = fmt.Errorf("%w task: not signed (this worker requires signed tasks: security.task-key-file)", name.ErrInvalid)
	ErrBadSignature = fmt.Errorf("%w task: signature does not match (forged or altered, or signed with a key this worker does not have)", name.ErrInvalid)
	ErrExpired      = fmt.Errorf("%w task: signature expired", name.ErrInvalid)
)

// Keys is a ring of task-signing keys: the first signs, every one
// verifies (rotation: add the new key first, drop the old one once no task
// signed with it is left). It never prints its keys.
type Keys struct {
	keys [][]byte
}

// String hides the keys from any log or error that formats Keys.
func (k *Keys) String() string {
	if k == nil {
		return "no task keys"
	}
	return fmt.Sprintf("%d task key(s)", len(k.keys))
}

// GoString is String, for %#v.
func (k *Keys) GoString() string { return k.String() }

// Len is the number of keys.
func (k *Keys) Len() int { return len(k.keys) }

// ParseKeys reads a key file's content: one key a line, at least MinKeyLen
// characters, blank lines and lines starting with '#' ignored. Errors name
// the line, never its content.
func ParseKeys(data []byte) (*Keys, error) {
	k := &Keys{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxKeyFile)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if len(line) < MinKeyLen {
			return nil, fmt.Errorf("%w key line %d: %d characters, need at least %d (e.g. 64 hex digits from `openssl rand -hex 32`)", name.ErrInvalid, n, len(line), MinKeyLen)
		}
		k.keys = append(k.keys, []byte(line))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w key file: %v", name.ErrInvalid, err)
	}
	if len(k.keys) == 0 {
		return nil, fmt.Errorf("%w key file: no key in it", name.ErrInvalid)
	}
	return k, nil
}

// LoadKeys reads the key file at path. It refuses a file that others may
// read or write, or that belongs to another user than the caller or root:
// a key anybody can read signs anybody's tasks.
func LoadKeys(path string) (*Keys, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("task key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("task key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w task key file %s: not a regular file", name.ErrInvalid, path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w task key file %s: mode %04o lets other users read or change it; chmod 600 %s", name.ErrInvalid, path, perm, path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("%w task key file %s: owned by uid %d, not by this user (uid %d) or root", name.ErrInvalid, path, st.Uid, os.Geteuid())
	}
	if fi.Size() > maxKeyFile {
		return nil, fmt.Errorf("%w task key file %s: %d bytes, more than %d", name.ErrInvalid, path, fi.Size(), maxKeyFile)
	}
	data := make([]byte, fi.Size())
	if _, err := f.ReadAt(data, 0); err != nil && fi.Size() > 0 {
		return nil, fmt.Errorf("task key file %s: %w", path, err)
	}
	k, err := ParseKeys(data)
	if err != nil {
		return nil, fmt.Errorf("task key file %s: %w", path, err)
	}
	return k, nil
}

// GenerateKeyFile writes a new key file with one random key (mode 0600)
// unless path exists; it reports whether it wrote one.
func GenerateKeyFile(path string) (bool, error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return false, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("task key file: %w", err)
	}
	_, err = fmt.Fprintf(f, "# pbsq task-signing keys: the first signs, all verify\n%s\n", hex.EncodeToString(raw))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
		return false, fmt.Errorf("task key file: %w", err)
	}
	return true, nil
}

func mac(key []byte, typ, id, expires string, payload []byte) []byte {
	h := hmac.New(sha256.New, key)
	for _, s := range []string{"pbsq-task-v1", typ, id, expires} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	h.Write(payload)
	return h.Sum(nil)
}

// Sign returns the headers that sign a task with the first key.
func (k *Keys) Sign(typ, id string, payload []byte, expires time.Time) map[string]string {
	exp := strconv.FormatInt(expires.Unix(), 10)
	return map[string]string{
		HeaderSignature: hex.EncodeToString(mac(k.keys[0], typ, id, exp, payload)),
		HeaderExpires:   exp,
	}
}

// Verify checks a task's signature headers against every key, and its
// expiry against now.
func (k *Keys) Verify(typ, id string, payload []byte, headers map[string]string, now time.Time) error {
	sig, exp := headers[HeaderSignature], headers[HeaderExpires]
	if sig == "" && exp == "" {
		return ErrUnsigned
	}
	got, err := hex.DecodeString(sig)
	if err != nil || len(got) != sha256.Size {
		return ErrBadSignature
	}
	ok := false
	for _, key := range k.keys {
		ok = hmac.Equal(got, mac(key, typ, id, exp, payload)) || ok
	}
	if !ok {
		return ErrBadSignature
	}
	// Signed, so exp is what the signer wrote.
	secs, err := strconv.ParseInt(exp, 10, 64)
	if err != nil {
		return ErrBadSignature
	}
	if at := time.Unix(secs, 0); now.After(at) {
		return fmt.Errorf("%w at %s", ErrExpired, at.UTC().Format(time.RFC3339))
	}
	return nil
}

// NewSignedTask is NewTask signed with k: it signs the task id given in
// opts (asynq.TaskID, e.g. a chained task's), or picks one, and the
// expiry (now + SignatureTTL).
func NewSignedTask(p Payload, k *Keys, now time.Time, opts ...asynq.Option) (*asynq.Task, error) {
	t, err := NewTask(p, opts...)
	if err != nil {
		return nil, err
	}
	id := uuid.NewString()
	for _, o := range opts {
		// The last one wins, as in asynq.
		if v, ok := o.Value().(string); ok && o.Type() == asynq.TaskIDOpt {
			id = v
		}
	}
	h := k.Sign(t.Type(), id, t.Payload(), now.Add(SignatureTTL))
	return asynq.NewTaskWithHeaders(t.Type(), t.Payload(), h, append(taskOptions(p), append(opts, asynq.TaskID(id))...)...), nil
}
