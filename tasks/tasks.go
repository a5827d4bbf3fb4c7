// Package tasks defines pbsq's jobs as they travel through Redis: type
// names, payloads with Validate, result and progress records, and the
// asynq task constructors with each type's options. It does no I/O.
package tasks

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/hibiken/asynq"

	"github.com/pbsq/pbsq/datastore/name"
)

// Task type names.
const (
	TypeMoveGroup     = "datastore:move-group"
	TypeMoveNamespace = "datastore:move-namespace"
	TypePrune         = "datastore:prune"
	TypeVerify        = "datastore:verify"
	TypeSync          = "datastore:sync"
	TypeGC            = "datastore:gc"
)

// Types lists every task type.
var Types = []string{TypeMoveGroup, TypeMoveNamespace, TypePrune, TypeVerify, TypeSync, TypeGC}

// MaxPayloadSize bounds a payload: anything larger is refused unread.
const MaxPayloadSize = 64 << 10

// Queue is the asynq queue pbsq uses.
const Queue = "pbsq"

// Payload is implemented by every task payload.
type Payload interface {
	// TaskType is the task type name.
	TaskType() string
	// Validate checks every field before any I/O.
	Validate() error
	// Stores names the datastores the task touches.
	Stores() []string
	// Wait is the payload's lock-wait, if given.
	Wait() *Duration
}

// Duration is a lock-wait: JSON accepts "5s"-style strings or seconds.
type Duration struct{ time.Duration }

// MarshalJSON writes the Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON accepts "1m30s" or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%w lock-wait %q: %v", name.ErrInvalid, s, err)
		}
		d.Duration = v
		return nil
	}
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("%w lock-wait %s: must be a duration like \"5s\" or seconds", name.ErrInvalid, b)
	}
	d.Duration = time.Duration(f * float64(time.Second))
	return nil
}

// MaxLockWait bounds lock-wait: longer waits belong to the re-queue policy.
const MaxLockWait = time.Hour

func validateWait(d *Duration) error {
	if d != nil && (d.Duration < 0 || d.Duration > MaxLockWait) {
		return fmt.Errorf("%w lock-wait %s: must be between 0 and %s", name.ErrInvalid, d.Duration, MaxLockWait)
	}
	return nil
}

func validateStore(field, s string) error {
	if s == "" {
		return fmt.Errorf("%w %s: required", name.ErrInvalid, field)
	}
	if err := name.ValidateStore(s); err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	return nil
}

func validateNS(field, s string) (name.Namespace, error) {
	ns, err := name.ParseNamespace(s)
	if err != nil {
		return ns, fmt.Errorf("%s: %w", field, err)
	}
	return ns, nil
}

func validateDepth(d *int) error {
	if d != nil && (*d < 0 || *d > name.MaxNamespaceDepth) {
		return fmt.Errorf("%w max-depth %d: must be 0..%d", name.ErrInvalid, *d, name.MaxNamespaceDepth)
	}
	return nil
}

// validateGroupSel checks an optional backup-type/backup-id pair.
func validateGroupSel(typ, id string) error {
	if typ == "" && id == "" {
		return nil
	}
	if typ == "" || id == "" {
		return fmt.Errorf("%w group: backup-type and backup-id go together (got %q and %q)", name.ErrInvalid, typ, id)
	}
	_, err := name.NewGroup(name.Root, typ, id)
	return err
}

// Decode parses a payload of the given type strictly: unknown fields,
// trailing data and oversize payloads are refused, then Validate runs.
func Decode(taskType string, data []byte) (Payload, error) {
	if len(data) > MaxPayloadSize {
		return nil, fmt.Errorf("%w payload: %d bytes, more than %d", name.ErrInvalid, len(data), MaxPayloadSize)
	}
	var p Payload
	switch taskType {
	case TypeMoveGroup:
		p = &MoveGroup{}
	case TypeMoveNamespace:
		p = &MoveNamespace{}
	case TypePrune:
		p = &Prune{}
	case TypeVerify:
		p = &Verify{}
	case TypeSync:
		p = &Sync{}
	case TypeGC:
		p = &GC{}
	default:
		return nil, fmt.Errorf("%w task type %q: must be one of %s", name.ErrInvalid, taskType, strings.Join(Types, ", "))
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(p); err != nil {
		if errors.Is(err, name.ErrInvalid) {
			return nil, err
		}
		return nil, fmt.Errorf("%w %s payload: %v", name.ErrInvalid, taskType, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w %s payload: trailing data after the JSON object", name.ErrInvalid, taskType)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}

// Encode returns the canonical JSON of a payload.
func Encode(p Payload) ([]byte, error) { return json.Marshal(p) }

// Fingerprint identifies a job by type and canonical payload, so that an
// identical job is not queued twice.
func Fingerprint(p Payload) string {
	b, _ := Encode(p)
	h := sha256.Sum256(append([]byte(p.TaskType()+"\x00"), b...))
	return hex.EncodeToString(h[:8])
}

// Timeout is each type's own limit (never asynq's 30-minute default).
func Timeout(taskType string) time.Duration {
	switch taskType {
	case TypeVerify, TypeSync, TypeGC:
		return 24 * time.Hour
	case TypeMoveGroup, TypeMoveNamespace:
		return 6 * time.Hour
	case TypePrune:
		return 2 * time.Hour
	}
	return time.Hour
}

// Retention is how long a finished task's record (and its log) is kept.
const Retention = 7 * 24 * time.Hour

// MaxRetry is the retry budget for real failures (busy re-queues do not
// spend it).
const MaxRetry = 5

// NewTask builds the asynq task for a validated payload.
func NewTask(p Payload, opts ...asynq.Option) (*asynq.Task, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	b, err := Encode(p)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxPayloadSize {
		return nil, fmt.Errorf("%w payload: %d bytes, more than %d", name.ErrInvalid, len(b), MaxPayloadSize)
	}
	return asynq.NewTask(p.TaskType(), b, append(taskOptions(p), opts...)...), nil
}

// taskOptions are each task's asynq options before the caller's.
func taskOptions(p Payload) []asynq.Option {
	return []asynq.Option{
		asynq.Queue(Queue),
		asynq.Timeout(Timeout(p.TaskType())),
		asynq.MaxRetry(MaxRetry),
		asynq.Retention(Retention),
	}
}

// Outcomes of a finished task.
const (
	OutcomeOK      = "ok"
	OutcomeSkipped = "skipped"
	OutcomeFailed  = "failed"
	OutcomeBusy    = "busy"
	OutcomeInvalid = "invalid"
)

// Progress is what a running task writes into its result field.
type Progress struct {
	State   string  `json:"state"` // "running"
	Phase   string  `json:"phase"`
	Done    int64   `json:"done"`
	Total   int64   `json:"total"`
	Percent float64 `json:"percent"`
	Message string  `json:"message,omitempty"`
	Updated int64   `json:"updated"`
}

// Result is the final record that replaces the progress.
type Result struct {
	State   string          `json:"state"` // "done"
	Outcome string          `json:"outcome"`
	Error   string          `json:"error,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"`
	Seconds float64         `json:"seconds"`
}

// Record is either a Progress or a Result, as read back from Redis.
type Record struct {
	State string `json:"state"`
	Progress
	Outcome string          `json:"outcome"`
	Error   string          `json:"error"`
	Result  json.RawMessage `json:"result"`
	Seconds float64         `json:"seconds"`
}

// ParseRecord decodes a task's result field (empty: nothing yet).
func ParseRecord(b []byte) (Record, error) {
	var r Record
	if len(b) == 0 {
		return r, nil
	}
	err := json.Unmarshal(b, &r)
	return r, err
}
