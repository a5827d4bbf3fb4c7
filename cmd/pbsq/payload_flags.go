package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/pbsq/pbsq/tasks"
)

// payloadFlags registers the flags of a task type on cmd (they mirror the
// payload keys) and returns a builder for the payload. `run` and `enqueue`
// share it, so both accept exactly the same input.
func payloadFlags(taskType string, cmd *cobra.Command) func() (tasks.Payload, error) {
	f := cmd.Flags()
	var lockWait time.Duration
	f.DurationVar(&lockWait, "lock-wait", 0, "retry window for busy locks (default from config; 0 = one try)")
	withWait := func(p tasks.Payload) (tasks.Payload, error) {
		if f.Changed("lock-wait") {
			d := &tasks.Duration{Duration: lockWait}
			switch p := p.(type) {
			case *tasks.MoveGroup:
				p.LockWait = d
			case *tasks.MoveNamespace:
				p.LockWait = d
			case *tasks.Prune:
				p.LockWait = d
			case *tasks.Verify:
				p.LockWait = d
			case *tasks.Sync:
				p.LockWait = d
			case *tasks.GC:
				p.LockWait = d
			}
		}
		return p, p.Validate()
	}
	intPtr := func(name string, v *int) *int {
		if f.Changed(name) {
			c := *v
			return &c
		}
		return nil
	}
	boolPtr := func(name string, v *bool) *bool {
		if f.Changed(name) {
			c := *v
			return &c
		}
		return nil
	}
	var store, ns, typ, id, targetNS string
	var maxDepth int
	storeFlags := func() {
		f.StringVar(&store, "store", "", "datastore")
		f.StringVar(&ns, "ns", "", "namespace ('' or absent: root)")
	}
	groupFlags := func(required bool) {
		help := "backup type (vm, ct, host) of one group"
		if required {
			help = "backup type of the group (vm, ct, host)"
		}
		f.StringVar(&typ, "backup-type", "", help)
		f.StringVar(&id, "backup-id", "", "backup id of the group")
	}
	depthFlag := func() {
		f.IntVar(&maxDepth, "max-depth", 0, "namespace levels below --ns (default: all)")
	}
	switch taskType {
	case tasks.TypeMoveGroup:
		storeFlags()
		groupFlags(true)
		f.StringVar(&targetNS, "target-ns", "", "target namespace (must exist)")
		merge := f.Bool("merge-group", true, "merge into an existing target group (owners must match, target snapshots older)")
		return func() (tasks.Payload, error) {
			return withWait(&tasks.MoveGroup{Store: store, NS: ns, BackupType: typ, BackupID: id, TargetNS: targetNS, MergeGroup: boolPtr("merge-group", merge)})
		}
	case tasks.TypeMoveNamespace:
		storeFlags()
		depthFlag()
		f.StringVar(&targetNS, "target-ns", "", "target namespace (its parent must exist)")
		del := f.Bool("delete-source", true, "delete the emptied source namespaces")
		merge := f.Bool("merge-groups", true, "merge into existing target groups")
		return func() (tasks.Payload, error) {
			return withWait(&tasks.MoveNamespace{Store: store, NS: ns, TargetNS: targetNS, MaxDepth: intPtr("max-depth", &maxDepth),
				DeleteSource: boolPtr("delete-source", del), MergeGroups: boolPtr("merge-groups", merge)})
		}
	case tasks.TypePrune:
		storeFlags()
		groupFlags(false)
		depthFlag()
		keeps := map[string]*int{}
		for _, k := range []string{"keep-last", "keep-hourly", "keep-daily", "keep-weekly", "keep-monthly", "keep-yearly"} {
			keeps[k] = f.Int(k, 0, fmt.Sprintf("%s count (at least 1)", k))
		}
		dry := f.Bool("dry-run", false, "list the marks, change nothing")
		return func() (tasks.Payload, error) {
			p := &tasks.Prune{Store: store, NS: ns, BackupType: typ, BackupID: id, MaxDepth: intPtr("max-depth", &maxDepth), DryRun: *dry}
			p.KeepLast = intPtr("keep-last", keeps["keep-last"])
			p.KeepHourly = intPtr("keep-hourly", keeps["keep-hourly"])
			p.KeepDaily = intPtr("keep-daily", keeps["keep-daily"])
			p.KeepWeekly = intPtr("keep-weekly", keeps["keep-weekly"])
			p.KeepMonthly = intPtr("keep-monthly", keeps["keep-monthly"])
			p.KeepYearly = intPtr("keep-yearly", keeps["keep-yearly"])
			return withWait(p)
		}
	case tasks.TypeVerify:
		storeFlags()
		groupFlags(false)
		depthFlag()
		snap := f.String("snapshot", "", "one snapshot's time (with --backup-type/--backup-id)")
		ignore := f.Bool("ignore-verified", true, "skip snapshots already verified (see --outdated-after)")
		outdated := f.Int("outdated-after", 0, "re-verify snapshots verified more than DAYS ago")
		readOnly := f.Bool("read-only", false, "record no verify state and rename no corrupt chunk (works on a store PBS uses)")
		sample := f.Int("sample", 0, "check about P percent of the chunks (1..100); ceil(100/P) runs rotate over all of them")
		maxDur := f.Duration("max-duration", 0, "stop after D (e.g. 2h); the rest is skipped (exit 4) and the next verify of the scope resumes")
		return func() (tasks.Payload, error) {
			p := &tasks.Verify{Store: store, NS: ns, BackupType: typ, BackupID: id, Snapshot: *snap,
				MaxDepth: intPtr("max-depth", &maxDepth), IgnoreVerified: boolPtr("ignore-verified", ignore), OutdatedAfter: intPtr("outdated-after", outdated),
				ReadOnly: *readOnly, Sample: intPtr("sample", sample)}
			if f.Changed("max-duration") {
				p.MaxDuration = &tasks.MaxDuration{Duration: *maxDur}
			}
			return withWait(p)
		}
	case tasks.TypeSync:
		storeFlags()
		depthFlag()
		srcStore := f.String("source-store", "", "datastore to copy from")
		srcNS := f.String("source-ns", "", "namespace to copy from")
		filters := f.StringArray("group-filter", nil, "group:<type>/<id>, type:<t> or regex:<re>, optionally exclude:-prefixed (repeatable)")
		last := f.Int("transfer-last", 0, "only the newest N snapshots of each group")
		vanished := f.Bool("remove-vanished", false, "remove target snapshots/groups gone from the source")
		resync := f.Bool("resync-corrupt", false, "re-sync snapshots whose verification failed")
		owner := f.String("owner", "", "owner of new target groups (default root@pam)")
		rate := f.Int64("rate", 0, "bandwidth limit in bytes/s (0: none)")
		return func() (tasks.Payload, error) {
			return withWait(&tasks.Sync{SourceStore: *srcStore, SourceNS: *srcNS, Store: store, NS: ns, MaxDepth: intPtr("max-depth", &maxDepth),
				GroupFilter: *filters, TransferLast: intPtr("transfer-last", last), RemoveVanished: *vanished, ResyncCorrupt: *resync, Owner: *owner, Rate: *rate})
		}
	case tasks.TypeGC:
		f.StringVar(&store, "store", "", "datastore")
		dry := f.Bool("dry-run", false, "report what would be removed")
		return func() (tasks.Payload, error) {
			return withWait(&tasks.GC{Store: store, DryRun: *dry})
		}
	}
	panic("unknown task type " + taskType)
}
