package format

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

const (
	csumA = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	csumB = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
)

// pbsManifest is laid out as PBS writes it (serde_json pretty printer,
// keys sorted), with an unknown top-level key and unknown unprotected keys.
const pbsManifest = `{
  "backup-id": "100",
  "backup-time": 1700000000,
  "backup-type": "vm",
  "files": [
    {
      "crypt-mode": "none",
      "csum": "` + csumA + `",
      "filename": "qemu-server.conf.blob",
      "size": 412
    },
    {
      "crypt-mode": "sign-only",
      "csum": "` + csumB + `",
      "filename": "drive-scsi0.img.fidx",
      "size": 34359738368
    }
  ],
  "signature": null,
  "unprotected": {
    "chunk_upload_stats": {
      "compressed_size": 123,
      "count": 5,
      "duplicates": 2,
      "size": 456
    },
    "key-fingerprint": null,
    "notes": "weekly <full> & co",
    "verify_state": {
      "state": "ok",
      "upid": "UPID:pbs:00000F42:00001234:00000000:65000000:verify_snapshot:store1:root@pam:"
    }
  },
  "zz-future": [
    1,
    2.5e10,
    "x"
  ]
}`

func TestParseManifestHandBuilt(t *testing.T) {
	m, err := ParseManifest(handBlob(t, hexPlain, nil, []byte(pbsManifest)))
	if err != nil {
		t.Fatal(err)
	}
	if m.BackupType != "vm" || m.BackupID != "100" || m.BackupTime != 1700000000 || m.Signature != nil {
		t.Fatalf("header fields: %+v", m)
	}
	wantFiles := []FileInfo{
		{"qemu-server.conf.blob", CryptModeNone, 412, [32]byte(unhex(t, csumA))},
		{"drive-scsi0.img.fidx", CryptModeSignOnly, 34359738368, [32]byte(unhex(t, csumB))},
	}
	if !reflect.DeepEqual(m.Files, wantFiles) {
		t.Fatalf("files %+v", m.Files)
	}
	if f, ok := m.File("drive-scsi0.img.fidx"); !ok || f != wantFiles[1] {
		t.Fatalf("File = %+v, %v", f, ok)
	}
	if _, ok := m.File("nope"); ok {
		t.Fatal("File(nope)")
	}
	vs := m.VerifyState()
	if vs == nil || vs.State != VerifyOK || !strings.HasPrefix(vs.UPID, "UPID:pbs:") {
		t.Fatalf("VerifyState = %+v", vs)
	}
	if m.Notes() != "weekly <full> & co" {
		t.Fatalf("Notes = %q", m.Notes())
	}
	if string(m.Extra["zz-future"]) != `[1,2.5e10,"x"]` {
		t.Fatalf("Extra = %s", m.Extra)
	}
	// Re-encoding reproduces PBS's text byte for byte.
	js, err := m.JSON()
	if err != nil || string(js) != pbsManifest {
		t.Fatalf("JSON() = %v\n%s", err, js)
	}
	blob, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := DecodeBlob(blob); err != nil || string(got) != pbsManifest {
		t.Fatalf("Marshal round trip: %v", err)
	}
}

func TestParseManifestLegacy(t *testing.T) {
	// Pre-0.8 manifests lack unprotected, crypt-mode and signature.
	legacy := `{"backup-type":"host","backup-id":"h1","backup-time":1,
		"files":[{"filename":"root.pxar.didx","size":0,"csum":"` + strings.ToUpper(csumA) + `"}]}`
	m, err := ParseManifest(handBlob(t, hexPlain, nil, []byte(legacy)))
	if err != nil {
		t.Fatal(err)
	}
	if m.Files[0].CryptMode != CryptModeNone || m.Unprotected != nil || m.Signature != nil || m.Extra != nil {
		t.Fatalf("%+v", m)
	}
	if m.VerifyState() != nil || m.Notes() != "" {
		t.Fatal("no verify state or notes expected")
	}
	js, err := m.JSON()
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "backup-id": "h1",
  "backup-time": 1,
  "backup-type": "host",
  "files": [
    {
      "crypt-mode": "none",
      "csum": "` + csumA + `",
      "filename": "root.pxar.didx",
      "size": 0
    }
  ],
  "signature": null,
  "unprotected": {}
}`
	if string(js) != want {
		t.Fatalf("JSON() =\n%s", js)
	}
}

func TestManifestSetters(t *testing.T) {
	m, err := ParseManifestJSON([]byte(pbsManifest))
	if err != nil {
		t.Fatal(err)
	}
	m.SetVerifyState(VerifyFailed, "UPID:x")
	m.SetNotes("a\nb")
	sig := "c0ffee"
	m.Signature = &sig
	blob, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	m2, err := ParseManifest(blob)
	if err != nil {
		t.Fatal(err)
	}
	if vs := m2.VerifyState(); vs == nil || *vs != (VerifyState{VerifyFailed, "UPID:x"}) {
		t.Fatalf("VerifyState = %+v", vs)
	}
	if m2.Notes() != "a\nb" || m2.Signature == nil || *m2.Signature != "c0ffee" {
		t.Fatalf("notes %q signature %v", m2.Notes(), m2.Signature)
	}
	// Unknown unprotected keys survive.
	if string(m2.Unprotected["chunk_upload_stats"]) != `{"compressed_size":123,"count":5,"duplicates":2,"size":456}` ||
		string(m2.Unprotected["key-fingerprint"]) != "null" {
		t.Fatalf("unprotected: %s", m2.Unprotected)
	}
	if !reflect.DeepEqual(m, m2) {
		t.Fatalf("round trip:\n%+v\n%+v", m, m2)
	}
	js, _ := m2.JSON()
	if !strings.Contains(string(js), `"verify_state": {
      "state": "failed",
      "upid": "UPID:x"
    }`) || !strings.Contains(string(js), `"signature": "c0ffee"`) {
		t.Fatalf("JSON:\n%s", js)
	}

	// Setters work on an empty manifest too.
	var e Manifest
	e.SetVerifyState(VerifyOK, "u")
	if vs := e.VerifyState(); vs == nil || vs.State != VerifyOK {
		t.Fatal("SetVerifyState on empty manifest")
	}
}

func TestManifestCompressed(t *testing.T) {
	m := &Manifest{BackupType: "ct", BackupID: "101", BackupTime: 2}
	for i := range 50 {
		m.Files = append(m.Files, FileInfo{Filename: "file" + strings.Repeat("x", i) + ".blob", CryptMode: CryptModeEncrypt, Size: uint64(i)})
	}
	blob, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if k, err := InspectBlob(blob); k != Compressed || err != nil {
		t.Fatalf("a large manifest should be stored compressed: %v %v", k, err)
	}
	m2, err := ParseManifest(blob)
	if err != nil || !reflect.DeepEqual(m2.Files, m.Files) {
		t.Fatalf("%v", err)
	}
}

func TestParseManifestInvalid(t *testing.T) {
	file := func(name, mode, csum string) string {
		return `{"backup-type":"vm","backup-id":"1","backup-time":1,"files":[{"filename":` + name +
			`,"crypt-mode":` + mode + `,"size":1,"csum":` + csum + `}]}`
	}
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	for name, js := range map[string]string{
		"slash":          file(q("a/b"), q("none"), q(csumA)),
		"dot":            file(q("."), q("none"), q(csumA)),
		"dotdot":         file(q(".."), q("none"), q(csumA)),
		"empty name":     file(q(""), q("none"), q(csumA)),
		"nul":            file(q("a\x00b"), q("none"), q(csumA)),
		"null name":      file("null", q("none"), q(csumA)),
		"crypt-mode":     file(q("a"), q("plain"), q(csumA)),
		"null mode":      file(q("a"), "null", q(csumA)),
		"short csum":     file(q("a"), q("none"), q(csumA[1:])),
		"long csum":      file(q("a"), q("none"), q(csumA+"00")),
		"non-hex csum":   file(q("a"), q("none"), q("zz"+csumA[2:])),
		"numeric csum":   file(q("a"), q("none"), "12"),
		"not object":     `[1,2]`,
		"null":           `null`,
		"empty":          ``,
		"trailing":       `{"backup-type":"vm","backup-id":"1","backup-time":1,"files":[]} x`,
		"missing id":     `{"backup-type":"vm","backup-time":1,"files":[]}`,
		"null files":     `{"backup-type":"vm","backup-id":"1","backup-time":1,"files":null}`,
		"float time":     `{"backup-type":"vm","backup-id":"1","backup-time":1.5,"files":[]}`,
		"case-folded":    `{"Backup-Type":"vm","backup-id":"1","backup-time":1,"files":[]}`,
		"bad signature":  `{"backup-type":"vm","backup-id":"1","backup-time":1,"files":[],"signature":5}`,
		"bad unprotect":  `{"backup-type":"vm","backup-id":"1","backup-time":1,"files":[],"unprotected":[]}`,
		"negative size":  `{"backup-type":"vm","backup-id":"1","backup-time":1,"files":[{"filename":"a","size":-1,"csum":"` + csumA + `"}]}`,
		"file not obj":   `{"backup-type":"vm","backup-id":"1","backup-time":1,"files":["a"]}`,
		"missing csum":   `{"backup-type":"vm","backup-id":"1","backup-time":1,"files":[{"filename":"a","size":1}]}`,
		"missing a size": `{"backup-type":"vm","backup-id":"1","backup-time":1,"files":[{"filename":"a","csum":"` + csumA + `"}]}`,
	} {
		if m, err := ParseManifest(handBlob(t, hexPlain, nil, []byte(js))); !errors.Is(err, ErrInvalidManifest) || m != nil {
			t.Errorf("%s: %v; want ErrInvalidManifest", name, err)
		}
	}
	// Sanity: the template itself is valid.
	if _, err := ParseManifestJSON([]byte(file(q("a"), q("encrypt"), q(csumA)))); err != nil {
		t.Fatal(err)
	}
	// Blob errors come through.
	if _, err := ParseManifest([]byte("{}")); !errors.Is(err, ErrTruncated) {
		t.Errorf("not a blob: %v", err)
	}
	bad := handBlob(t, hexPlain, nil, []byte(pbsManifest))
	bad[20] ^= 1
	if _, err := ParseManifest(bad); !errors.Is(err, ErrBadCRC) {
		t.Errorf("bad crc: %v", err)
	}
	// Marshal refuses what Parse refuses.
	m := &Manifest{Files: []FileInfo{{Filename: "../x", CryptMode: CryptModeNone}}}
	if _, err := m.Marshal(); !errors.Is(err, ErrInvalidManifest) {
		t.Errorf("Marshal bad filename: %v", err)
	}
	m = &Manifest{Files: []FileInfo{{Filename: "x"}}}
	if _, err := m.Marshal(); !errors.Is(err, ErrInvalidManifest) {
		t.Errorf("Marshal empty crypt mode: %v", err)
	}
	if _, err := ParseManifestJSON(bytes.Repeat([]byte(" "), MaxBlobSize+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("huge JSON: %v", err)
	}
}
