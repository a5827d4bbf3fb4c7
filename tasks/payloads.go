package tasks

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/pbsq/pbsq/datastore/name"
)

// MoveGroup moves one backup group to another namespace.
type MoveGroup struct {
	Store      string    `json:"store"`
	NS         string    `json:"ns"`
	BackupType string    `json:"backup-type"`
	BackupID   string    `json:"backup-id"`
	TargetNS   string    `json:"target-ns"`
	MergeGroup *bool     `json:"merge-group,omitempty"` // default true
	LockWait   *Duration `json:"lock-wait,omitempty"`
}

func (*MoveGroup) TaskType() string   { return TypeMoveGroup }
func (p *MoveGroup) Stores() []string { return []string{p.Store} }
func (p *MoveGroup) Wait() *Duration  { return p.LockWait }

// Validate implements Payload.
func (p *MoveGroup) Validate() error {
	ns, target, err := validateMove(p.Store, p.NS, p.TargetNS)
	if err != nil {
		return err
	}
	if ns == target {
		return fmt.Errorf("%w move-group: ns and target-ns are both %q", name.ErrInvalid, p.NS)
	}
	if _, err := name.NewGroup(ns, p.BackupType, p.BackupID); err != nil {
		return err
	}
	return validateWait(p.LockWait)
}

// validateMove checks what both moves share: the store and the source and
// target namespaces.
func validateMove(store, nsArg, targetArg string) (ns, target name.Namespace, err error) {
	if err := validateStore("store", store); err != nil {
		return ns, target, err
	}
	if ns, err = validateNS("ns", nsArg); err != nil {
		return ns, target, err
	}
	target, err = validateNS("target-ns", targetArg)
	return ns, target, err
}

// MoveNamespace moves a namespace subtree.
type MoveNamespace struct {
	Store        string    `json:"store"`
	NS           string    `json:"ns"`
	TargetNS     string    `json:"target-ns"`
	MaxDepth     *int      `json:"max-depth,omitempty"`
	DeleteSource *bool     `json:"delete-source,omitempty"` // default true
	MergeGroups  *bool     `json:"merge-groups,omitempty"`  // default true
	LockWait     *Duration `json:"lock-wait,omitempty"`
}

func (*MoveNamespace) TaskType() string   { return TypeMoveNamespace }
func (p *MoveNamespace) Stores() []string { return []string{p.Store} }
func (p *MoveNamespace) Wait() *Duration  { return p.LockWait }

// Validate implements Payload.
func (p *MoveNamespace) Validate() error {
	ns, target, err := validateMove(p.Store, p.NS, p.TargetNS)
	if err != nil {
		return err
	}
	switch {
	case ns.IsRoot():
		return fmt.Errorf("%w move-namespace: the root namespace cannot be moved", name.ErrInvalid)
	case ns == target:
		return fmt.Errorf("%w move-namespace: ns and target-ns are both %q", name.ErrInvalid, p.NS)
	case ns.Contains(target):
		return fmt.Errorf("%w move-namespace: target-ns %q lies inside the source %q", name.ErrInvalid, p.TargetNS, p.NS)
	}
	if err := validateDepth(p.MaxDepth); err != nil {
		return err
	}
	return validateWait(p.LockWait)
}

// Keep holds the keep-* options (nil = unset; set values must be ≥ 1).
type Keep struct {
	KeepLast    *int `json:"keep-last,omitempty"`
	KeepHourly  *int `json:"keep-hourly,omitempty"`
	KeepDaily   *int `json:"keep-daily,omitempty"`
	KeepWeekly  *int `json:"keep-weekly,omitempty"`
	KeepMonthly *int `json:"keep-monthly,omitempty"`
	KeepYearly  *int `json:"keep-yearly,omitempty"`
}

// Each calls fn for every set option with its payload key.
func (k *Keep) Each(fn func(key string, v int)) {
	for _, o := range []struct {
		key string
		v   *int
	}{{"keep-last", k.KeepLast}, {"keep-hourly", k.KeepHourly}, {"keep-daily", k.KeepDaily},
		{"keep-weekly", k.KeepWeekly}, {"keep-monthly", k.KeepMonthly}, {"keep-yearly", k.KeepYearly}} {
		if o.v != nil {
			fn(o.key, *o.v)
		}
	}
}

func (k *Keep) validate() error {
	var err error
	k.Each(func(key string, v int) {
		if v < 1 && err == nil {
			err = fmt.Errorf("%w %s %d: must be at least 1 (leave it out to unset)", name.ErrInvalid, key, v)
		}
	})
	return err
}

// Prune applies keep rules to a namespace (recursively) or one group.
type Prune struct {
	Store      string `json:"store"`
	NS         string `json:"ns"`
	BackupType string `json:"backup-type,omitempty"`
	BackupID   string `json:"backup-id,omitempty"`
	MaxDepth   *int   `json:"max-depth,omitempty"`
	Keep
	DryRun   bool      `json:"dry-run,omitempty"`
	LockWait *Duration `json:"lock-wait,omitempty"`
}

func (*Prune) TaskType() string   { return TypePrune }
func (p *Prune) Stores() []string { return []string{p.Store} }
func (p *Prune) Wait() *Duration  { return p.LockWait }

// Validate implements Payload.
func (p *Prune) Validate() error {
	if err := validateStore("store", p.Store); err != nil {
		return err
	}
	if _, err := validateNS("ns", p.NS); err != nil {
		return err
	}
	if err := validateGroupSel(p.BackupType, p.BackupID); err != nil {
		return err
	}
	if err := validateDepth(p.MaxDepth); err != nil {
		return err
	}
	if err := p.Keep.validate(); err != nil {
		return err
	}
	return validateWait(p.LockWait)
}

// Verify checks snapshots.
type Verify struct {
	Store          string    `json:"store"`
	NS             string    `json:"ns"`
	BackupType     string    `json:"backup-type,omitempty"`
	BackupID       string    `json:"backup-id,omitempty"`
	Snapshot       string    `json:"snapshot,omitempty"` // backup time, with type and id
	MaxDepth       *int      `json:"max-depth,omitempty"`
	IgnoreVerified *bool     `json:"ignore-verified,omitempty"` // default true
	OutdatedAfter  *int      `json:"outdated-after,omitempty"`  // days
	LockWait       *Duration `json:"lock-wait,omitempty"`
	// ReadOnly records no verify state and renames no corrupt chunk.
	ReadOnly bool `json:"read-only,omitempty"`
	// Sample (percent, 1..100) checks about that share of the chunks, in
	// a rotation over the scope's chunks (DESIGN §4.5).
	Sample *int `json:"sample,omitempty"`
	// MaxDuration stops the verify after it; the next one resumes.
	MaxDuration *MaxDuration `json:"max-duration,omitempty"`
	// Shards splits the job into at most this many shard tasks.
	Shards *int `json:"shards,omitempty"`
	// Shard marks one shard of a sharded job.
	Shard *ShardOf `json:"shard,omitempty"`
}

// MaxDuration is a time box: "1h30m" or a number of seconds.
type MaxDuration struct{ time.Duration }

// MarshalJSON writes the Go duration string.
func (d MaxDuration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON accepts what Duration accepts, naming max-duration when
// it refuses.
func (d *MaxDuration) UnmarshalJSON(b []byte) error {
	var x Duration
	if err := x.UnmarshalJSON(b); err != nil {
		return fmt.Errorf("%w max-duration %s: must be a duration like \"1h\" or seconds", name.ErrInvalid, b)
	}
	d.Duration = x.Duration
	return nil
}

func (*Verify) TaskType() string   { return TypeVerify }
func (p *Verify) Stores() []string { return []string{p.Store} }
func (p *Verify) Wait() *Duration  { return p.LockWait }

// Validate implements Payload.
func (p *Verify) Validate() error {
	if err := validateStore("store", p.Store); err != nil {
		return err
	}
	if _, err := validateNS("ns", p.NS); err != nil {
		return err
	}
	if err := validateGroupSel(p.BackupType, p.BackupID); err != nil {
		return err
	}
	if p.Snapshot != "" {
		if p.BackupType == "" {
			return fmt.Errorf("%w snapshot %q: needs backup-type and backup-id", name.ErrInvalid, p.Snapshot)
		}
		if _, err := name.ParseTime(p.Snapshot); err != nil {
			return err
		}
	}
	if err := validateDepth(p.MaxDepth); err != nil {
		return err
	}
	if p.OutdatedAfter != nil && (*p.OutdatedAfter < 0 || *p.OutdatedAfter > 100000) {
		return fmt.Errorf("%w outdated-after %d: must be 0..100000 days", name.ErrInvalid, *p.OutdatedAfter)
	}
	if p.Sample != nil && (*p.Sample < 1 || *p.Sample > 100) {
		return fmt.Errorf("%w sample %d: must be 1..100 percent", name.ErrInvalid, *p.Sample)
	}
	if p.Sample != nil && *p.Sample < 100 && p.ReadOnly {
		return fmt.Errorf("%w sample %d with read-only: a sampled verify records its rotation in the store", name.ErrInvalid, *p.Sample)
	}
	if d := p.MaxDuration; d != nil && (d.Duration <= 0 || d.Duration > Timeout(TypeVerify)) {
		return fmt.Errorf("%w max-duration %s: must be more than 0 and at most %s", name.ErrInvalid, d.Duration, Timeout(TypeVerify))
	}
	if err := p.validateShards(); err != nil {
		return err
	}
	if (p.Sharded() || p.Shard != nil) && (p.Sample != nil || p.MaxDuration != nil) {
		// Each shard would advance the scope's one rotation or resume
		// record on its own.
		return fmt.Errorf("%w verify: sample and max-duration cannot be sharded (run them unsharded)", name.ErrInvalid)
	}
	return validateWait(p.LockWait)
}

// Sync copies snapshots from one datastore to another.
type Sync struct {
	SourceStore    string    `json:"source-store"`
	SourceNS       string    `json:"source-ns"`
	Store          string    `json:"store"`
	NS             string    `json:"ns"`
	MaxDepth       *int      `json:"max-depth,omitempty"`
	GroupFilter    []string  `json:"group-filter,omitempty"`
	TransferLast   *int      `json:"transfer-last,omitempty"`
	RemoveVanished bool      `json:"remove-vanished,omitempty"`
	ResyncCorrupt  bool      `json:"resync-corrupt,omitempty"`
	Owner          string    `json:"owner,omitempty"`
	Rate           int64     `json:"rate,omitempty"` // bytes/s, 0 = unlimited
	LockWait       *Duration `json:"lock-wait,omitempty"`
	// Shards splits the job into at most this many shard tasks.
	Shards *int `json:"shards,omitempty"`
	// Shard marks one shard of a sharded job (its groups are source groups).
	Shard *ShardOf `json:"shard,omitempty"`
}

func (*Sync) TaskType() string   { return TypeSync }
func (p *Sync) Stores() []string { return []string{p.SourceStore, p.Store} }
func (p *Sync) Wait() *Duration  { return p.LockWait }

// Validate implements Payload.
func (p *Sync) Validate() error {
	if err := validateStore("source-store", p.SourceStore); err != nil {
		return err
	}
	if err := validateStore("store", p.Store); err != nil {
		return err
	}
	src, err := validateNS("source-ns", p.SourceNS)
	if err != nil {
		return err
	}
	dst, err := validateNS("ns", p.NS)
	if err != nil {
		return err
	}
	if p.SourceStore == p.Store && (src.Contains(dst) || dst.Contains(src)) {
		return fmt.Errorf("%w sync: source %s:%q and target %s:%q overlap", name.ErrInvalid, p.SourceStore, p.SourceNS, p.Store, p.NS)
	}
	if err := validateDepth(p.MaxDepth); err != nil {
		return err
	}
	if len(p.GroupFilter) > 256 {
		return fmt.Errorf("%w group-filter: %d filters, at most 256", name.ErrInvalid, len(p.GroupFilter))
	}
	for _, f := range p.GroupFilter {
		if _, err := name.ParseGroupFilter(f); err != nil {
			return err
		}
	}
	if p.TransferLast != nil && *p.TransferLast < 1 {
		return fmt.Errorf("%w transfer-last %d: must be at least 1", name.ErrInvalid, *p.TransferLast)
	}
	if p.Rate < 0 {
		return fmt.Errorf("%w rate %d: must not be negative", name.ErrInvalid, p.Rate)
	}
	if p.Owner != "" && (len(p.Owner) > 64 || !strings.Contains(p.Owner, "@") || strings.ContainsAny(p.Owner, "\n\r\x00/ ")) {
		return fmt.Errorf("%w owner %q: must be an auth id like root@pam", name.ErrInvalid, p.Owner)
	}
	if err := validateShards(p.Shards, p.Shard, src, p.MaxDepth); err != nil {
		return err
	}
	if p.RemoveVanished && (p.Sharded() || p.Shard != nil) {
		// Each shard sees only its groups: it would take the others for
		// vanished.
		return fmt.Errorf("%w sync: remove-vanished cannot be sharded (run it unsharded)", name.ErrInvalid)
	}
	return validateWait(p.LockWait)
}

// GC runs garbage collection on a datastore.
type GC struct {
	Store    string    `json:"store"`
	DryRun   bool      `json:"dry-run,omitempty"`
	LockWait *Duration `json:"lock-wait,omitempty"`
}

func (*GC) TaskType() string   { return TypeGC }
func (p *GC) Stores() []string { return []string{p.Store} }
func (p *GC) Wait() *Duration  { return p.LockWait }

// Validate implements Payload.
func (p *GC) Validate() error {
	if err := validateStore("store", p.Store); err != nil {
		return err
	}
	return validateWait(p.LockWait)
}
