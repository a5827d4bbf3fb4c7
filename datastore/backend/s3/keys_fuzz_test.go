package s3

import (
	"testing"
)

// FuzzKeyMapping: object keys from a bucket listing (anyone with write
// access to the bucket can create them) map to backend paths without
// panicking, only when they lie in the layout, and back to the same key;
// and every valid path maps to a key below the prefix that maps back.
func FuzzKeyMapping(f *testing.F) {
	for _, s := range []string{
		"store/.chunks/abcd/abcd0000", "store/.cnt/ns/a/vm/100/owner", "store/.cnt/", "store/.cnt", "store/x",
		"other/.cnt/a", "store/.cnt/../../etc", "store/.cnt//a", "store/.chunks/", "store/.cnt/a/", "store/.cnt/.",
	} {
		f.Add("store", s)
	}
	f.Add("", ".cnt/a/b")
	f.Fuzz(func(t *testing.T, prefix, key string) {
		s := &S3{prefix: prefix}
		if prefix != "" {
			s.root = prefix + "/"
		}
		if p, ok := s.pathOf(key); ok {
			if validPath(p) != nil {
				return // listed but unusable; callers validate names again
			}
			back, err := s.key(p)
			if err != nil || back != key {
				t.Fatalf("pathOf(%q) = %q, whose key is %q (%v)", key, p, back, err)
			}
		}
		if k, err := s.key(key); err == nil {
			if p, ok := s.pathOf(k); !ok || p != key {
				t.Fatalf("key(%q) = %q, which maps back to %q, %v", key, k, p, ok)
			}
		}
	})
}
