package datastore

import (
	"context"
	"errors"
	"io/fs"
	"time"

	"github.com/pbsq/pbsq/datastore/format"
	"github.com/pbsq/pbsq/datastore/name"
)

// GroupStats is what a scan knows of one backup group.
type GroupStats struct {
	Group name.Group
	// LastBackup is the newest finished snapshot's time (zero: none).
	LastBackup time.Time
	// LastVerifyOK is the start of the latest verify that passed any of
	// the group's snapshots (zero: none ever passed).
	LastVerifyOK time.Time
	// VerifyFailed counts snapshots whose last verify failed.
	VerifyFailed int
}

// StoreStats is a read-only scan of a store's contents.
type StoreStats struct {
	// Snapshots counts finished snapshots per namespace ("" is root).
	Snapshots map[string]int
	// Groups is filled only when the scan reads manifests.
	Groups []GroupStats
}

// Stats scans the store without locks (a metric may be a scan behind a
// concurrent move). With groups it reads every finished snapshot's
// manifest for its verify state: one read per snapshot.
func (s *Store) Stats(ctx context.Context, groups bool) (*StoreStats, error) {
	nss, err := s.ListNamespaces(ctx, name.Root, -1)
	if err != nil {
		return nil, err
	}
	st := &StoreStats{Snapshots: map[string]int{}}
	for _, ns := range nss {
		st.Snapshots[ns.String()] += 0
		gs, err := s.ListGroups(ctx, ns)
		if err != nil {
			if errors.Is(err, ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
				continue // moved or removed meanwhile
			}
			return nil, err
		}
		for _, g := range gs {
			snaps, err := s.ListSnapshots(ctx, g)
			if err != nil {
				if errors.Is(err, ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
					continue
				}
				return nil, err
			}
			gst := GroupStats{Group: g}
			for _, sn := range snaps {
				if !sn.Finished {
					continue
				}
				st.Snapshots[ns.String()]++
				if sn.Time.After(gst.LastBackup) {
					gst.LastBackup = sn.Time
				}
				if !groups {
					continue
				}
				m, err := s.ReadManifest(ctx, sn.Snapshot)
				if err != nil {
					if errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrNotFound) {
						continue
					}
					return nil, err
				}
				vs := m.VerifyState()
				switch {
				case vs == nil:
				case vs.State == format.VerifyOK:
					if t, ok := upidStart(vs.UPID); ok && t.After(gst.LastVerifyOK) {
						gst.LastVerifyOK = t
					}
				case vs.State == format.VerifyFailed:
					gst.VerifyFailed++
				}
			}
			if groups && !gst.LastBackup.IsZero() {
				st.Groups = append(st.Groups, gst)
			}
		}
	}
	return st, nil
}
