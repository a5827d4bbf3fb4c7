package name

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseNamespace(t *testing.T) {
	good := []string{"", "a", "a/b", "A_1/b.c-d", "1/2/3/4/5/6/7", "_x"}
	for _, s := range good {
		ns, err := ParseNamespace(s)
		if err != nil {
			t.Errorf("ParseNamespace(%q): %v", s, err)
			continue
		}
		if ns.String() != s {
			t.Errorf("round trip %q -> %q", s, ns)
		}
	}
	bad := []string{"..", "a/..", "a//b", "/a", "a/", ".a", "-a", "a/b c", "a\x00b", "a/b/c/d/e/f/g/h",
		strings.Repeat("a", 129), strings.Repeat("abcdefgh/", 40)[:300], "ä"}
	for _, s := range bad {
		_, err := ParseNamespace(s)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseNamespace(%q) = %v, want ErrInvalid", s, err)
			continue
		}
		if !strings.Contains(err.Error(), "namespace") {
			t.Errorf("error %q does not say what is wrong", err)
		}
	}
}

func TestNamespacePathsAndTree(t *testing.T) {
	ns := MustNamespace("a/b/c")
	if got := ns.Path(); got != "ns/a/ns/b/ns/c" {
		t.Errorf("Path = %q", got)
	}
	if Root.Path() != "" || !Root.IsRoot() || Root.Depth() != 0 {
		t.Error("root")
	}
	if ns.Depth() != 3 || ns.Parent().String() != "a/b" || ns.Name() != "c" {
		t.Errorf("depth/parent/name: %d %q %q", ns.Depth(), ns.Parent(), ns.Name())
	}
	anc := ns.Ancestors()
	if len(anc) != 2 || anc[0].String() != "a" || anc[1].String() != "a/b" {
		t.Errorf("Ancestors = %v", anc)
	}
	if !MustNamespace("a").Contains(ns) || MustNamespace("a/b/c/d").Contains(ns) || MustNamespace("a/b/cc").Contains(ns) {
		t.Error("Contains")
	}
	if !Root.Contains(ns) || MustNamespace("ab").Contains(MustNamespace("a")) {
		t.Error("Contains root / prefix boundary")
	}
	got, err := Rebase(MustNamespace("a/b/c"), MustNamespace("a"), MustNamespace("x/y"))
	if err != nil || got.String() != "x/y/b/c" {
		t.Errorf("Rebase = %q, %v", got, err)
	}
	if got, _ := Rebase(MustNamespace("a/b"), MustNamespace("a"), Root); got.String() != "b" {
		t.Errorf("Rebase to root = %q", got)
	}
	if _, err := Rebase(MustNamespace("ab"), MustNamespace("a"), Root); err == nil {
		t.Error("Rebase outside source accepted")
	}
	if _, err := Rebase(MustNamespace("a/b/c/d/e/f/g"), MustNamespace("a"), MustNamespace("x/y")); !errors.Is(err, ErrInvalid) {
		t.Error("Rebase beyond depth accepted")
	}
}

func TestGroupAndSnapshot(t *testing.T) {
	ns := MustNamespace("a")
	g, err := NewGroup(ns, "vm", "100")
	if err != nil {
		t.Fatal(err)
	}
	if g.Path() != "ns/a/vm/100" || g.String() != "vm/100" {
		t.Errorf("group %q %q", g.Path(), g)
	}
	ts, _ := time.Parse(time.RFC3339, "2024-03-01T10:00:00Z")
	s := NewSnapshot(g, ts.Add(400*time.Millisecond))
	if s.Path() != "ns/a/vm/100/2024-03-01T10:00:00Z" || s.File("index.json.blob") != "ns/a/vm/100/2024-03-01T10:00:00Z/index.json.blob" {
		t.Errorf("snapshot path %q", s.Path())
	}
	p, err := ParseSnapshot(ns, "vm/100/2024-03-01T10:00:00Z")
	if err != nil || !p.Time.Equal(s.Time) || p.Group != g {
		t.Errorf("ParseSnapshot = %v, %v", p, err)
	}
	rootG, _ := NewGroup(Root, "ct", "1")
	if rootG.Path() != "ct/1" {
		t.Errorf("root group path %q", rootG.Path())
	}
	for _, bad := range [][2]string{{"vms", "100"}, {"vm", ""}, {"vm", "a/b"}, {"vm", ".."}, {"vm", "-x"}, {"", "1"}} {
		if _, err := NewGroup(ns, bad[0], bad[1]); !errors.Is(err, ErrInvalid) {
			t.Errorf("NewGroup(%q, %q) accepted", bad[0], bad[1])
		}
	}
	for _, bad := range []string{"2024-03-01T10:00:00", "2024-03-01T10:00:00+01:00", "2024-3-1T10:00:00Z", "2024-03-01T10:00:00.5Z", "", "x"} {
		if _, err := ParseTime(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseTime(%q) accepted", bad)
		}
	}
}

func TestValidateStore(t *testing.T) {
	for _, s := range []string{"abc", "main", "store_1", strings.Repeat("a", 32)} {
		if err := ValidateStore(s); err != nil {
			t.Errorf("%q: %v", s, err)
		}
	}
	for _, s := range []string{"ab", strings.Repeat("a", 33), "a/b", "../x", "", "a b"} {
		if err := ValidateStore(s); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "datastore name") {
			t.Errorf("%q accepted or unclear: %v", s, err)
		}
	}
}

func TestGroupFilters(t *testing.T) {
	vm, _ := NewGroup(Root, "vm", "100")
	ct, _ := NewGroup(Root, "ct", "200")
	host, _ := NewGroup(Root, "host", "web")
	parse := func(ss ...string) []GroupFilter {
		var out []GroupFilter
		for _, s := range ss {
			f, err := ParseGroupFilter(s)
			if err != nil {
				t.Fatalf("%q: %v", s, err)
			}
			out = append(out, f)
		}
		return out
	}
	cases := []struct {
		filters []string
		want    [3]bool // vm, ct, host
	}{
		{nil, [3]bool{true, true, true}},
		{[]string{"exclude:type:vm"}, [3]bool{false, true, true}},
		{[]string{"type:vm"}, [3]bool{true, false, false}},
		{[]string{"group:ct/200", "regex:^host/"}, [3]bool{false, true, true}},
		{[]string{"regex:.*", "exclude:group:vm/100"}, [3]bool{false, true, true}},
	}
	for _, c := range cases {
		fs := parse(c.filters...)
		got := [3]bool{ApplyFilters(vm, fs), ApplyFilters(ct, fs), ApplyFilters(host, fs)}
		if got != c.want {
			t.Errorf("%v: got %v want %v", c.filters, got, c.want)
		}
	}
	for _, bad := range []string{"", "type:", "type:lxc", "group:vm", "regex:(", "foo:bar", "exclude:"} {
		if _, err := ParseGroupFilter(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("filter %q accepted", bad)
		}
	}
}

func FuzzParseNamespace(f *testing.F) {
	for _, s := range []string{"", "a", "a/b/c", "..", "a//b", "a/b/c/d/e/f/g/h", "x\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ns, err := ParseNamespace(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error without ErrInvalid: %v", err)
			}
			return
		}
		if ns.String() != s || ns.Depth() > MaxNamespaceDepth || len(s) > MaxNamespaceLen {
			t.Fatalf("accepted %q badly", s)
		}
		for _, c := range ns.Components() {
			if c == "" || c == "." || c == ".." || strings.ContainsAny(c, "/\x00") {
				t.Fatalf("bad component %q in %q", c, s)
			}
		}
		for _, c := range strings.Split(ns.Path(), "/") {
			if c == ".." || c == "." {
				t.Fatalf("path traversal in %q", ns.Path())
			}
		}
	})
}

func FuzzParseSnapshot(f *testing.F) {
	f.Add("vm/100/2024-03-01T10:00:00Z")
	f.Add("host/a.b/1970-01-01T00:00:00Z")
	f.Add("vm/../2024-03-01T10:00:00Z")
	f.Fuzz(func(t *testing.T, s string) {
		snap, err := ParseSnapshot(Root, s)
		if err != nil {
			return
		}
		if snap.String() != s {
			t.Fatalf("round trip %q -> %q", s, snap)
		}
		for _, c := range strings.Split(snap.Path(), "/") {
			if c == ".." || c == "." || c == "" {
				t.Fatalf("unsafe path %q", snap.Path())
			}
		}
	})
}
