package main

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Task payloads, errors and records come from Redis, which anyone who can
// queue a task writes: printed raw, an escape sequence in them would drive
// the administrator's terminal (rewrite the screen, set the title, hide
// text). Text output escapes every control character, bidi override and
// invalid byte; JSON output is for programs and is left as it is.

// safeLine escapes s for a one-line field: newlines and tabs too.
func safeLine(s string) string { return escapeControls(s, false) }

// safeText escapes s keeping its newlines (indented JSON).
func safeText(s string) string { return escapeControls(s, true) }

func escapeControls(s string, keepNewlines bool) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || unsafeRune(r, keepNewlines) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unsafeRune(r, keepNewlines):
			if r < 0x80 {
				fmt.Fprintf(&b, `\x%02x`, r)
			} else {
				fmt.Fprintf(&b, `\u%04x`, r)
			}
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

func unsafeRune(r rune, keepNewlines bool) bool {
	if keepNewlines && r == '\n' {
		return false
	}
	return unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r) || r == '\u2028' || r == '\u2029'
}
