package name

import (
	"errors"
	"testing"
)

// FuzzParseGroupFilter: any string parses or is refused with ErrInvalid,
// never panics; an accepted filter matches groups without panicking, and
// its exclude: form applies as its negation.
func FuzzParseGroupFilter(f *testing.F) {
	for _, s := range []string{"group:vm/100", "type:ct", "regex:^vm/1", "exclude:regex:.*", "exclude:type:host",
		"group:vm/../x", "regex:(", "regex:", "type:", "exclude:", "foo:bar", "regex:\x00", "group:vm"} {
		f.Add(s, "vm", "100")
	}
	f.Fuzz(func(t *testing.T, s, typ, id string) {
		flt, err := ParseGroupFilter(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseGroupFilter(%q): %v does not wrap ErrInvalid", s, err)
			}
			return
		}
		if flt.Kind == "regex" && flt.Regex == nil {
			t.Fatalf("ParseGroupFilter(%q): regex filter without a compiled regex", s)
		}
		g, err := NewGroup(Root, typ, id)
		if err != nil {
			return
		}
		m := flt.Matches(g)
		inc := flt
		inc.Exclude = false
		exc := flt
		exc.Exclude = true
		if ApplyFilters(g, []GroupFilter{inc}) != m || ApplyFilters(g, []GroupFilter{exc}) == m {
			t.Fatalf("filter %q on %s: include/exclude disagree with Matches=%v", s, g, m)
		}
	})
}
