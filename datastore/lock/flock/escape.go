package flock

import (
	"errors"
	"fmt"
	"strings"
)

// escapePath escapes a relative path like `systemd-escape --path` as
// proxmox-sys's escape_unit(path, true) does, which is what PBS names its
// lock files with: leading '/' dropped, '/' becomes '-', and every byte
// outside [A-Za-z0-9_.] (and a leading '.') becomes \xNN, lower-case hex.
// The empty path is "-".
func escapePath(p string) string {
	p = strings.TrimLeft(p, "/")
	if p == "" {
		return "-"
	}
	var b strings.Builder
	b.Grow(len(p) + len(p)/2)
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '/':
			b.WriteByte('-')
		case c == '.' && i == 0, !plain(c):
			fmt.Fprintf(&b, `\x%02x`, c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func plain(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.'
}

var errBadEscape = errors.New("not a systemd-escaped path")

// unescapePath reverses escapePath. It accepts only what escapePath
// produces, so that foreign files in the locks dir are not misread.
func unescapePath(s string) (string, error) {
	switch s {
	case "-":
		return "", nil
	case "":
		return "", fmt.Errorf("%w: empty", errBadEscape)
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '-':
			b.WriteByte('/')
		case c == '\\':
			if i+4 > len(s) || s[i+1] != 'x' {
				return "", fmt.Errorf("%w: %q", errBadEscape, s)
			}
			v, ok := unhex(s[i+2 : i+4])
			if !ok || (plain(v) && !(v == '.' && i == 0)) || v == '/' {
				return "", fmt.Errorf("%w: %q", errBadEscape, s)
			}
			b.WriteByte(v)
			i += 3
		case c == '.' && i == 0, !plain(c):
			return "", fmt.Errorf("%w: %q", errBadEscape, s)
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

func unhex(s string) (byte, bool) {
	var v byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | (c - '0')
		case c >= 'a' && c <= 'f':
			v = v<<4 | (c - 'a' + 10)
		default:
			return 0, false
		}
	}
	return v, true
}
