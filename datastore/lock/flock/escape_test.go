package flock

import (
	"strings"
	"testing"
)

func TestEscapePath(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"vm/100", "vm-100"},
		// PBS escapes ':' too (systemd-escape keeps it).
		{"vm/100/2022-05-02T08:11:33Z", `vm-100-2022\x2d05\x2d02T08\x3a11\x3a33Z`},
		{"ct/my-ct", `ct-my\x2dct`},
		{"host/a.b_c", "host-a.b_c"},
		{".hidden/x", `\x2ehidden-x`},
		{"x/.y", "x-.y"},
		{"a b", `a\x20b`},
		{`a\b`, `a\x5cb`},
		{"ä", `\xc3\xa4`},
		{"\x01", `\x01`},
		{"/vm/100", "vm-100"},
		{"", "-"},
		{"/", "-"},
	} {
		if got := escapePath(tc.in); got != tc.want {
			t.Errorf("escapePath(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestUnescapeRejectsNonCanonical(t *testing.T) {
	for _, s := range []string{`\x61`, `a\x2f`, `\x2`, `\y20`, `a b`, `.x`, `\x2E`, "a:b", ""} {
		if got, err := unescapePath(s); err == nil {
			t.Errorf("unescapePath(%q) = %q, want an error", s, got)
		}
	}
}

func FuzzEscapeRoundTrip(f *testing.F) {
	for _, s := range []string{"vm/100", "vm/100/2022-05-02T08:11:33Z", ".x", "a-b", `\x2d`, "ä/ö", "a//b", "a/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if s == "" || s[0] == '/' {
			return // leading slashes are dropped, as by systemd-escape --path
		}
		e := escapePath(s)
		if strings.ContainsAny(e, "/\x00") {
			t.Fatalf("escapePath(%q) = %q contains '/' or NUL", s, e)
		}
		for i := 0; i < len(e); i++ {
			if c := e[i]; !plain(c) && c != '-' && c != '\\' {
				t.Fatalf("escapePath(%q) = %q has unescaped %q", s, e, c)
			}
		}
		if e[0] == '.' {
			t.Fatalf("escapePath(%q) = %q starts with '.'", s, e)
		}
		got, err := unescapePath(e)
		if err != nil || got != s {
			t.Fatalf("unescapePath(escapePath(%q) = %q) = %q, %v", s, e, got, err)
		}
	})
}
