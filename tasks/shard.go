package tasks

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/hibiken/asynq"

	"github.com/pbsq/pbsq/datastore/name"
)

// Sharded jobs (docs/DESIGN.md §13). A verify or sync payload with
// shards N > 1 is a job: its task plans at most N shard tasks, each a
// payload of the same type carrying a ShardOf, and ends once they all
// did. The shards travel signed and routed like any task.

// MaxShards bounds --shards.
const MaxShards = 256

// MaxShardGroups bounds the groups one shard names (its payload stays
// within MaxPayloadSize).
const MaxShardGroups = 1000

// ShardOf makes a payload one shard of job Job: it covers only Groups
// (source groups for a sync), given as "<ns>:<type>/<id>".
type ShardOf struct {
	Job    string   `json:"job"`
	Index  int      `json:"index"`
	Groups []string `json:"groups"`
}

var jobIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:-]{0,119}$`)

// ShardID is the task id of shard i of job id.
func ShardID(job string, i int) string { return fmt.Sprintf("%s-s%d", job, i) }

func validateShards(n *int, sh *ShardOf, within name.Namespace, maxDepth *int) error {
	if n != nil && (*n < 1 || *n > MaxShards) {
		return fmt.Errorf("%w shards %d: must be 1..%d", name.ErrInvalid, *n, MaxShards)
	}
	if sh == nil {
		return nil
	}
	if n != nil {
		return fmt.Errorf("%w shard: a shard task cannot itself have shards", name.ErrInvalid)
	}
	if !jobIDPattern.MatchString(sh.Job) {
		return fmt.Errorf("%w shard job %q: not a task id", name.ErrInvalid, sh.Job)
	}
	if sh.Index < 0 || sh.Index >= MaxShards {
		return fmt.Errorf("%w shard index %d: must be 0..%d", name.ErrInvalid, sh.Index, MaxShards-1)
	}
	if len(sh.Groups) == 0 || len(sh.Groups) > MaxShardGroups {
		return fmt.Errorf("%w shard groups: %d, must be 1..%d", name.ErrInvalid, len(sh.Groups), MaxShardGroups)
	}
	for _, s := range sh.Groups {
		g, err := ParseShardGroup(s)
		if err != nil {
			return err
		}
		if !within.Contains(g.NS) {
			return fmt.Errorf("%w shard group %q: outside namespace %q", name.ErrInvalid, s, within)
		}
		if maxDepth != nil && g.NS.Depth()-within.Depth() > *maxDepth {
			return fmt.Errorf("%w shard group %q: deeper than max-depth %d below %q", name.ErrInvalid, s, *maxDepth, within)
		}
	}
	return nil
}

// ShardGroup is a group as a shard payload names it.
func ShardGroup(g name.Group) string { return g.NS.String() + ":" + g.String() }

// ParseShardGroup reads "<ns>:<type>/<id>".
func ParseShardGroup(s string) (name.Group, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return name.Group{}, fmt.Errorf("%w shard group %q: want <ns>:<type>/<id>", name.ErrInvalid, s)
	}
	ns, err := name.ParseNamespace(s[:i])
	if err != nil {
		return name.Group{}, err
	}
	return name.ParseGroup(ns, s[i+1:])
}

func (p *Verify) validateShards() error {
	ns, _ := name.ParseNamespace(p.NS)
	if err := validateShards(p.Shards, p.Shard, ns, p.MaxDepth); err != nil {
		return err
	}
	if p.Shard != nil && (p.BackupType != "" || p.Snapshot != "") {
		return fmt.Errorf("%w shard: a shard names its groups, not backup-type/backup-id/snapshot", name.ErrInvalid)
	}
	return nil
}

// Sharded reports whether the payload is a job to split into shards.
func (p *Verify) Sharded() bool { return p.Shards != nil && *p.Shards > 1 && p.Shard == nil }

// Sharded reports whether the payload is a job to split into shards.
func (p *Sync) Sharded() bool { return p.Shards != nil && *p.Shards > 1 && p.Shard == nil }

// ShardInfo is the shard part of a verify or sync payload, if any.
func ShardInfo(p Payload) (shards int, shard *ShardOf) {
	switch p := p.(type) {
	case *Verify:
		if p.Shards != nil {
			shards = *p.Shards
		}
		return shards, p.Shard
	case *Sync:
		if p.Shards != nil {
			shards = *p.Shards
		}
		return shards, p.Shard
	}
	return 0, nil
}

// NewShardTask builds a shard's task under its fixed id (ShardID), signed
// with k when k is set, so that a job planned again after its worker died
// finds the shards it queued before.
func NewShardTask(p Payload, k *Keys, id string, now time.Time, opts ...asynq.Option) (*asynq.Task, error) {
	t, err := NewTask(p, opts...)
	if err != nil {
		return nil, err
	}
	opts = append(taskOptions(p), append(opts, asynq.TaskID(id))...)
	if k == nil {
		return asynq.NewTask(t.Type(), t.Payload(), opts...), nil
	}
	h := k.Sign(t.Type(), id, t.Payload(), now.Add(SignatureTTL))
	return asynq.NewTaskWithHeaders(t.Type(), t.Payload(), h, opts...), nil
}
