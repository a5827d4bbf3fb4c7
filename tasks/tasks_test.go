package tasks

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/name"
)

func ptr[T any](v T) *T { return &v }

func TestDecodeStrict(t *testing.T) {
	for _, c := range []struct {
		typ, payload, want string // want: "" accepted, else part of the error
	}{
		{TypeVerify, `{"store":"main"}`, ""},
		{TypeVerify, `{"store":"main","ns":"a/b","backup-type":"vm","backup-id":"100","snapshot":"2024-03-01T10:00:00Z"}`, ""},
		{TypeVerify, `{"store":"main","unknown":1}`, `unknown field "unknown"`},
		{TypeVerify, `{"store":"main"} {}`, "trailing data"},
		{TypeVerify, `{"store":"main"}x`, "invalid"},
		{TypeVerify, `{"store":"main"`, "invalid"},
		{TypeVerify, ``, "invalid"},
		{TypeVerify, `null`, "store: required"},
		{TypeVerify, `[]`, "invalid"},
		{TypeVerify, `{"store":"ab"}`, "ab"},
		{TypeVerify, `{"store":"main","ns":"../etc"}`, "ns"},
		{TypeVerify, `{"store":"main","ns":"a//b"}`, "ns"},
		{TypeVerify, `{"store":"main","backup-type":"vm"}`, "go together"},
		{TypeVerify, `{"store":"main","snapshot":"2024-03-01T10:00:00Z"}`, "needs backup-type"},
		{TypeVerify, `{"store":"main","backup-type":"vm","backup-id":"1","snapshot":"yesterday"}`, "yesterday"},
		{TypeVerify, `{"store":"main","max-depth":8}`, "max-depth 8"},
		{TypeVerify, `{"store":"main","outdated-after":-1}`, "outdated-after"},
		{TypeVerify, `{"store":"main","lock-wait":"5s"}`, ""},
		{TypeVerify, `{"store":"main","lock-wait":2.5}`, ""},
		{TypeVerify, `{"store":"main","lock-wait":"2h"}`, "lock-wait"},
		{TypeVerify, `{"store":"main","lock-wait":"-1s"}`, "lock-wait"},
		{TypeVerify, `{"store":"main","lock-wait":true}`, "lock-wait"},
		{TypeVerify, `{"store":"main","lock-wait":"soon"}`, "soon"},
		{TypeVerify, `{"store":"main","sample":25,"max-duration":"1h30m"}`, ""},
		{TypeVerify, `{"store":"main","sample":100,"max-duration":60}`, ""},
		{TypeVerify, `{"store":"main","sample":0}`, "sample 0"},
		{TypeVerify, `{"store":"main","sample":101}`, "sample 101"},
		{TypeVerify, `{"store":"main","sample":"x"}`, "sample"},
		{TypeVerify, `{"store":"main","sample":10,"read-only":true}`, "read-only"},
		{TypeVerify, `{"store":"main","max-duration":"0s"}`, "max-duration 0s"},
		{TypeVerify, `{"store":"main","max-duration":"25h"}`, "max-duration 25h0m0s"},
		{TypeVerify, `{"store":"main","max-duration":"soon"}`, "max-duration \"soon\""},
		{TypeVerify, `{"store":"main","max-duration":true}`, "max-duration true"},
		{TypeMoveGroup, `{"store":"main","ns":"a","backup-type":"vm","backup-id":"100","target-ns":"b"}`, ""},
		{TypeMoveGroup, `{"store":"main","ns":"a","backup-type":"vm","backup-id":"100","target-ns":"a"}`, "both"},
		{TypeMoveGroup, `{"store":"main","ns":"a","backup-type":"xx","backup-id":"100","target-ns":"b"}`, "xx"},
		{TypeMoveGroup, `{"store":"main","ns":"a","backup-type":"vm","backup-id":"a/b","target-ns":"b"}`, "a/b"},
		{TypeMoveNamespace, `{"store":"main","ns":"a","target-ns":"b/c"}`, ""},
		{TypeMoveNamespace, `{"store":"main","ns":"","target-ns":"b"}`, "root"},
		{TypeMoveNamespace, `{"store":"main","ns":"a","target-ns":"a/b"}`, "inside the source"},
		{TypeMoveNamespace, `{"store":"main","ns":"a","target-ns":"a"}`, "both"},
		{TypePrune, `{"store":"main","ns":"a","keep-last":2,"dry-run":true}`, ""},
		{TypePrune, `{"store":"main","keep-daily":0}`, "keep-daily 0"},
		{TypePrune, `{"store":"main","keep-weekly":-3}`, "keep-weekly"},
		{TypeSync, `{"source-store":"a1b","source-ns":"","store":"b2c","ns":"x","group-filter":["type:vm","exclude:group:vm/100"]}`, ""},
		{TypeSync, `{"source-store":"main","source-ns":"a","store":"main","ns":"a/b"}`, "overlap"},
		{TypeSync, `{"source-store":"main","store":"other","group-filter":["bogus:x"]}`, "bogus"},
		{TypeSync, `{"source-store":"main","store":"other","owner":"root"}`, "owner"},
		{TypeSync, `{"source-store":"main","store":"other","transfer-last":0}`, "transfer-last"},
		{TypeSync, `{"source-store":"main","store":"other","rate":-1}`, "rate"},
		{TypeGC, `{"store":"main","dry-run":true}`, ""},
		{TypeGC, `{}`, "store: required"},
		{"datastore:nope", `{"store":"main"}`, "task type"},
		{TypeGC, `{"store":"main","pad":"` + strings.Repeat("x", MaxPayloadSize) + `"}`, "bytes"},
	} {
		p, err := Decode(c.typ, []byte(c.payload))
		switch {
		case c.want == "" && err != nil:
			t.Errorf("Decode(%s, %s): %v", c.typ, c.payload, err)
		case c.want != "" && err == nil:
			t.Errorf("Decode(%s, %s) accepted %+v, want error with %q", c.typ, c.payload, p, c.want)
		case c.want != "" && !errors.Is(err, name.ErrInvalid):
			t.Errorf("Decode(%s, %s): %v does not wrap name.ErrInvalid", c.typ, c.payload, err)
		case c.want != "" && !strings.Contains(err.Error(), c.want):
			t.Errorf("Decode(%s, %s): %q does not mention %q", c.typ, c.payload, err, c.want)
		case err == nil && p.TaskType() != c.typ:
			t.Errorf("Decode(%s) gave a %s", c.typ, p.TaskType())
		}
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	payloads := []Payload{
		&MoveGroup{Store: "main", NS: "a", BackupType: "vm", BackupID: "100", TargetNS: "b", MergeGroup: ptr(false), LockWait: &Duration{90 * time.Second}},
		&MoveNamespace{Store: "main", NS: "a/b", TargetNS: "c", MaxDepth: ptr(2), DeleteSource: ptr(true), MergeGroups: ptr(false)},
		&Prune{Store: "main", NS: "a", BackupType: "ct", BackupID: "7", Keep: Keep{KeepLast: ptr(3), KeepYearly: ptr(1)}, DryRun: true},
		&Verify{Store: "main", NS: "a", IgnoreVerified: ptr(false), OutdatedAfter: ptr(30), LockWait: &Duration{}},
		&Sync{SourceStore: "main", SourceNS: "a", Store: "off", NS: "b", GroupFilter: []string{"regex:^vm/1"}, TransferLast: ptr(2), RemoveVanished: true, Rate: 1 << 20},
		&GC{Store: "main"},
	}
	for _, p := range payloads {
		b, err := Encode(p)
		if err != nil {
			t.Fatal(err)
		}
		q, err := Decode(p.TaskType(), b)
		if err != nil {
			t.Fatalf("%s: decode of own encoding %s: %v", p.TaskType(), b, err)
		}
		b2, _ := Encode(q)
		if !bytes.Equal(b, b2) {
			t.Errorf("%s: round trip changed %s into %s", p.TaskType(), b, b2)
		}
		if Fingerprint(p) != Fingerprint(q) {
			t.Errorf("%s: fingerprint changed over a round trip", p.TaskType())
		}
		// Keys are kebab-case, as PBS's API.
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		for k := range m {
			if strings.ToLower(k) != k || strings.Contains(k, "_") {
				t.Errorf("%s: key %q is not kebab-case", p.TaskType(), k)
			}
		}
	}
}

func TestFingerprint(t *testing.T) {
	a := &Prune{Store: "main", NS: "a", Keep: Keep{KeepLast: ptr(2)}}
	b := &Prune{Store: "main", NS: "a", Keep: Keep{KeepLast: ptr(2)}}
	if Fingerprint(a) != Fingerprint(b) {
		t.Error("equal payloads, different fingerprints")
	}
	for _, other := range []Payload{
		&Prune{Store: "main", NS: "a", Keep: Keep{KeepLast: ptr(3)}},
		&Prune{Store: "main", NS: "a", Keep: Keep{KeepLast: ptr(2)}, DryRun: true},
		&Verify{Store: "main", NS: "a"},
	} {
		if Fingerprint(a) == Fingerprint(other) {
			t.Errorf("%+v and %+v share a fingerprint", a, other)
		}
	}
	// Same JSON, different type: different jobs.
	if Fingerprint(&GC{Store: "main"}) == Fingerprint(&Verify{Store: "main"}) {
		t.Error("type is not part of the fingerprint")
	}
}

func TestNewTaskOptions(t *testing.T) {
	for _, p := range []Payload{&Verify{Store: "main"}, &Prune{Store: "main"}, &GC{Store: "main"},
		&MoveGroup{Store: "main", NS: "a", BackupType: "vm", BackupID: "1", TargetNS: "b"},
		&MoveNamespace{Store: "main", NS: "a", TargetNS: "b"},
		&Sync{SourceStore: "main", Store: "off"}} {
		task, err := NewTask(p)
		if err != nil {
			t.Fatal(err)
		}
		if task.Type() != p.TaskType() {
			t.Errorf("type %s", task.Type())
		}
		if d := Timeout(p.TaskType()); d < time.Hour || d == 30*time.Minute {
			t.Errorf("%s: timeout %s; every type sets its own, never asynq's 30m default", p.TaskType(), d)
		}
	}
	if _, err := NewTask(&Verify{Store: "x"}); !errors.Is(err, name.ErrInvalid) {
		t.Errorf("NewTask of an invalid payload: %v", err)
	}
}

func TestParseRecord(t *testing.T) {
	r, err := ParseRecord(nil)
	if err != nil || r.State != "" {
		t.Fatalf("empty: %+v %v", r, err)
	}
	b, _ := json.Marshal(Progress{State: "running", Phase: "verify", Done: 3, Total: 4, Percent: 75, Updated: 1})
	if r, err = ParseRecord(b); err != nil || r.State != "running" || r.Done != 3 || r.Phase != "verify" {
		t.Fatalf("progress: %+v %v", r, err)
	}
	b, _ = json.Marshal(Result{State: "done", Outcome: OutcomeSkipped, Error: "2 skipped", Result: json.RawMessage(`{"ok":1}`), Seconds: 2})
	if r, err = ParseRecord(b); err != nil || r.State != "done" || r.Outcome != OutcomeSkipped || string(r.Result) != `{"ok":1}` || r.Seconds != 2 {
		t.Fatalf("result: %+v %v", r, err)
	}
}
