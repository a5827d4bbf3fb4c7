package redislock

import (
	"testing"

	"github.com/pbsq/pbsq/datastore/lock"
)

// FuzzDecodeKey: keys found in Redis (anyone with access can write some)
// decode without panicking, and the lock an accepted key decodes to has a
// key that decodes to the same lock again. (decodeKey is lenient: it
// takes an empty store name or a leading '/' in the path, keys pbsq never
// writes; harmless, since decoded keys are only listed.)
func FuzzDecodeKey(f *testing.F) {
	for _, s := range []string{
		"pbsq:lock:main:namespace:a/b", "pbsq:lock:main:group:a/b/vm/100", "pbsq:lock:main:group:ct/my-ct",
		"pbsq:lock:st2:snapshot:a/b/vm/100/2022-05-02T08:11:33Z", "pbsq:lock:main:namespace:", "pbsq:lock:main:group:../vm/1",
		"pbsq:lock:x:snapshot:vm/1/notatime", "other:key",
	} {
		f.Add(s)
	}
	b := New(nil, Options{})
	f.Fuzz(func(t *testing.T, key string) {
		req, ok := b.decodeKey(key)
		if !ok {
			return
		}
		back := b.Key(req)
		again, ok := b.decodeKey(back)
		if !ok || again.ID() != req.ID() || again.Kind != req.Kind {
			t.Fatalf("decodeKey(%q) = %s, whose key %q decodes to %s, %v", key, req, back, again, ok)
		}
	})
}

// FuzzParseMember: lock entries (member strings) parse without panicking.
func FuzzParseMember(f *testing.F) {
	f.Add(`X|tok|{"h":"host","p":12,"t":"task","s":1700000000000}`)
	f.Add(`S|t|{}`)
	f.Add(`Q|t|{"s":1}`)
	f.Add(`X|t|not json`)
	f.Fuzz(func(t *testing.T, m string) {
		mode, _, _, ok := parseMember(m)
		if ok && mode != lock.Shared && mode != lock.Exclusive {
			t.Fatalf("parseMember(%q): mode %v", m, mode)
		}
	})
}
