// Package prune decides which snapshots of one backup group a prune keeps
// and which it removes.
//
// The selection is a faithful port of Proxmox Backup Server's
// compute_prune_info (pbs-datastore/src/prune.rs): given the same snapshots,
// options and local time zone it yields the same mark for every snapshot, so
// retention settings carried over from PBS behave exactly as users expect.
// The package is pure: it never touches a datastore.
package prune

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Mark is the verdict for one snapshot. The zero value is not a valid mark;
// Select never returns it.
type Mark int

// Marks, with the same meaning and spelling as PBS's PruneMark.
const (
	// Keep: selected by a keep option (or by "keep everything").
	Keep Mark = iota + 1
	// KeepPartial: the newest snapshot is unfinished and may still be
	// running, so it is spared.
	KeepPartial
	// Remove: not selected; the snapshot is to be deleted.
	Remove
	// Protected: the snapshot is protected and never deleted, whatever the
	// options say.
	Protected
)

// String returns the name PBS prints for the mark.
func (m Mark) String() string {
	switch m {
	case Keep:
		return "keep"
	case KeepPartial:
		return "keep-partial"
	case Remove:
		return "remove"
	case Protected:
		return "protected"
	}
	return "Mark(" + strconv.Itoa(int(m)) + ")"
}

// Keeps reports whether the snapshot survives the prune (PBS's
// PruneMark::keep).
func (m Mark) Keeps() bool {
	return m == Keep || m == KeepPartial || m == Protected
}

// Options holds the retention counts. Zero means the option is unset, which
// is why an explicit 0 has to be rejected before it gets here (see Set):
// PBS would treat keep-last 0 as "keep none of this kind" rather than
// "unset".
type Options struct {
	KeepLast    int // keep-last: the newest N snapshots
	KeepHourly  int // keep-hourly: the newest snapshot of each of the last N hours
	KeepDaily   int // keep-daily: ... of each of the last N days
	KeepWeekly  int // keep-weekly: ... of each of the last N ISO weeks
	KeepMonthly int // keep-monthly: ... of each of the last N months
	KeepYearly  int // keep-yearly: ... of each of the last N years
}

// optionNames are the PBS option names, in the order the rules are applied.
var optionNames = [...]string{
	"keep-last", "keep-hourly", "keep-daily", "keep-weekly", "keep-monthly", "keep-yearly",
}

// counts returns pointers to the fields in optionNames order, so validation,
// Set and String share one table instead of six copies of the same code.
func (o *Options) counts() [len(optionNames)]*int {
	return [...]*int{&o.KeepLast, &o.KeepHourly, &o.KeepDaily, &o.KeepWeekly, &o.KeepMonthly, &o.KeepYearly}
}

// KeepsSomething reports whether any keep option is set. When none is, Select
// keeps every snapshot; callers should warn, as PBS does ("No prune selection
// - keeping all files").
func (o Options) KeepsSomething() bool {
	for _, p := range o.counts() {
		if *p > 0 {
			return true
		}
	}
	return false
}

// Validate rejects negative counts, naming the option and value, e.g.
// "keep-daily -1: must be at least 1". Zero passes because at this level it
// means unset.
func (o Options) Validate() error {
	var errs []error
	for i, p := range o.counts() {
		if *p < 0 {
			errs = append(errs, countError(optionNames[i], *p))
		}
	}
	return errors.Join(errs...)
}

// Set assigns the option with the given PBS name ("keep-last" ...
// "keep-yearly"). It is meant for CLI and API payload layers, which should
// call it only for options the user actually supplied; n must then be at
// least 1, so an explicit 0 is an error instead of silently meaning "unset".
func (o *Options) Set(name string, n int) error {
	i := slices.Index(optionNames[:], name)
	if i < 0 {
		return fmt.Errorf("unknown prune option %q", name)
	}
	if n < 1 {
		return countError(name, n)
	}
	*o.counts()[i] = n
	return nil
}

func countError(name string, n int) error {
	return fmt.Errorf("%s %d: must be at least 1", name, n)
}

// String renders the set options as PBS's command-line flags (its
// cli_options_string), e.g. "--keep-last 3 --keep-daily 7", for task logs.
// It is empty when nothing is set.
func (o Options) String() string {
	var b strings.Builder
	for i, p := range o.counts() {
		if *p > 0 {
			if b.Len() > 0 {
				b.WriteByte(' ')
			}
			fmt.Fprintf(&b, "--%s %d", optionNames[i], *p)
		}
	}
	return b.String()
}

// Snapshot is what the selection needs to know about one snapshot.
type Snapshot struct {
	// Time is the backup time. PBS snapshot times have one-second
	// resolution; keep-last treats times within the same second as the same
	// snapshot time, as PBS's time string would.
	Time time.Time
	// Finished is false while the snapshot has no manifest (still running
	// or aborted).
	Finished bool
	// Protected snapshots are never removed and never count towards a keep
	// option.
	Protected bool
	// ID is opaque to this package, for the caller's own bookkeeping
	// (typically the snapshot path).
	ID string
}

// Decision is the verdict for one snapshot.
type Decision struct {
	Snapshot Snapshot
	Mark     Mark
	// Index is the snapshot's position in the slice passed to Select, so
	// callers can map back without relying on ID.
	Index int
}

// periodFunc maps a snapshot time to the period it falls into for one rule.
// PBS compares strftime strings; equal strings there are equal keys here and
// vice versa, and integers avoid formatting a string per snapshot and rule.
type periodFunc func(t time.Time, loc *time.Location) int64

// The keys pack calendar fields in base 100 (month, day and hour are all
// below 100), which keeps them injective, even for negative years.
var periodFuncs = [len(optionNames)]periodFunc{
	// keep-last: PBS uses the snapshot's time string, i.e. UTC seconds.
	func(t time.Time, _ *time.Location) int64 { return t.Unix() },
	// keep-hourly: "%Y/%m/%d/%H" in local time.
	func(t time.Time, loc *time.Location) int64 {
		t = t.In(loc)
		y, m, d := t.Date()
		return ((int64(y)*100+int64(m))*100+int64(d))*100 + int64(t.Hour())
	},
	// keep-daily: "%Y/%m/%d" in local time.
	func(t time.Time, loc *time.Location) int64 {
		y, m, d := t.In(loc).Date()
		return (int64(y)*100+int64(m))*100 + int64(d)
	},
	// keep-weekly: "%G/%V", the ISO week-year and week, which differs from
	// the calendar year around New Year.
	func(t time.Time, loc *time.Location) int64 {
		y, w := t.In(loc).ISOWeek()
		return int64(y)*100 + int64(w)
	},
	// keep-monthly: "%Y/%m" in local time.
	func(t time.Time, loc *time.Location) int64 {
		y, m, _ := t.In(loc).Date()
		return int64(y)*100 + int64(m)
	},
	// keep-yearly: "%Y" in local time.
	func(t time.Time, loc *time.Location) int64 {
		return int64(t.In(loc).Year())
	},
}

// Select marks every snapshot of one backup group exactly as PBS's
// compute_prune_info would. The result holds one Decision per input
// snapshot, newest first; snapshots with equal times keep their input order.
// Calendar periods are computed in loc, which should be the zone the prune
// runs in (PBS uses the server's local time); nil means time.Local. Select
// does not validate opt: a count below 1 is treated as unset.
func Select(snaps []Snapshot, opt Options, loc *time.Location) []Decision {
	if loc == nil {
		loc = time.Local
	}
	// Sort positions rather than Decisions: ints move without write
	// barriers. Breaking ties by position makes the unstable (and
	// pattern-adaptive) sort stable; PBS's own sort leaves ties arbitrary,
	// but its snapshot times are unique within a group anyway.
	order := make([]int, len(snaps))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		if c := snaps[b].Time.Compare(snaps[a].Time); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	out := make([]Decision, len(snaps))
	for k, i := range order {
		out[k] = Decision{Snapshot: snaps[i], Index: i}
	}

	if !opt.KeepsSomething() {
		// PBS keeps everything rather than running the rules, which would
		// otherwise remove every snapshot.
		for i := range out {
			out[i].Mark = Keep
			if out[i].Snapshot.Protected {
				out[i].Mark = Protected
			}
		}
		return out
	}

	removeIncomplete(out)

	// kept lists the positions marked Keep so far; each rule seeds its
	// "already included" periods from it instead of rescanning all
	// snapshots.
	var kept []int
	for i, p := range opt.counts() {
		if *p > 0 {
			kept = markSelections(out, kept, *p, periodFuncs[i], loc)
		}
	}

	for i := range out {
		switch {
		case out[i].Snapshot.Protected:
			out[i].Mark = Protected
		case out[i].Mark == 0:
			out[i].Mark = Remove
		}
	}
	return out
}

// removeIncomplete spares only an unfinished snapshot newer than every
// finished one, which may be a backup still in progress; any other
// unfinished snapshot is an aborted leftover.
func removeIncomplete(ds []Decision) {
	keepUnfinished := true
	for i := range ds {
		if ds[i].Snapshot.Finished {
			keepUnfinished = false
			continue
		}
		if keepUnfinished {
			ds[i].Mark = KeepPartial
		} else {
			ds[i].Mark = Remove
		}
		keepUnfinished = false
	}
}

// markSelections is PBS's mark_selections: walking newest first, keep the
// first snapshot of each new period until keep periods are used up, remove
// later snapshots of a period just kept, and leave everything else unmarked
// for the following rules. Periods already covered by an earlier rule's Keep
// are skipped without being counted, which is how the rules compose. It
// returns kept extended by the positions it marked Keep.
func markSelections(ds []Decision, kept []int, keep int, period periodFunc, loc *time.Location) []int {
	already := make(map[int64]struct{}, len(kept))
	for _, i := range kept {
		already[period(ds[i].Snapshot.Time, loc)] = struct{}{}
	}
	include := make(map[int64]struct{}, min(keep, len(ds)))
	for i := range ds {
		if ds[i].Mark != 0 {
			continue
		}
		if ds[i].Snapshot.Protected {
			// Marked so later rules skip it too; never counted.
			ds[i].Mark = Protected
			continue
		}
		id := period(ds[i].Snapshot.Time, loc)
		if _, ok := already[id]; ok {
			continue
		}
		if _, ok := include[id]; ok {
			ds[i].Mark = Remove
			continue
		}
		if len(include) >= keep {
			// PBS stops the rule here rather than skipping, leaving older
			// snapshots unmarked for the next rule.
			break
		}
		include[id] = struct{}{}
		ds[i].Mark = Keep
		kept = append(kept, i)
	}
	return kept
}
