package datastore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/pbsq/pbsq/datastore/lock"
)

// A PBS 4.x S3 datastore marks the bucket prefix it uses with an .in-use
// object naming its host. Such a PBS keeps a local cache of the store's
// contents, and its GC deletes every chunk object without a cache marker,
// whatever its age: chunks pbsq writes there are swept by PBS's next GC,
// and pbsq's moves, prunes and new snapshots are invisible to PBS's cache.
// So while the marker is there, every operation that writes refuses
// (reading still works), unless the datastore's config says the
// administrator took the datastore out of PBS's hands (PBS maintenance
// mode, or the datastore removed from PBS), naming that PBS host.

// inUseReader is a backend that can read PBS's in-use marker (S3).
type inUseReader interface {
	InUseMarker(ctx context.Context) ([]byte, bool, error)
}

// InUseMarker is the content of PBS's .in-use object.
type InUseMarker struct {
	Hostname string `json:"hostname,omitempty"`
}

// ParseInUseMarker decodes the marker as PBS does: content it cannot
// decode counts as a marker without a host name (the prefix is in use all
// the same), and a host name that is not one is ignored.
func ParseInUseMarker(data []byte) InUseMarker {
	var m InUseMarker
	if err := json.Unmarshal(data, &m); err != nil {
		return InUseMarker{}
	}
	if !validHostname(m.Hostname) {
		m.Hostname = ""
	}
	return m
}

var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$`)

func validHostname(h string) bool { return len(h) <= 253 && hostnameRE.MatchString(h) }

// ValidateInUseOverride checks a datastore's pbs-in-use-override: the host
// name of the PBS whose marker may be overridden, or "*" for any marker.
func ValidateInUseOverride(v string) error {
	if v == "" || v == "*" || validHostname(v) {
		return nil
	}
	return invalidf("pbs-in-use-override %q: want the PBS host name the .in-use marker names, or \"*\"", v)
}

// ErrPBSInUse is wrapped (with lock.ErrBusy) when a PBS uses the store.
var ErrPBSInUse = errors.New("datastore in use by a Proxmox Backup Server")

// checkPBSInUse refuses, on object storage, to write into a prefix that
// holds PBS's .in-use marker, unless the override names its host.
func (s *Store) checkPBSInUse(ctx context.Context) error {
	r, ok := s.b.(inUseReader)
	if !ok {
		return nil
	}
	data, present, err := r.InUseMarker(ctx)
	if err != nil {
		return fmt.Errorf("store %q: check for PBS's .in-use marker: %w", s.name, err)
	}
	if !present {
		return nil
	}
	m := ParseInUseMarker(data)
	if s.inUseOverride == "*" || (m.Hostname != "" && strings.EqualFold(s.inUseOverride, m.Hostname)) {
		s.log.Info("writing despite PBS's .in-use marker, as configured", "pbs_host", m.Hostname, "override", s.inUseOverride)
		return nil
	}
	host, want := "an unnamed host", "*"
	if m.Hostname != "" {
		host, want = "host "+m.Hostname, m.Hostname
	}
	return fmt.Errorf("store %q (%s): %w on %s (its .in-use marker is at the prefix): PBS's next garbage collection "+
		"would delete the chunks pbsq writes and PBS's cache would not see pbsq's changes, so pbsq writes nothing here; "+
		"reading (ls, verify --read-only) works. To let pbsq write: on the PBS put the datastore into maintenance mode "+
		"(or remove it from PBS), set `pbs-in-use-override: %q` in the s3 section of this datastore in pbsq's config, "+
		"and before PBS uses the datastore again run PBS's s3-refresh on it: %w",
		s.name, s.b, ErrPBSInUse, host, want, lock.ErrBusy)
}

// CheckWritable refuses, with an error wrapping lock.ErrBusy, when the
// store is an object store a PBS uses (see above); for commands that write
// without one of the operations below (namespace create and remove).
func (s *Store) CheckWritable(ctx context.Context) error { return s.checkPBSInUse(ctx) }

// beginWrite is called by every operation that changes the store, before
// it changes anything: it refuses an object store a PBS uses and, for
// operations that write chunks or index files (backup, sync into the
// store, move), takes the chunk-store lock shared (processlock.go). The
// returned func releases what was taken.
func (s *Store) beginWrite(ctx context.Context, chunks bool) (func(), error) {
	if err := s.checkPBSInUse(ctx); err != nil {
		return nil, err
	}
	if !chunks {
		return func() {}, nil
	}
	return s.processLock(ctx, processLockWriter)
}
