package datastore

import (
	"context"
	"errors"
	"io/fs"
	"time"

	"github.com/pbsq/pbsq/datastore/name"
)

// ChunkShare is what the shards of one sharded job share about chunks
// (docs/DESIGN.md §13): a verify job's verdicts, so that each chunk is
// read and hashed once across all shards, and a sync job's chunks the
// target has, so that two shards do not both upload one. A nil
// ChunkShare is the in-process behaviour: the task's own set only.
type ChunkShare interface {
	// Claim asks for chunks ds, in order. Each answer is Mine (the
	// caller checks it, then Publishes its verdict), Done (checked by
	// anybody: the verdict is given), or neither: another live shard is
	// checking it, ask again later.
	Claim(ctx context.Context, ds []Digest) ([]ShareClaim, error)
	// Publish records verdicts of chunks the caller claimed.
	Publish(ctx context.Context, vs []SharedVerdict) error
}

// ShareClaim is Claim's answer for one chunk.
type ShareClaim struct {
	Mine    bool
	Done    bool
	Verdict SharedVerdict
}

// SharedVerdict is what one shard learnt of a chunk.
type SharedVerdict struct {
	Digest Digest
	// Code is verify's chunk state (1 ok, 2 corrupt, 3 missing,
	// 4 encrypted) or, in a sync, 1: the target has it.
	Code uint8
	// Size is a good chunk's decoded length (verify).
	Size uint32
	// At is when the target was known to have it (sync), Unix ms.
	At int64
	// Reason says what is wrong with a bad chunk.
	Reason string
}

// sharePoll is how long a shard waits before asking again for chunks
// another shard is checking.
const sharePoll = 100 * time.Millisecond

// GroupSize is a group with a cheap estimate of the work it holds.
type GroupSize struct {
	Group name.Group
	Size  int64
}

// ScopeGroupSizes lists the groups of a scope with their estimates
// (EstimateGroup), for splitting a job into balanced shards.
func (s *Store) ScopeGroupSizes(ctx context.Context, sc Scope) ([]GroupSize, error) {
	groups, err := s.scopeGroups(ctx, sc)
	if err != nil {
		return nil, err
	}
	return s.GroupSizes(ctx, groups)
}

// GroupSizes estimates groups (EstimateGroup).
func (s *Store) GroupSizes(ctx context.Context, groups []name.Group) ([]GroupSize, error) {
	out := make([]GroupSize, len(groups))
	err := parallel(ctx, 8, len(groups), func(ctx context.Context, i int) error {
		n, err := s.EstimateGroup(ctx, groups[i])
		out[i] = GroupSize{Group: groups[i], Size: n}
		return err
	})
	return out, err
}

// EstimateGroup is a cheap estimate of a group's data: the data size the
// manifest of its newest finished snapshot gives for its indexes, plus a
// tenth of that per older snapshot (incremental backups share most
// chunks), and at least 1 per snapshot. One manifest read per group.
func (s *Store) EstimateGroup(ctx context.Context, g name.Group) (int64, error) {
	snaps, err := s.ListSnapshots(ctx, g)
	if err != nil {
		return 0, err
	}
	est := int64(len(snaps))
	for i := len(snaps) - 1; i >= 0; i-- {
		if !snaps[i].Finished {
			continue
		}
		m, err := s.ReadManifest(ctx, snaps[i].Snapshot)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, err
		}
		var idx int64
		for _, f := range m.Files {
			if !isBlobFile(f.Filename) {
				idx += int64(f.Size)
			}
		}
		est += idx + idx/10*int64(len(snaps)-1)
		break
	}
	return est, nil
}
