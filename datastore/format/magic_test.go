package format

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// TestMagicErrorsNeverEchoContent: a file that is not what it should be
// (here a secret planted where a blob or index belongs) is refused with an
// error naming what was expected, never the bytes found.
func TestMagicErrorsNeverEchoContent(t *testing.T) {
	secret := bytes.Repeat([]byte("root-only secret "), 300)
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, ErrBadMagic) {
			t.Fatalf("%s: %v, want ErrBadMagic", what, err)
		}
		msg := err.Error()
		if strings.Contains(msg, "root") || strings.Contains(msg, hex.EncodeToString(secret[:4])) {
			t.Errorf("%s: error echoes the content: %s", what, msg)
		}
	}
	_, err := InspectBlob(secret)
	check("InspectBlob", err)
	_, err = ParseIndex("x.fidx", secret)
	check("ParseIndex fidx", err)
	_, err = ParseIndex("x.didx", secret)
	check("ParseIndex didx", err)
	_, err = ParseIndex("x.img", secret)
	check("ParseIndex unknown", err)
	if _, err = ParseIndex("x.img", secret); !strings.Contains(err.Error(), hex.EncodeToString(fixedIndexMagic[:])) {
		t.Errorf("ParseIndex: %v does not name the expected magic", err)
	}
}
