package format

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
)

// ManifestBlobName is the file name of a snapshot's manifest.
const ManifestBlobName = "index.json.blob"

// CryptMode says how a file of a snapshot is protected.
type CryptMode string

// The crypt modes PBS knows.
const (
	CryptModeNone     CryptMode = "none"
	CryptModeEncrypt  CryptMode = "encrypt"
	CryptModeSignOnly CryptMode = "sign-only"
)

func (c CryptMode) valid() bool {
	return c == CryptModeNone || c == CryptModeEncrypt || c == CryptModeSignOnly
}

// FileInfo is one entry of a manifest's "files".
type FileInfo struct {
	Filename  string
	CryptMode CryptMode
	Size      uint64
	Csum      [32]byte // index_csum for indexes, SHA-256 of the file for blobs
}

// Manifest is a snapshot's index.json.blob. Unprotected and Extra hold
// compacted JSON values and round-trip unchanged, so fields added by PBS
// (or by other tools) survive a rewrite.
type Manifest struct {
	BackupType string
	BackupID   string
	BackupTime int64 // Unix seconds
	Files      []FileInfo
	// Unprotected is the free-form "unprotected" object (not covered by the
	// signature); pbsq keeps verify_state and notes there, as PBS does.
	Unprotected map[string]json.RawMessage
	// Signature is nil when the manifest is unsigned (JSON null).
	Signature *string
	// Extra holds unknown top-level keys.
	Extra map[string]json.RawMessage
}

// Verify states as PBS writes them.
const (
	VerifyOK     = "ok"
	VerifyFailed = "failed"
)

// VerifyState is the last verification result, unprotected["verify_state"].
type VerifyState struct {
	State string `json:"state"`
	UPID  string `json:"upid"`
}

// Manifest JSON keys.
const (
	keyBackupType  = "backup-type"
	keyBackupID    = "backup-id"
	keyBackupTime  = "backup-time"
	keyFiles       = "files"
	keyUnprotected = "unprotected"
	keySignature   = "signature"
	keyVerifyState = "verify_state"
	keyNotes       = "notes"
)

func manifestErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidManifest}, args...)...)
}

// ParseManifest decodes a manifest blob and parses and validates its JSON.
func ParseManifest(blob []byte) (*Manifest, error) {
	data, err := DecodeBlobLimit(blob, MaxManifestSize)
	if err != nil {
		return nil, fmt.Errorf("manifest blob: %w", err)
	}
	return ParseManifestJSON(data)
}

// ParseManifestJSON parses and validates manifest JSON. Keys match
// exactly (encoding/json alone would fold case), and the fields PBS
// requires must be present and not null.
func ParseManifestJSON(b []byte) (*Manifest, error) {
	if len(b) > MaxManifestSize {
		return nil, fmt.Errorf("manifest of %d bytes, over %d: %w", len(b), MaxManifestSize, ErrTooLarge)
	}
	top, err := jsonObject(b)
	if err != nil {
		return nil, manifestErr("%w", err)
	}
	m := &Manifest{}
	if err := requireField(top, keyBackupType, &m.BackupType); err != nil {
		return nil, err
	}
	if err := requireField(top, keyBackupID, &m.BackupID); err != nil {
		return nil, err
	}
	if err := requireField(top, keyBackupTime, &m.BackupTime); err != nil {
		return nil, err
	}
	var files []json.RawMessage
	if err := requireField(top, keyFiles, &files); err != nil {
		return nil, err
	}
	m.Files = make([]FileInfo, len(files))
	for i, raw := range files {
		if m.Files[i], err = parseFileInfo(raw); err != nil {
			return nil, fmt.Errorf("files[%d]: %w", i, err)
		}
	}
	// PBS before 0.8 had no "unprotected"; null is taken as empty too.
	if raw, ok := top[keyUnprotected]; ok && !isNull(raw) {
		if m.Unprotected, err = jsonObject(raw); err != nil {
			return nil, manifestErr("%s: %w", keyUnprotected, err)
		}
		if len(m.Unprotected) == 0 {
			m.Unprotected = nil
		}
	}
	if raw, ok := top[keySignature]; ok && !isNull(raw) {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, manifestErr("%s: %w", keySignature, err)
		}
		m.Signature = &s
	}
	for _, k := range []string{keyBackupType, keyBackupID, keyBackupTime, keyFiles, keyUnprotected, keySignature} {
		delete(top, k)
	}
	if len(top) > 0 {
		m.Extra = top
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m, nil
}

func parseFileInfo(raw json.RawMessage) (FileInfo, error) {
	var f FileInfo
	obj, err := jsonObject(raw)
	if err != nil {
		return f, manifestErr("%w", err)
	}
	if err := requireField(obj, "filename", &f.Filename); err != nil {
		return f, err
	}
	f.CryptMode = CryptModeNone // absent before PBS 0.8
	if _, ok := obj["crypt-mode"]; ok {
		if err := requireField(obj, "crypt-mode", &f.CryptMode); err != nil {
			return f, err
		}
	}
	if err := requireField(obj, "size", &f.Size); err != nil {
		return f, err
	}
	var csum string
	if err := requireField(obj, "csum", &csum); err != nil {
		return f, err
	}
	if len(csum) != 64 {
		return f, manifestErr("csum %q: want 64 hex digits", csum)
	}
	if _, err := hex.Decode(f.Csum[:], []byte(csum)); err != nil {
		return f, manifestErr("csum %q: %w", csum, err)
	}
	return f, nil
}

// jsonObject decodes a JSON object into compacted raw values.
func jsonObject(b []byte) (map[string]json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	if m == nil {
		return nil, fmt.Errorf("not an object: %.20q", b)
	}
	for k, v := range m {
		var c bytes.Buffer
		if err := json.Compact(&c, v); err != nil {
			return nil, err // unreachable: Unmarshal validated v
		}
		m[k] = c.Bytes()
	}
	return m, nil
}

func isNull(raw json.RawMessage) bool { return string(raw) == "null" }

// requireField decodes obj[key] into v; missing or null is an error.
func requireField(obj map[string]json.RawMessage, key string, v any) error {
	raw, ok := obj[key]
	if !ok || isNull(raw) {
		return manifestErr("%q missing", key)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return manifestErr("%q: %w", key, err)
	}
	return nil
}

// ValidFilename reports whether name is a plain file name fit for a
// manifest: non-empty, not . or .., without / or NUL.
func ValidFilename(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\x00")
}

// Validate checks the fields that Marshal writes.
func (m *Manifest) Validate() error {
	for i, f := range m.Files {
		if !ValidFilename(f.Filename) {
			return manifestErr("files[%d]: bad filename %q", i, f.Filename)
		}
		if !f.CryptMode.valid() {
			return manifestErr("files[%d] %q: bad crypt-mode %q", i, f.Filename, f.CryptMode)
		}
	}
	return nil
}

// fileJSON is FileInfo as PBS serialises it; fields in sorted order, as
// PBS's serde_json map output has them.
type fileJSON struct {
	CryptMode CryptMode `json:"crypt-mode"`
	Csum      string    `json:"csum"`
	Filename  string    `json:"filename"`
	Size      uint64    `json:"size"`
}

// JSON returns the manifest as PBS writes it: pretty-printed with two
// spaces and sorted keys (serde_json's map order).
func (m *Manifest) JSON() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	top := make(map[string]any, 6+len(m.Extra))
	for k, v := range m.Extra {
		top[k] = v
	}
	files := make([]fileJSON, len(m.Files))
	for i, f := range m.Files {
		files[i] = fileJSON{f.CryptMode, hex.EncodeToString(f.Csum[:]), f.Filename, f.Size}
	}
	unprotected := m.Unprotected
	if unprotected == nil {
		unprotected = map[string]json.RawMessage{}
	}
	top[keyBackupType] = m.BackupType
	top[keyBackupID] = m.BackupID
	top[keyBackupTime] = m.BackupTime
	top[keyFiles] = files
	top[keyUnprotected] = unprotected
	top[keySignature] = m.Signature
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // keep raw values byte-identical
	enc.SetIndent("", "  ")
	if err := enc.Encode(top); err != nil {
		return nil, manifestErr("%w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// Marshal returns the manifest blob, compressed where smaller as PBS does.
func (m *Manifest) Marshal() ([]byte, error) {
	b, err := m.JSON()
	if err != nil {
		return nil, err
	}
	if len(b) > MaxManifestSize {
		// Never write a manifest that readers would refuse.
		return nil, fmt.Errorf("manifest of %d bytes, over %d: %w", len(b), MaxManifestSize, ErrTooLarge)
	}
	return EncodeBlob(b)
}

// File returns the entry for name.
func (m *Manifest) File(name string) (FileInfo, bool) {
	for _, f := range m.Files {
		if f.Filename == name {
			return f, true
		}
	}
	return FileInfo{}, false
}

// VerifyState returns the recorded verification state, or nil when there
// is none or it is not an object of the expected shape.
func (m *Manifest) VerifyState() *VerifyState {
	raw, ok := m.Unprotected[keyVerifyState]
	if !ok {
		return nil
	}
	var v VerifyState
	if err := json.Unmarshal(raw, &v); err != nil || isNull(raw) {
		return nil
	}
	return &v
}

// SetVerifyState records a verification result (state VerifyOK or
// VerifyFailed, and the task's UPID).
func (m *Manifest) SetVerifyState(state, upid string) {
	m.setUnprotected(keyVerifyState, VerifyState{State: state, UPID: upid})
}

// Notes returns the snapshot notes, "" if none.
func (m *Manifest) Notes() string {
	var s string
	if raw, ok := m.Unprotected[keyNotes]; ok {
		_ = json.Unmarshal(raw, &s) // not a string: no notes
	}
	return s
}

// SetNotes sets the snapshot notes.
func (m *Manifest) SetNotes(notes string) { m.setUnprotected(keyNotes, notes) }

func (m *Manifest) setUnprotected(key string, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(err) // strings and plain structs always encode
	}
	if m.Unprotected == nil {
		m.Unprotected = map[string]json.RawMessage{}
	}
	m.Unprotected[key] = bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}
