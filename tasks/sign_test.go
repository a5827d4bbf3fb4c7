package tasks

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/pbsq/pbsq/datastore/lock/redistest"
	"github.com/pbsq/pbsq/datastore/name"
)

const (
	testKey1 = "0123456789abcdef0123456789abcdef-one"
	testKey2 = "0123456789abcdef0123456789abcdef-two"
)

func mustKeys(t *testing.T, lines ...string) *Keys {
	t.Helper()
	k, err := ParseKeys([]byte(strings.Join(lines, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSignVerify(t *testing.T) {
	now := time.Now()
	k1, k2 := mustKeys(t, testKey1), mustKeys(t, testKey2)
	payload := []byte(`{"store":"a","keep-last":1}`)
	h := k1.Sign(TypePrune, "id1", payload, now.Add(time.Hour))
	cases := []struct {
		name    string
		keys    *Keys
		typ, id string
		payload []byte
		headers map[string]string
		now     time.Time
		want    error
	}{
		{"signed", k1, TypePrune, "id1", payload, h, now, nil},
		{"unsigned", k1, TypePrune, "id1", payload, nil, now, ErrUnsigned},
		{"other key", k2, TypePrune, "id1", payload, h, now, ErrBadSignature},
		{"payload altered", k1, TypePrune, "id1", []byte(`{"store":"a","keep-last":2}`), h, now, ErrBadSignature},
		{"type altered", k1, TypeVerify, "id1", payload, h, now, ErrBadSignature},
		{"id altered", k1, TypePrune, "id2", payload, h, now, ErrBadSignature},
		{"expiry altered", k1, TypePrune, "id1", payload, map[string]string{HeaderSignature: h[HeaderSignature], HeaderExpires: "99999999999"}, now, ErrBadSignature},
		{"garbage signature", k1, TypePrune, "id1", payload, map[string]string{HeaderSignature: "zz", HeaderExpires: h[HeaderExpires]}, now, ErrBadSignature},
		{"expired", k1, TypePrune, "id1", payload, h, now.Add(2 * time.Hour), ErrExpired},
		{"rotation: old key still verifies", mustKeys(t, testKey2, testKey1), TypePrune, "id1", payload, h, now, nil},
	}
	for _, c := range cases {
		err := c.keys.Verify(c.typ, c.id, c.payload, c.headers, c.now)
		if !errors.Is(err, c.want) || (c.want != nil && !errors.Is(err, name.ErrInvalid)) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
		if err != nil && (strings.Contains(err.Error(), testKey1) || strings.Contains(err.Error(), testKey2)) {
			t.Errorf("%s: error shows a key: %v", c.name, err)
		}
	}
	// The first key of a ring signs.
	ring := mustKeys(t, testKey2, testKey1)
	h2 := ring.Sign(TypePrune, "id1", payload, now.Add(time.Hour))
	if err := k2.Verify(TypePrune, "id1", payload, h2, now); err != nil {
		t.Errorf("ring signs with its first key: %v", err)
	}
	if err := k1.Verify(TypePrune, "id1", payload, h2, now); !errors.Is(err, ErrBadSignature) {
		t.Errorf("ring signed with a later key: %v", err)
	}
}

func TestParseKeys(t *testing.T) {
	k := mustKeys(t, "# comment", "", "  "+testKey1+"  ", testKey2)
	if k.Len() != 2 {
		t.Errorf("%d keys, want 2", k.Len())
	}
	for _, s := range []string{k.String(), k.GoString()} {
		if strings.Contains(s, testKey1) {
			t.Errorf("String shows the key: %s", s)
		}
	}
	for _, bad := range []string{"", "# only a comment\n", "short-key\n" + testKey1} {
		_, err := ParseKeys([]byte(bad))
		if !errors.Is(err, name.ErrInvalid) {
			t.Errorf("ParseKeys(%q): %v, want name.ErrInvalid", bad, err)
		}
		if err != nil && strings.Contains(err.Error(), "short-key") {
			t.Errorf("error shows the line: %v", err)
		}
	}
}

func TestLoadKeysFileChecks(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "task.key")
	created, err := GenerateKeyFile(p)
	if err != nil || !created {
		t.Fatalf("generate: %v %v", created, err)
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("generated key mode %v (%v), want 0600", fi.Mode(), err)
	}
	data, _ := os.ReadFile(p)
	if again, err := GenerateKeyFile(p); err != nil || again {
		t.Errorf("second generate: %v %v, want no overwrite", again, err)
	}
	if after, _ := os.ReadFile(p); string(after) != string(data) {
		t.Error("second generate changed the key")
	}
	if k, err := LoadKeys(p); err != nil || k.Len() != 1 {
		t.Fatalf("load: %v %v", k, err)
	}
	if err := os.Chmod(p, 0o640); err != nil {
		t.Fatal(err)
	}
	_, err = LoadKeys(p)
	if !errors.Is(err, name.ErrInvalid) || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("group-readable key file: %v", err)
	}
	if _, err := LoadKeys(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing key file: %v", err)
	}
	if _, err := LoadKeys(dir); !errors.Is(err, name.ErrInvalid) {
		t.Errorf("directory as key file: %v", err)
	}
}

func FuzzParseKeys(f *testing.F) {
	f.Add([]byte(testKey1 + "\n# c\n" + testKey2))
	f.Add([]byte("short"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParseKeys(data)
		if err != nil {
			if !errors.Is(err, name.ErrInvalid) {
				t.Fatalf("error not name.ErrInvalid: %v", err)
			}
			return
		}
		h := k.Sign(TypeGC, "id", data, time.Now().Add(time.Minute))
		if err := k.Verify(TypeGC, "id", data, h, time.Now()); err != nil {
			t.Fatalf("own signature refused: %v", err)
		}
	})
}

// A task id given as an option (a chained task's) is the one signed and
// kept; without one, NewSignedTask picks one.
func TestNewSignedTaskKeepsGivenID(t *testing.T) {
	k := mustKeys(t, testKey1)
	now := time.Now()
	p := &Verify{Store: "demo"}
	task, err := NewSignedTask(p, k, now, asynq.TaskID("chained-1"))
	if err != nil {
		t.Fatal(err)
	}
	if id := taskID(t, task); id != "chained-1" {
		t.Fatalf("task id %q, want the given chained-1", id)
	}
	if err := k.Verify(task.Type(), "chained-1", task.Payload(), task.Headers(), now); err != nil {
		t.Errorf("signature of the given id: %v", err)
	}
	task, err = NewSignedTask(p, k, now)
	if err != nil {
		t.Fatal(err)
	}
	id := taskID(t, task)
	if id == "" || k.Verify(task.Type(), id, task.Payload(), task.Headers(), now) != nil {
		t.Errorf("picked id %q does not verify", id)
	}
}

// taskID queues task on a real Redis and returns the id asynq gave it.
func taskID(t *testing.T, task *asynq.Task) string {
	t.Helper()
	srv := redistest.Start(t)
	c := asynq.NewClient(asynq.RedisClientOpt{Addr: srv.Addr()})
	defer c.Close()
	info, err := c.Enqueue(task)
	if err != nil {
		t.Fatal(err)
	}
	return info.ID
}
