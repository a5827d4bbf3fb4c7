package tasks

import (
	"bytes"
	"errors"
	"testing"

	"github.com/pbsq/pbsq/datastore/name"
)

// FuzzDecode feeds arbitrary payloads to every task type: Decode never
// panics, refuses with ErrInvalid, and whatever it accepts re-encodes to a
// canonical form that decodes to the same job (what duplicate detection
// relies on).
func FuzzDecode(f *testing.F) {
	seeds := map[string][]string{
		TypeMoveGroup: {`{"store":"main","ns":"a","backup-type":"vm","backup-id":"100","target-ns":"b","merge-group":false,"lock-wait":"10s"}`},
		TypeMoveNamespace: {`{"store":"main","ns":"a/b","target-ns":"c","max-depth":2,"delete-source":true,"merge-groups":true}`,
			`{"store":"main","ns":"a","target-ns":"a/b"}`},
		TypePrune: {`{"store":"main","ns":"a","backup-type":"vm","backup-id":"1","max-depth":1,"keep-last":1,"keep-hourly":2,"keep-daily":3,"keep-weekly":4,"keep-monthly":5,"keep-yearly":6,"dry-run":true,"lock-wait":0.5}`},
		TypeVerify: {`{"store":"main","ns":"","backup-type":"ct","backup-id":"x.y","snapshot":"2024-03-01T10:00:00Z","ignore-verified":false,"outdated-after":7}`,
			`{"store":"main","sample":25,"max-duration":"2h"}`,
			`{"STORE":"main","Ns":"a"}`, `null`, `{"store":"main","ns":"a","shards":4}`,
			`{"store":"main","ns":"a","shard":{"job":"j1","index":1,"groups":["a:vm/100","a/b:ct/2"]}}`},
		TypeSync: {`{"source-store":"main","source-ns":"a","store":"off","ns":"b","group-filter":["type:vm","exclude:regex:^ct/","group:host/h1"],"transfer-last":3,"remove-vanished":true,"resync-corrupt":true,"owner":"sync@pbs","rate":1000}`,
			`{"source-store":"main","source-ns":"a","store":"off","ns":"","shards":2,"shard":{"job":"j","index":0,"groups":[":vm/1"]}}`},
		TypeGC: {`{"store":"main","dry-run":true}`, `{"store":"main","lock-wait":"1h"}`},
	}
	for i, typ := range Types {
		for _, s := range seeds[typ] {
			f.Add(uint8(i), []byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		typ := Types[int(which)%len(Types)]
		p, err := Decode(typ, data)
		if err != nil {
			if !errors.Is(err, name.ErrInvalid) {
				t.Fatalf("Decode(%s, %q): %v does not wrap name.ErrInvalid", typ, data, err)
			}
			return
		}
		if p.TaskType() != typ {
			t.Fatalf("Decode(%s) gave a %s", typ, p.TaskType())
		}
		b, err := Encode(p)
		if err != nil {
			t.Fatalf("Encode of accepted %q: %v", data, err)
		}
		q, err := Decode(typ, b)
		if err != nil {
			t.Fatalf("canonical form %s of accepted %q does not decode: %v", b, data, err)
		}
		b2, err := Encode(q)
		if err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("re-encoding changed %s into %s (%v)", b, b2, err)
		}
		if Fingerprint(p) != Fingerprint(q) {
			t.Fatalf("fingerprint changed over a round trip of %s", b)
		}
		if _, err := NewTask(p); err != nil {
			t.Fatalf("NewTask refused accepted payload %s: %v", b, err)
		}
	})
}
