package tasks

import "testing"

// FuzzParseRecord: a task's result field (written by any client with
// access to Redis) parses or is refused without panicking.
func FuzzParseRecord(f *testing.F) {
	f.Add([]byte(`{"state":"running","phase":"verify","done":1,"total":2,"percent":50,"updated":1}`))
	f.Add([]byte(`{"state":"done","outcome":"ok","result":{"ok":3},"seconds":1.5}`))
	f.Add([]byte(`{"state":"done","result":`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParseRecord(b)
	})
}
