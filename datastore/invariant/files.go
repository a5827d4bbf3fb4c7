package invariant

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/backend/local"
	"github.com/pbsq/pbsq/datastore/format"
)

// FilesReport is what CheckFiles found.
type FilesReport struct {
	Files int // files under a final name, all checked
	// Temps are the backend's temp files (filesystem dot-files written
	// before a rename): the only files allowed to be partial.
	Temps []string
	// Other are files of no kind CheckFiles knows; they are listed, not
	// judged.
	Other    []string
	Problems []string
}

// Err folds the problems into one error (nil when there are none).
func (r *FilesReport) Err() error {
	if len(r.Problems) == 0 {
		return nil
	}
	shown := r.Problems[:min(len(r.Problems), 20)]
	return fmt.Errorf("%d file(s) under a final name are corrupt or partial:\n  %s", len(r.Problems), strings.Join(shown, "\n  "))
}

// CheckFiles reads every file of the backend and checks, by its name, that
// it is whole: chunks decode and hash to their names, indexes and manifests
// parse, blobs decode, pbsq's own JSON state parses, owner files are one
// line. A write cut short (disk full, crash) may only ever have left a temp
// file, never a partial file under its final name.
func CheckFiles(ctx context.Context, b backend.Backend) (*FilesReport, error) {
	r := &FilesReport{}
	err := walkAll(ctx, b, func(fi backend.FileInfo) error {
		base := path.Base(fi.Name)
		if local.IsTemp(base) {
			r.Temps = append(r.Temps, fi.Name)
			return nil
		}
		kind, check := classify(fi.Name, base)
		if check == nil {
			r.Other = append(r.Other, fi.Name)
			return nil
		}
		raw, err := b.ReadFile(ctx, fi.Name)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed while walking
		}
		if err != nil {
			return fmt.Errorf("invariant: read %s: %w", fi.Name, err)
		}
		r.Files++
		if why := check(raw); why != "" {
			r.Problems = append(r.Problems, fmt.Sprintf("%s (%s, %d bytes): %s", fi.Name, kind, len(raw), why))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// classify names a file's kind and how to check it; nil for unknown files.
func classify(p, base string) (string, func([]byte) string) {
	dir := path.Dir(p)
	switch {
	case strings.HasPrefix(p, ".chunks/"):
		hexPart, rest, _ := strings.Cut(base, ".")
		d, err := datastore.ParseDigest(hexPart)
		if err != nil || path.Dir(dir) != ".chunks" || path.Base(dir) != hexPart[:4] {
			return "", nil
		}
		if rest != "" {
			return "", nil // <digest>.<n>.bad: corrupt by definition
		}
		return "chunk", func(raw []byte) string { return chunkProblem(d, raw) }
	case strings.HasPrefix(p, ".pbsq/"):
		if strings.HasSuffix(base, ".json") || strings.HasPrefix(base, "gc-running") {
			return "pbsq state", func(raw []byte) string {
				if !json.Valid(raw) {
					return "not valid JSON"
				}
				return ""
			}
		}
		return "", nil
	case base == datastore.ManifestName:
		return "manifest", func(raw []byte) string {
			if _, err := format.ParseManifest(raw); err != nil {
				return err.Error()
			}
			return ""
		}
	case strings.HasSuffix(base, ".fidx"), strings.HasSuffix(base, ".didx"):
		return "index", func(raw []byte) string {
			if _, err := format.ParseIndex(base, raw); err != nil {
				return err.Error()
			}
			return ""
		}
	case strings.HasSuffix(base, ".blob"):
		return "blob", func(raw []byte) string {
			if _, err := format.DecodeBlob(raw); err != nil && !errors.Is(err, format.ErrEncrypted) {
				return err.Error()
			}
			return ""
		}
	case base == "owner":
		return "owner", func(raw []byte) string {
			s := string(raw)
			if !strings.HasSuffix(s, "\n") || strings.Count(s, "\n") != 1 || datastore.ValidateOwner(strings.TrimSuffix(s, "\n")) != nil {
				return fmt.Sprintf("not one auth-id line: %q", s)
			}
			return ""
		}
	case base == ".namespace", base == datastore.ProtectedName:
		return "marker", func(raw []byte) string {
			if len(raw) != 0 {
				return "marker not empty"
			}
			return ""
		}
	}
	return "", nil
}
