package prune

import (
	"fmt"
	"math/rand"
	"slices"
	"testing"
	"time"
)

// reference is a deliberately naive restatement of PBS's rules, written
// independently of Select: insertion sort, string period IDs built with
// time.Format exactly like PBS's strftime patterns, and marks kept in a map
// by input index. It returns "index mark" per snapshot, newest first.
func reference(in []Snapshot, opt Options, loc *time.Location) []string {
	var order []int
	for i := range in {
		pos := len(order)
		for pos > 0 && in[order[pos-1]].Time.Before(in[i].Time) {
			pos--
		}
		order = slices.Insert(order, pos, i)
	}

	marks := map[int]string{}
	anySet := opt.KeepLast > 0 || opt.KeepHourly > 0 || opt.KeepDaily > 0 ||
		opt.KeepWeekly > 0 || opt.KeepMonthly > 0 || opt.KeepYearly > 0
	if !anySet {
		for _, i := range order {
			marks[i] = "keep"
		}
	} else {
		keepUnfinished := true
		for _, i := range order {
			if in[i].Finished {
				keepUnfinished = false
			} else {
				if keepUnfinished {
					marks[i] = "keep-partial"
				} else {
					marks[i] = "remove"
				}
				keepUnfinished = false
			}
		}

		rules := []struct {
			keep int
			id   func(t time.Time) string
		}{
			{opt.KeepLast, func(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05Z") }},
			{opt.KeepHourly, func(t time.Time) string { return t.In(loc).Format("2006/01/02/15") }},
			{opt.KeepDaily, func(t time.Time) string { return t.In(loc).Format("2006/01/02") }},
			{opt.KeepWeekly, func(t time.Time) string {
				y, w := t.In(loc).ISOWeek()
				return fmt.Sprintf("%d/%02d", y, w)
			}},
			{opt.KeepMonthly, func(t time.Time) string { return t.In(loc).Format("2006/01") }},
			{opt.KeepYearly, func(t time.Time) string { return t.In(loc).Format("2006") }},
		}
		for _, r := range rules {
			if r.keep <= 0 {
				continue
			}
			already := map[string]bool{}
			for _, i := range order {
				if marks[i] == "keep" {
					already[r.id(in[i].Time)] = true
				}
			}
			include := map[string]bool{}
			for _, i := range order {
				if marks[i] != "" {
					continue
				}
				if in[i].Protected {
					marks[i] = "protected"
					continue
				}
				id := r.id(in[i].Time)
				if already[id] {
					continue
				}
				if include[id] {
					marks[i] = "remove"
					continue
				}
				if len(include) >= r.keep {
					break
				}
				include[id] = true
				marks[i] = "keep"
			}
		}
	}

	var out []string
	for _, i := range order {
		m := marks[i]
		if in[i].Protected {
			m = "protected"
		} else if m == "" {
			m = "remove"
		}
		out = append(out, fmt.Sprintf("%d %s", i, m))
	}
	return out
}

// hotspots are instants where period keys are easy to get wrong: DST
// changes (Berlin, Lord Howe's 30-minute shift), ISO and calendar year
// boundaries, Samoa skipping 2011-12-30, and the synthetic timeWarp zone.
var hotspots = []string{
	"2023-10-29T01:00:00Z", "2023-03-26T01:00:00Z", "2024-04-06T15:00:00Z",
	"2020-12-31T23:00:00Z", "2021-01-03T23:30:00Z", "2026-01-01T00:00:00Z",
	"2011-12-30T10:00:00Z", "2019-12-01T11:59:15Z", "2024-05-01T00:00:00Z",
}

var zones = []string{
	"UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "Pacific/Apia",
}

// randomTimeline builds a group of snapshots clustered around a hotspot,
// with steps from exact duplicates to years so every rule sees both
// repeated and fresh periods.
func randomTimeline(t *testing.T, r *rand.Rand) []Snapshot {
	steps := []time.Duration{
		0, time.Second, 17 * time.Minute, 45 * time.Minute, time.Hour, 5 * time.Hour,
		24 * time.Hour, 3 * 24 * time.Hour, 8 * 24 * time.Hour, 31 * 24 * time.Hour, 200 * 24 * time.Hour, 400 * 24 * time.Hour,
	}
	cur := mustTime(t, hotspots[r.Intn(len(hotspots))]).Add(time.Duration(r.Int63n(int64(6*24*time.Hour))) - 3*24*time.Hour)
	n := r.Intn(60)
	out := make([]Snapshot, n)
	for i := range out {
		s := Snapshot{
			Time:      cur,
			Finished:  r.Intn(8) != 0,
			Protected: r.Intn(10) == 0,
			ID:        fmt.Sprint(i),
		}
		if r.Intn(20) == 0 {
			s.Time = s.Time.Add(time.Duration(r.Int63n(int64(time.Second))))
		}
		out[i] = s
		step := steps[r.Intn(len(steps))]
		if step > 0 {
			step += time.Duration(r.Int63n(int64(step)))
		}
		cur = cur.Add(-step)
	}
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

func randomOptions(r *rand.Rand) Options {
	var o Options
	for _, p := range o.counts() {
		if r.Intn(5) < 2 {
			*p = 1 + r.Intn(6)
		}
	}
	return o
}

func TestSelectMatchesReference(t *testing.T) {
	var locs []*time.Location
	for _, z := range zones {
		loc, err := time.LoadLocation(z)
		if err != nil {
			t.Fatal(err)
		}
		locs = append(locs, loc)
	}
	locs = append(locs, timeWarp(t))
	for seed := int64(1); seed <= 800; seed++ {
		r := rand.New(rand.NewSource(seed))
		in := randomTimeline(t, r)
		opt := randomOptions(r)
		loc := locs[r.Intn(len(locs))]

		got := Select(in, opt, loc)
		gotS := make([]string, len(got))
		for i, d := range got {
			gotS[i] = fmt.Sprintf("%d %s", d.Index, d.Mark)
		}
		if want := reference(in, opt, loc); !slices.Equal(gotS, want) {
			t.Fatalf("seed %d, %v in %v:\n got  %q\n want %q", seed, opt, loc, gotS, want)
		}

		keeps := 0
		for _, d := range got {
			if d.Snapshot.Protected && d.Mark != Protected {
				t.Fatalf("seed %d: protected snapshot %s marked %v", seed, d.Snapshot.ID, d.Mark)
			}
			if d.Mark == Keep {
				keeps++
			}
		}
		total := opt.KeepLast + opt.KeepHourly + opt.KeepDaily + opt.KeepWeekly + opt.KeepMonthly + opt.KeepYearly
		if opt.KeepsSomething() && keeps > total {
			t.Fatalf("seed %d: %d kept with %v", seed, keeps, opt)
		}

		// Each rule alone keeps at most its count, one per period.
		for i, p := range opt.counts() {
			if *p == 0 {
				continue
			}
			var single Options
			*single.counts()[i] = *p
			seen := map[int64]bool{}
			for _, d := range Select(in, single, loc) {
				if d.Mark != Keep {
					continue
				}
				id := periodFuncs[i](d.Snapshot.Time, loc)
				if seen[id] {
					t.Fatalf("seed %d: %s keeps two snapshots of one period", seed, optionNames[i])
				}
				seen[id] = true
			}
			if len(seen) > *p {
				t.Fatalf("seed %d: %s %d kept %d", seed, optionNames[i], *p, len(seen))
			}
		}
	}
}

// TestKeepLastKeepsNewest: with only keep-last N over finished, unprotected
// snapshots with distinct times, exactly the newest min(N, len) survive.
func TestKeepLastKeepsNewest(t *testing.T) {
	for seed := int64(1); seed <= 300; seed++ {
		r := rand.New(rand.NewSource(seed))
		n := r.Intn(40)
		base := mustTime(t, "2024-01-01T00:00:00Z")
		used := map[int64]bool{}
		var in []Snapshot
		for len(in) < n {
			sec := r.Int63n(3 * 365 * 24 * 3600)
			if used[sec] {
				continue
			}
			used[sec] = true
			in = append(in, Snapshot{Time: base.Add(time.Duration(sec) * time.Second), Finished: true})
		}
		keep := 1 + r.Intn(45)

		got := Select(in, Options{KeepLast: keep}, time.UTC)
		if len(got) != n {
			t.Fatalf("seed %d: %d decisions for %d snapshots", seed, len(got), n)
		}
		for i, d := range got {
			if i > 0 && !got[i-1].Snapshot.Time.After(d.Snapshot.Time) {
				t.Fatalf("seed %d: result not newest first at %d", seed, i)
			}
			want := Remove
			if i < keep {
				want = Keep
			}
			if d.Mark != want {
				t.Fatalf("seed %d: keep-last %d, position %d marked %v", seed, keep, i, d.Mark)
			}
		}
	}
}
