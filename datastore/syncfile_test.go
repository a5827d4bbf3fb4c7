package datastore

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"testing"
)

// TestSumReader: a file re-read for its write passes only if it is the
// file that was checked: same length, same hash.
func TestSumReader(t *testing.T) {
	checked := bytes.Repeat([]byte("checked "), 1<<16)
	sum := sha256.Sum256(checked)
	read := func(data []byte) ([]byte, error) {
		return io.ReadAll(&sumReader{r: bytes.NewReader(data), h: sha256.New(), left: int64(len(checked)), sum: sum, name: "f"})
	}
	if got, err := read(checked); err != nil || !bytes.Equal(got, checked) {
		t.Fatalf("the checked file: %d bytes, %v", len(got), err)
	}
	changed := bytes.Clone(checked)
	changed[1000] ^= 1
	grown := append(bytes.Clone(checked), 'x')
	for name, data := range map[string][]byte{"changed": changed, "grown": grown, "shrunk": checked[:len(checked)-1], "empty": nil} {
		if _, err := read(data); !errors.Is(err, errChangedDuringCopy) {
			t.Errorf("%s file: %v, want errChangedDuringCopy", name, err)
		}
	}
}
