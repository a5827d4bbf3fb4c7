package datastore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
	_ "time/tzdata" // Europe/Berlin must resolve without system zoneinfo.

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/format"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/lock/flock"
	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/datastore/prune"
)

// These tests run the prune OPERATION on real snapshot directories and
// judge it by what is left on disk, against ptReference: an independent,
// deliberately plain transcription of the rules (DESIGN §4 and PBS's
// documentation) that does not call datastore/prune.

// ptSpec is one snapshot to create.
type ptSpec struct {
	at        time.Time
	finished  bool
	protected bool
}

func ptLoc(t testing.TB, zone string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(zone)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

func ptLocs(t testing.TB) []*time.Location {
	return []*time.Location{time.UTC, ptLoc(t, "Europe/Berlin")}
}

func ptTime(t testing.TB, s string) time.Time {
	t.Helper()
	tm, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return tm.UTC()
}

func ptGroup(t testing.TB, ns, typ, id string) name.Group {
	t.Helper()
	g, err := name.NewGroup(name.MustNamespace(ns), typ, id)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// ptBuild lays the snapshots of g out on disk as DESIGN §2 describes: the
// owner file, per snapshot the manifest blob (finished ones only; an
// unfinished one gets a config blob so that its directory is not empty)
// and .protected. It writes with os directly: the backend's fsync per file
// would make thousands of snapshots slow, and the layout is the same.
func ptBuild(t testing.TB, s *Store, dir string, g name.Group, specs []ptSpec) {
	t.Helper()
	if err := s.CreateNamespace(context.Background(), g.NS); err != nil {
		t.Fatal(err)
	}
	gdir := filepath.Join(dir, filepath.FromSlash(g.Path()))
	if err := os.MkdirAll(gdir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(gdir, "owner"), []byte("root@pam\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	conf, err := format.EncodeBlob([]byte("memory: 512\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, sp := range specs {
		sn := name.NewSnapshot(g, sp.at)
		sdir := filepath.Join(dir, filepath.FromSlash(sn.Path()))
		if err := os.MkdirAll(sdir, 0o755); err != nil {
			t.Fatal(err)
		}
		file, data := "qemu-server.conf.blob", conf
		if sp.finished {
			m := &format.Manifest{BackupType: string(g.Type), BackupID: g.ID, BackupTime: sn.Time.Unix()}
			if data, err = m.Marshal(); err != nil {
				t.Fatal(err)
			}
			file = ManifestName
		}
		if err := os.WriteFile(filepath.Join(sdir, file), data, 0o644); err != nil {
			t.Fatal(err)
		}
		if sp.protected {
			if err := os.WriteFile(filepath.Join(sdir, ProtectedName), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// ptOnDisk lists the snapshot directories of g left on disk, oldest first.
func ptOnDisk(t testing.TB, dir string, g name.Group) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, filepath.FromSlash(g.Path())))
	if errors.Is(err, os.ErrNotExist) {
		return []string{}
	}
	if err != nil {
		t.Fatal(err)
	}
	out := []string{}
	for _, e := range ents {
		if _, err := name.ParseTime(e.Name()); e.IsDir() && err == nil {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

// ptReference marks snapshots by the rules, written out plainly: newest
// first; the newest snapshot, if unfinished, is keep-partial and every
// other unfinished one remove; then the rules in the order last, hourly,
// daily, weekly, monthly, yearly, each keying periods with strftime-like
// strings in loc; a rule skips marked snapshots, marks protected ones
// protected, skips periods an earlier rule kept, removes later snapshots
// of a period it already kept and stops once it kept its count; whatever
// stays unmarked is removed and protected snapshots are protected in the
// end whatever else they got. No option at all keeps everything.
func ptReference(specs []ptSpec, opt prune.Options, loc *time.Location) map[string]string {
	order := slices.Clone(specs)
	sort.Slice(order, func(i, j int) bool { return order[i].at.After(order[j].at) })
	key := func(sp ptSpec) string { return sp.at.UTC().Format(name.TimeLayout) }
	mark := map[string]string{}
	rules := []struct {
		n      int
		period func(time.Time) string
	}{
		{opt.KeepLast, func(t time.Time) string { return t.UTC().Format(time.RFC3339) }},
		{opt.KeepHourly, func(t time.Time) string { return t.In(loc).Format("2006/01/02/15") }},
		{opt.KeepDaily, func(t time.Time) string { return t.In(loc).Format("2006/01/02") }},
		{opt.KeepWeekly, func(t time.Time) string {
			y, w := t.In(loc).ISOWeek()
			return fmt.Sprintf("%04d/%02d", y, w)
		}},
		{opt.KeepMonthly, func(t time.Time) string { return t.In(loc).Format("2006/01") }},
		{opt.KeepYearly, func(t time.Time) string { return t.In(loc).Format("2006") }},
	}
	some := false
	for _, r := range rules {
		some = some || r.n > 0
	}
	if !some {
		for _, sp := range order {
			mark[key(sp)] = "keep"
			if sp.protected {
				mark[key(sp)] = "protected"
			}
		}
		return mark
	}
	for i, sp := range order {
		if sp.finished {
			continue
		}
		// Only the very newest may still be running.
		if i == 0 {
			mark[key(sp)] = "keep-partial"
		} else {
			mark[key(sp)] = "remove"
		}
	}
	for _, r := range rules {
		if r.n <= 0 {
			continue
		}
		already := map[string]bool{}
		for _, sp := range order {
			if mark[key(sp)] == "keep" {
				already[r.period(sp.at)] = true
			}
		}
		kept := map[string]bool{}
		for _, sp := range order {
			if mark[key(sp)] != "" {
				continue
			}
			if sp.protected {
				mark[key(sp)] = "protected"
				continue
			}
			p := r.period(sp.at)
			if already[p] {
				continue
			}
			if kept[p] {
				mark[key(sp)] = "remove"
				continue
			}
			if len(kept) == r.n {
				break
			}
			kept[p] = true
			mark[key(sp)] = "keep"
		}
	}
	for _, sp := range order {
		switch {
		case sp.protected:
			mark[key(sp)] = "protected"
		case mark[key(sp)] == "":
			mark[key(sp)] = "remove"
		}
	}
	return mark
}

// ptSurvivors is what must stay on disk, oldest first.
func ptSurvivors(marks map[string]string) []string {
	out := []string{}
	for k, m := range marks {
		if m != "remove" {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// ptDecisions maps "ns:type/id/time" to the mark the operation reported,
// failing on duplicates.
func ptDecisions(t testing.TB, res *PruneResult) map[string]PruneDecision {
	t.Helper()
	out := map[string]PruneDecision{}
	for _, d := range res.Decisions {
		k := d.NS + ":" + d.Snapshot
		if _, dup := out[k]; dup {
			t.Errorf("snapshot %s decided twice", k)
		}
		out[k] = d
	}
	return out
}

// ptCheckGroup compares disk and decisions of one group with the reference.
func ptCheckGroup(t *testing.T, dir string, g name.Group, specs []ptSpec, want map[string]string, res *PruneResult, dryRun bool) {
	t.Helper()
	decided := ptDecisions(t, res)
	for _, sp := range specs {
		ts := sp.at.UTC().Format(name.TimeLayout)
		d, ok := decided[g.NS.String()+":"+g.String()+"/"+ts]
		if !ok {
			t.Errorf("%s/%s: no decision reported", g, ts)
			continue
		}
		if d.Mark != want[ts] {
			t.Errorf("%s/%s: mark %s, reference says %s", g, ts, d.Mark, want[ts])
		}
		if d.Removed != (want[ts] == "remove" && !dryRun) {
			t.Errorf("%s/%s: removed=%v with mark %s (dry-run %v)", g, ts, d.Removed, d.Mark, dryRun)
		}
	}
	all := make([]string, 0, len(specs))
	for _, sp := range specs {
		all = append(all, sp.at.UTC().Format(name.TimeLayout))
	}
	sort.Strings(all)
	wantDisk := ptSurvivors(want)
	if dryRun {
		wantDisk = all
	}
	if got := ptOnDisk(t, dir, g); !slices.Equal(got, wantDisk) {
		t.Errorf("group %s in %q on disk:\n got  %v\n want %v", g, g.NS, got, wantDisk)
	}
}

func ptFinished(t testing.TB, times ...string) []ptSpec {
	t.Helper()
	out := make([]ptSpec, len(times))
	for i, s := range times {
		out[i] = ptSpec{at: ptTime(t, s), finished: true}
	}
	return out
}

// TestPruneOpPBSExamples replays the cases of PBS's own prune tests
// (pbs-datastore/tests/prune.rs) through the operation, in UTC and in
// Europe/Berlin: the snapshots left on disk must be PBS's expected lists
// and agree with the reference.
func TestPruneOpPBSExamples(t *testing.T) {
	simple := []string{"2019-12-02T11:59:15Z", "2019-12-03T11:59:15Z", "2019-12-04T11:59:15Z", "2019-12-04T12:59:15Z"}
	simple2 := []string{
		"2018-11-15T11:59:15Z", "2019-11-15T11:59:15Z", "2019-11-21T11:59:15Z",
		"2019-11-22T11:59:15Z", "2019-11-29T11:59:15Z", "2019-12-01T11:59:15Z",
		"2019-12-02T11:59:15Z", "2019-12-03T11:59:15Z", "2019-12-04T11:59:15Z",
	}
	hourly := []string{
		"2019-11-15T09:39:15Z", "2019-11-15T10:49:15Z", "2019-11-15T10:59:15Z",
		"2019-11-15T11:39:15Z", "2019-11-15T11:49:15Z", "2019-11-15T11:59:15Z",
	}
	cases := []struct {
		list []string
		opt  prune.Options
		// kept is PBS's expected list of survivors, oldest first.
		kept []string
	}{
		{hourly, prune.Options{KeepHourly: 3}, []string{"2019-11-15T09:39:15Z", "2019-11-15T10:59:15Z", "2019-11-15T11:59:15Z"}},
		{hourly, prune.Options{KeepHourly: 2}, []string{"2019-11-15T10:59:15Z", "2019-11-15T11:59:15Z"}},
		{simple2, prune.Options{KeepDaily: 1}, []string{"2019-12-04T11:59:15Z"}},
		{simple2, prune.Options{KeepLast: 1, KeepDaily: 1}, []string{"2019-12-03T11:59:15Z", "2019-12-04T11:59:15Z"}},
		{simple2, prune.Options{KeepDaily: 1, KeepWeekly: 1}, []string{"2019-12-01T11:59:15Z", "2019-12-04T11:59:15Z"}},
		{simple2, prune.Options{KeepDaily: 1, KeepWeekly: 1, KeepMonthly: 1}, []string{"2019-11-22T11:59:15Z", "2019-12-01T11:59:15Z", "2019-12-04T11:59:15Z"}},
		{simple2, prune.Options{KeepMonthly: 1, KeepYearly: 1}, []string{"2018-11-15T11:59:15Z", "2019-12-04T11:59:15Z"}},
		{simple, prune.Options{KeepLast: 4}, simple},
		{simple, prune.Options{KeepLast: 3}, simple[1:]},
		{simple, prune.Options{KeepLast: 2}, simple[2:]},
		{simple, prune.Options{KeepLast: 1}, simple[3:]},
		{simple, prune.Options{KeepLast: 2, KeepDaily: 2}, simple},
		{simple, prune.Options{KeepDaily: 3}, []string{"2019-12-02T11:59:15Z", "2019-12-03T11:59:15Z", "2019-12-04T12:59:15Z"}},
		{simple, prune.Options{KeepDaily: 2}, []string{"2019-12-03T11:59:15Z", "2019-12-04T12:59:15Z"}},
		{simple, prune.Options{KeepWeekly: 5}, simple[3:]},
		{simple, prune.Options{KeepDaily: 1, KeepWeekly: 5}, simple[3:]},
		{simple, prune.Options{KeepMonthly: 6}, simple[3:]},
		{simple, prune.Options{KeepYearly: 7}, simple[3:]},
		{simple, prune.Options{KeepWeekly: 5, KeepMonthly: 6, KeepYearly: 7}, simple[3:]},
	}
	ctx := context.Background()
	for _, loc := range ptLocs(t) {
		t.Run(loc.String(), func(t *testing.T) {
			env := NewTestEnv(t, TestFlock(-1))
			s, dir := env.Store, env.Dir
			for i, c := range cases {
				g := ptGroup(t, "", "host", fmt.Sprintf("elsa%d", i))
				specs := ptFinished(t, c.list...)
				ptBuild(t, s, dir, g, specs)
				res, err := s.Prune(ctx, PruneRequest{Scope: Scope{Group: &g, MaxDepth: -1}, Keep: c.opt, Location: loc}, nil)
				if err != nil {
					t.Fatalf("case %d (%s): %v", i, c.opt, err)
				}
				if got := ptOnDisk(t, dir, g); !slices.Equal(got, c.kept) {
					t.Errorf("case %d (%s): left on disk %v, PBS keeps %v", i, c.opt, got, c.kept)
				}
				ptCheckGroup(t, dir, g, specs, ptReference(specs, c.opt, loc), res, false)
			}
		})
	}
}

// ptTimeline is a random group history: mostly daily-ish backups with
// bursts and long gaps, some protected and some unfinished snapshots.
func ptTimeline(r *rand.Rand) []ptSpec {
	n := 1 + r.IntN(60)
	at := time.Date(2023, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(r.Int64N(int64(3 * 365 * 24 * time.Hour)))).Truncate(time.Second)
	out := make([]ptSpec, 0, n)
	for i := 0; i < n; i++ {
		var gap time.Duration
		switch x := r.IntN(100); {
		case x < 45:
			gap = time.Duration(10+r.IntN(170)) * time.Minute
		case x < 85:
			gap = time.Duration(3+r.IntN(45)) * time.Hour
		default:
			gap = time.Duration(2+r.IntN(40)) * 24 * time.Hour
		}
		at = at.Add(gap + time.Duration(r.IntN(3600))*time.Second)
		out = append(out, ptSpec{at: at, finished: r.IntN(100) >= 6, protected: r.IntN(100) < 8})
	}
	if r.IntN(5) == 0 {
		out[len(out)-1].finished = false // a backup still running
	}
	return out
}

// ptDSTTimeline puts snapshots every 20 minutes across both Berlin DST
// switches of 2024, where hourly and daily periods differ from UTC's.
func ptDSTTimeline() []ptSpec {
	var out []ptSpec
	for _, day := range []time.Time{
		time.Date(2024, 3, 30, 21, 0, 0, 0, time.UTC),
		time.Date(2024, 10, 26, 21, 0, 0, 0, time.UTC),
	} {
		for i := 0; i < 24; i++ {
			out = append(out, ptSpec{at: day.Add(time.Duration(i) * 20 * time.Minute), finished: true})
		}
	}
	return out
}

func ptRandomOptions(r *rand.Rand) prune.Options {
	var o prune.Options
	set := func(p *int, maxN int) {
		if r.IntN(100) < 45 {
			*p = 1 + r.IntN(maxN)
		}
	}
	set(&o.KeepLast, 12)
	set(&o.KeepHourly, 10)
	set(&o.KeepDaily, 8)
	set(&o.KeepWeekly, 6)
	set(&o.KeepMonthly, 6)
	set(&o.KeepYearly, 3)
	return o
}

// TestPruneOpRandomTimelines prunes seeded random histories in several
// namespaces at once (store root, recursive) and checks every group on disk
// against the reference, in UTC and Europe/Berlin.
func TestPruneOpRandomTimelines(t *testing.T) {
	ctx := context.Background()
	for seed := uint64(1); seed <= 16; seed++ {
		for _, loc := range ptLocs(t) {
			t.Run(fmt.Sprintf("seed%d/%s", seed, loc), func(t *testing.T) {
				r := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
				opt := ptRandomOptions(r)
				env := NewTestEnv(t, TestFlock(-1))
				s, dir := env.Store, env.Dir
				groups := []name.Group{
					ptGroup(t, "", "vm", "100"),
					ptGroup(t, "a", "ct", "200"),
					ptGroup(t, "a/b", "host", "web"),
					ptGroup(t, "dst", "vm", "dst"),
				}
				specs := [][]ptSpec{ptTimeline(r), ptTimeline(r), ptTimeline(r), ptDSTTimeline()}
				for i, g := range groups {
					ptBuild(t, s, dir, g, specs[i])
				}
				res, err := s.Prune(ctx, PruneRequest{Scope: Scope{MaxDepth: -1}, Keep: opt, Location: loc}, nil)
				if err != nil {
					t.Fatalf("options %q: %v", opt, err)
				}
				removed := 0
				for i, g := range groups {
					want := ptReference(specs[i], opt, loc)
					ptCheckGroup(t, dir, g, specs[i], want, res, false)
					for _, m := range want {
						if m == "remove" {
							removed++
						}
					}
				}
				if res.Removed != removed || res.Groups != len(groups) {
					t.Errorf("options %q: result says %d removed in %d groups, want %d in %d", opt, res.Removed, res.Groups, removed, len(groups))
				}
				if t.Failed() {
					t.Logf("options: %q", opt)
				}
			})
		}
	}
}

// TestPruneOpDryRun: nothing on disk changes, and every snapshot is listed
// once with the mark a real run would apply.
func TestPruneOpDryRun(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(42, 7))
	env := NewTestEnv(t, TestFlock(-1))
	s, dir := env.Store, env.Dir
	groups := []name.Group{ptGroup(t, "", "vm", "1"), ptGroup(t, "x", "ct", "2"), ptGroup(t, "x/y", "host", "h")}
	specs := make([][]ptSpec, len(groups))
	total := 0
	for i, g := range groups {
		specs[i] = ptTimeline(r)
		specs[i][0].protected = true
		total += len(specs[i])
		ptBuild(t, s, dir, g, specs[i])
	}
	opt := prune.Options{KeepLast: 2, KeepDaily: 3, KeepWeekly: 2}
	before := TestDirTree(t, dir)
	res, err := s.Prune(ctx, PruneRequest{Scope: Scope{MaxDepth: -1}, Keep: opt, DryRun: true, Location: time.UTC}, nil)
	if err != nil {
		t.Fatal(err)
	}
	TestSameTree(t, "a dry run", before, TestDirTree(t, dir))
	if !res.DryRun || res.Removed != 0 {
		t.Errorf("dry run result: dry-run=%v removed=%d", res.DryRun, res.Removed)
	}
	if len(res.Decisions) != total {
		t.Errorf("%d decisions for %d snapshots", len(res.Decisions), total)
	}
	wantRemove := 0
	for i, g := range groups {
		want := ptReference(specs[i], opt, time.UTC)
		ptCheckGroup(t, dir, g, specs[i], want, res, true)
		for _, m := range want {
			if m == "remove" {
				wantRemove++
			}
		}
	}
	marked := 0
	for _, d := range res.Decisions {
		if d.Mark == "remove" {
			marked++
		}
	}
	if marked != wantRemove || wantRemove == 0 {
		t.Errorf("dry run marks %d snapshots remove, reference %d (need some for the test to mean anything)", marked, wantRemove)
	}
}

// TestPruneOpRejectsBadKeep: a keep option below 1 is refused before
// anything happens (an explicit 0 is caught where options are parsed:
// prune.Options.Set; here 0 means unset and negatives must fail).
func TestPruneOpRejectsBadKeep(t *testing.T) {
	ctx := context.Background()
	env := NewTestEnv(t, TestFlock(-1))
	s, dir := env.Store, env.Dir
	g := ptGroup(t, "", "vm", "1")
	ptBuild(t, s, dir, g, ptFinished(t, "2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z"))
	before := TestDirTree(t, dir)
	for i, opt := range []string{"keep-last", "keep-hourly", "keep-daily", "keep-weekly", "keep-monthly", "keep-yearly"} {
		var keep prune.Options
		if i != 0 {
			keep.KeepLast = 1 // a valid option beside it must not rescue it
		}
		counts := []*int{&keep.KeepLast, &keep.KeepHourly, &keep.KeepDaily, &keep.KeepWeekly, &keep.KeepMonthly, &keep.KeepYearly}
		*counts[i] = -1
		res, err := s.Prune(ctx, PruneRequest{Scope: Scope{MaxDepth: -1}, Keep: keep}, nil)
		if !errors.Is(err, name.ErrInvalid) || res != nil {
			t.Errorf("%s -1: got %v, %v; want name.ErrInvalid and no result", opt, res, err)
		} else if !strings.Contains(err.Error(), opt) {
			t.Errorf("%s -1: error %q does not name the option", opt, err)
		}
		if err := keep.Set(opt, 0); err == nil {
			t.Errorf("%s 0 accepted by Set", opt)
		}
	}
	sn := name.NewSnapshot(g, ptTime(t, "2024-01-01T00:00:00Z"))
	if _, err := s.Prune(ctx, PruneRequest{Scope: Scope{Group: &g, Snapshot: &sn}, Keep: prune.Options{KeepLast: 1}}, nil); !errors.Is(err, name.ErrInvalid) {
		t.Errorf("prune of one snapshot: %v, want name.ErrInvalid", err)
	}
	TestSameTree(t, "the refused prunes", before, TestDirTree(t, dir))
}

// ptRecorder wraps a backend, records removals in order and can run a
// hook before them or before a listing.
type ptRecorder struct {
	backend.Backend
	mu          sync.Mutex
	ops         []string
	beforeRmAll func(dir string)
	beforeList  func(dir string)
}

func (r *ptRecorder) Remove(ctx context.Context, name string) error {
	r.mu.Lock()
	r.ops = append(r.ops, "rm "+name)
	r.mu.Unlock()
	return r.Backend.Remove(ctx, name)
}

func (r *ptRecorder) RemoveAll(ctx context.Context, dir string) error {
	r.mu.Lock()
	r.ops = append(r.ops, "rmall "+dir)
	hook := r.beforeRmAll
	r.mu.Unlock()
	if hook != nil {
		hook(dir)
	}
	return r.Backend.RemoveAll(ctx, dir)
}

func (r *ptRecorder) List(ctx context.Context, dir string) ([]backend.FileInfo, error) {
	r.mu.Lock()
	hook := r.beforeList
	r.mu.Unlock()
	if hook != nil {
		hook(dir)
	}
	return r.Backend.List(ctx, dir)
}

// ptRecorded opens a second Store on the same directory and locks whose
// backend records what it does.
func ptRecorded(t testing.TB, s *Store) (*Store, *ptRecorder) {
	t.Helper()
	rec := &ptRecorder{Backend: s.Backend()}
	rs, err := Open(s.Name(), rec, Options{Locker: s.Locker()})
	if err != nil {
		t.Fatal(err)
	}
	return rs, rec
}

// TestPruneOpProtected: protected snapshots survive every rule, also when
// they become protected after the marks were computed.
func TestPruneOpProtected(t *testing.T) {
	ctx := context.Background()
	env := NewTestEnv(t, TestFlock(-1))
	s, dir := env.Store, env.Dir
	g := ptGroup(t, "", "vm", "1")
	var specs []ptSpec
	for d := 1; d <= 10; d++ {
		specs = append(specs, ptSpec{at: time.Date(2024, 5, d, 3, 0, 0, 0, time.UTC), finished: true, protected: d == 1 || d == 5})
	}
	specs[0].finished = false // protected and unfinished (would be removed)
	ptBuild(t, s, dir, g, specs)
	rs, rec := ptRecorded(t, s)
	// While the first removal runs, protect another snapshot marked remove.
	late := name.NewSnapshot(g, specs[6].at)
	var once sync.Once
	rec.beforeRmAll = func(string) {
		once.Do(func() {
			if err := os.WriteFile(filepath.Join(dir, filepath.FromSlash(late.File(ProtectedName))), nil, 0o644); err != nil {
				t.Error(err)
			}
		})
	}
	opt := prune.Options{KeepLast: 2}
	res, err := rs.Prune(ctx, PruneRequest{Scope: Scope{Group: &g}, Keep: opt, Location: time.UTC}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := ptReference(specs, opt, time.UTC)
	if want[late.TimeString()] != "remove" {
		t.Fatalf("test setup: %s should be marked remove", late)
	}
	want[late.TimeString()] = "protected-late"
	got := ptOnDisk(t, dir, g)
	if wantDisk := ptSurvivors(want); !slices.Equal(got, wantDisk) {
		t.Errorf("on disk %v, want %v", got, wantDisk)
	}
	for _, sp := range specs[:1] {
		if !slices.Contains(got, sp.at.UTC().Format(name.TimeLayout)) {
			t.Errorf("protected unfinished snapshot %s removed", sp.at)
		}
	}
	d := ptDecisions(t, res)[":"+late.String()]
	if d.Mark != "remove" || d.Removed {
		t.Errorf("late-protected snapshot decision %+v: want mark remove, not removed", d)
	}
	if res.Protected != 2 {
		t.Errorf("protected count %d, want 2", res.Protected)
	}
}

// TestPruneOpUnfinished: only the newest snapshot may be a running backup
// (keep-partial); older unfinished ones go, even where keep-last would
// cover them. Without any option everything stays, with a warning.
func TestPruneOpUnfinished(t *testing.T) {
	ctx := context.Background()
	env := NewTestEnv(t, TestFlock(-1))
	s, dir := env.Store, env.Dir
	at := func(d int) time.Time { return time.Date(2024, 6, d, 12, 0, 0, 0, time.UTC) }
	cases := []struct {
		g     name.Group
		specs []ptSpec
		opt   prune.Options
		kept  []int // days left on disk
	}{
		{ptGroup(t, "", "vm", "running"), []ptSpec{{at(1), true, false}, {at(2), true, false}, {at(3), false, false}},
			prune.Options{KeepLast: 1}, []int{2, 3}},
		{ptGroup(t, "", "vm", "aborted"), []ptSpec{{at(1), true, false}, {at(2), false, false}, {at(3), true, false}},
			prune.Options{KeepLast: 5}, []int{1, 3}},
		{ptGroup(t, "", "vm", "allunfinished"), []ptSpec{{at(1), false, false}, {at(2), false, false}},
			prune.Options{KeepLast: 5}, []int{2}},
		{ptGroup(t, "", "vm", "keepall"), []ptSpec{{at(1), false, false}, {at(2), true, false}, {at(3), false, false}},
			prune.Options{}, []int{1, 2, 3}},
	}
	for _, c := range cases {
		ptBuild(t, s, dir, c.g, c.specs)
		res, err := s.Prune(ctx, PruneRequest{Scope: Scope{Group: &c.g}, Keep: c.opt, Location: time.UTC}, nil)
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for _, d := range c.kept {
			want = append(want, at(d).Format(name.TimeLayout))
		}
		if got := ptOnDisk(t, dir, c.g); !slices.Equal(got, want) {
			t.Errorf("%s: on disk %v, want %v", c.g, got, want)
		}
		ptCheckGroup(t, dir, c.g, c.specs, ptReference(c.specs, c.opt, time.UTC), res, false)
		if warned := len(res.Warnings) > 0; warned != !c.opt.KeepsSomething() {
			t.Errorf("%s: warnings %q", c.g, res.Warnings)
		}
	}
}

// ptDaily builds n daily snapshots of g.
func ptDaily(t testing.TB, s *Store, dir string, g name.Group, n int) []ptSpec {
	t.Helper()
	var specs []ptSpec
	for d := 0; d < n; d++ {
		specs = append(specs, ptSpec{at: time.Date(2024, 2, 1+d, 22, 30, 0, 0, time.UTC), finished: true})
	}
	ptBuild(t, s, dir, g, specs)
	return specs
}

// TestPruneOpScope: the store root recursively, a namespace down to a
// depth, one group; nothing outside the scope is touched.
func TestPruneOpScope(t *testing.T) {
	ctx := context.Background()
	layout := []name.Group{}
	for _, x := range [][2]string{{"", "1"}, {"a", "2"}, {"a/b", "3"}, {"a/b/c", "4"}, {"z", "5"}, {"a/b", "6"}} {
		layout = append(layout, ptGroup(t, x[0], "vm", x[1]))
	}
	a3 := layout[2]
	cases := []struct {
		name   string
		scope  Scope
		pruned []bool // per layout group
	}{
		{"root recursive", Scope{MaxDepth: -1}, []bool{true, true, true, true, true, true}},
		{"root depth 0", Scope{MaxDepth: 0}, []bool{true, false, false, false, false, false}},
		{"a depth 1", Scope{NS: name.MustNamespace("a"), MaxDepth: 1}, []bool{false, true, true, false, false, true}},
		{"a recursive", Scope{NS: name.MustNamespace("a"), MaxDepth: -1}, []bool{false, true, true, true, false, true}},
		{"one group", Scope{NS: a3.NS, Group: &a3}, []bool{false, false, true, false, false, false}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := NewTestEnv(t, TestFlock(-1))
			s, dir := env.Store, env.Dir
			for _, g := range layout {
				ptDaily(t, s, dir, g, 5)
			}
			res, err := s.Prune(ctx, PruneRequest{Scope: c.scope, Keep: prune.Options{KeepLast: 1}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for i, g := range layout {
				left := len(ptOnDisk(t, dir, g))
				want := 5
				if c.pruned[i] {
					want = 1
					n++
				}
				if left != want {
					t.Errorf("group %s in %q: %d snapshots left, want %d", g, g.NS, left, want)
				}
			}
			if res.Groups != n {
				t.Errorf("result counts %d groups, want %d", res.Groups, n)
			}
		})
	}
	s := TestStore(t, TestFlock(-1))
	missing := ptGroup(t, "", "vm", "404")
	if _, err := s.Prune(ctx, PruneRequest{Scope: Scope{Group: &missing}, Keep: prune.Options{KeepLast: 1}}, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("prune of a missing group: %v, want ErrNotFound", err)
	}
}

// ptOtherLocker is a second locker on the same flock dir: another process,
// as far as the locks can tell.
func ptOtherLocker(t testing.TB, lockDir string) *lock.Locker {
	t.Helper()
	lb, err := flock.New(flock.Options{Dir: lockDir})
	if err != nil {
		t.Fatal(err)
	}
	return lock.New(lb, lock.Options{Holder: lock.Holder{TaskID: "other-task"}}).WithWait(0)
}

// TestPruneOpBusyGroup: a locked group is set aside, retried once at the
// end and reported as skipped (untouched); the others are pruned. A group
// freed before the retry is pruned after all.
func TestPruneOpBusyGroup(t *testing.T) {
	ctx := context.Background()
	for _, freed := range []bool{false, true} {
		t.Run(fmt.Sprintf("freed=%v", freed), func(t *testing.T) {
			env := NewTestEnv(t, TestFlock(-1))
			s, dir, lockDir := env.Store, env.Dir, env.LockDir
			busy, other := ptGroup(t, "n", "vm", "1"), ptGroup(t, "n", "vm", "2")
			ptDaily(t, s, dir, busy, 4)
			ptDaily(t, s, dir, other, 4)
			guard, err := ptOtherLocker(t, lockDir).Group(ctx, s.Name(), busy)
			if err != nil {
				t.Fatal(err)
			}
			defer guard.Release()
			rs, rec := ptRecorded(t, s)
			if freed {
				rec.beforeList = func(dir string) {
					if dir == other.Path() {
						_ = guard.Release()
					}
				}
			}
			res, err := rs.Prune(ctx, PruneRequest{Scope: Scope{NS: busy.NS, MaxDepth: -1}, Keep: prune.Options{KeepLast: 1}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if n := len(ptOnDisk(t, dir, other)); n != 1 {
				t.Errorf("free group: %d snapshots left, want 1", n)
			}
			left := len(ptOnDisk(t, dir, busy))
			if freed {
				if left != 1 || len(res.Skipped) != 0 || res.Outcome() != nil {
					t.Errorf("group freed before the retry: %d left, skipped %v, outcome %v", left, res.Skipped, res.Outcome())
				}
				return
			}
			if left != 4 {
				t.Errorf("busy group: %d snapshots left, want all 4", left)
			}
			if len(res.Skipped) != 1 || res.Skipped[0].Item != "n:vm/1" || !strings.Contains(res.Skipped[0].Reason, "busy") {
				t.Errorf("skipped %+v, want n:vm/1 busy", res.Skipped)
			}
			if err := res.Outcome(); !errors.Is(err, ErrSkipped) {
				t.Errorf("outcome %v, want ErrSkipped", err)
			}
		})
	}
}

// TestPruneOpBusySnapshot: a snapshot marked remove but locked (e.g. being
// verified) stays and is reported skipped; the rest is removed.
func TestPruneOpBusySnapshot(t *testing.T) {
	ctx := context.Background()
	env := NewTestEnv(t, TestFlock(-1))
	s, dir, lockDir := env.Store, env.Dir, env.LockDir
	g := ptGroup(t, "", "ct", "7")
	specs := ptDaily(t, s, dir, g, 6)
	held := name.NewSnapshot(g, specs[2].at)
	guard, err := ptOtherLocker(t, lockDir).Snapshot(ctx, s.Name(), held, lock.Shared)
	if err != nil {
		t.Fatal(err)
	}
	defer guard.Release()
	res, err := s.Prune(ctx, PruneRequest{Scope: Scope{Group: &g}, Keep: prune.Options{KeepLast: 2}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{specs[2].at.Format(name.TimeLayout), specs[4].at.Format(name.TimeLayout), specs[5].at.Format(name.TimeLayout)}
	if got := ptOnDisk(t, dir, g); !slices.Equal(got, want) {
		t.Errorf("on disk %v, want %v", got, want)
	}
	if len(res.Skipped) != 1 || res.Skipped[0].Item != ":"+held.String() {
		t.Errorf("skipped %+v, want %s", res.Skipped, held)
	}
	if res.Removed != 3 || !errors.Is(res.Outcome(), ErrSkipped) {
		t.Errorf("removed %d (want 3), outcome %v", res.Removed, res.Outcome())
	}
}

// TestPruneOpRemovalOrder: removals go oldest first within each group,
// each deleting the manifest before the directory.
func TestPruneOpRemovalOrder(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(3, 4))
	env := NewTestEnv(t, TestFlock(-1))
	s, dir := env.Store, env.Dir
	groups := []name.Group{ptGroup(t, "", "vm", "1"), ptGroup(t, "", "vm", "2")}
	for _, g := range groups {
		specs := ptTimeline(r)
		for len(specs) < 20 {
			specs = ptTimeline(r)
		}
		ptBuild(t, s, dir, g, specs)
	}
	rs, rec := ptRecorded(t, s)
	res, err := rs.Prune(ctx, PruneRequest{Scope: Scope{MaxDepth: -1}, Keep: prune.Options{KeepLast: 3, KeepWeekly: 2}, Location: time.UTC}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for i, op := range rec.ops {
		d, ok := strings.CutPrefix(op, "rmall ")
		if !ok {
			continue
		}
		dirs = append(dirs, d)
		if i == 0 || rec.ops[i-1] != "rm "+d+"/"+ManifestName {
			t.Errorf("%s removed without deleting its manifest first", d)
		}
	}
	if len(dirs) != res.Removed || len(dirs) < 10 {
		t.Fatalf("%d directory removals, result says %d (want at least 10 for the test to mean anything)", len(dirs), res.Removed)
	}
	if !slices.IsSorted(dirs) {
		// Group paths sort by group, times within a group chronologically.
		t.Errorf("removal order not oldest first per group:\n%s", strings.Join(dirs, "\n"))
	}
}
