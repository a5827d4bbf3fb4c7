package prune

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // Europe/Berlin must resolve even without system zoneinfo.
)

func mustTime(t testing.TB, s string) time.Time {
	t.Helper()
	tm, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return tm
}

func berlin(t testing.TB) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// snaps builds finished snapshots whose ID is their RFC 3339 time. A "!"
// suffix makes one protected and a "~" suffix unfinished, so mixed timelines
// stay readable in the tables.
func snaps(t testing.TB, specs ...string) []Snapshot {
	t.Helper()
	out := make([]Snapshot, len(specs))
	for i, spec := range specs {
		s := Snapshot{Finished: true}
		for len(spec) > 0 {
			switch spec[len(spec)-1] {
			case '!':
				s.Protected = true
			case '~':
				s.Finished = false
			default:
				goto done
			}
			spec = spec[:len(spec)-1]
		}
	done:
		s.Time = mustTime(t, spec)
		s.ID = spec
		out[i] = s
	}
	return out
}

// render gives "ID mark" per decision, in result order.
func render(ds []Decision) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.Snapshot.ID + " " + d.Mark.String()
	}
	return out
}

// pbsList mirrors get_prune_list from PBS's tests/prune.rs: the IDs that are
// kept (or removed), oldest first.
func pbsList(ds []Decision, returnKept bool) []string {
	out := []string{}
	for i := len(ds) - 1; i >= 0; i-- {
		if ds[i].Mark.Keeps() == returnKept {
			out = append(out, ds[i].Snapshot.ID)
		}
	}
	return out
}

// TestPBSCases replays PBS's own tests (tests/prune.rs) in UTC and in
// Europe/Berlin; all their times sit far enough from midnight that the zone
// must not matter.
func TestPBSCases(t *testing.T) {
	simple := []string{
		"2019-12-02T11:59:15Z", "2019-12-03T11:59:15Z",
		"2019-12-04T11:59:15Z", "2019-12-04T12:59:15Z",
	}
	simple2 := []string{
		"2018-11-15T11:59:15Z", "2019-11-15T11:59:15Z", "2019-11-21T11:59:15Z",
		"2019-11-22T11:59:15Z", "2019-11-29T11:59:15Z", "2019-12-01T11:59:15Z",
		"2019-12-02T11:59:15Z", "2019-12-03T11:59:15Z", "2019-12-04T11:59:15Z",
	}
	hourly := []string{
		"2019-11-15T09:39:15Z", "2019-11-15T10:49:15Z", "2019-11-15T10:59:15Z",
		"2019-11-15T11:39:15Z", "2019-11-15T11:49:15Z", "2019-11-15T11:59:15Z",
	}
	allButNewest := []string{"2019-12-02T11:59:15Z", "2019-12-03T11:59:15Z", "2019-12-04T11:59:15Z"}
	cases := []struct {
		name       string
		list       []string
		opt        Options
		returnKept bool
		want       []string
	}{
		{"hourly 3", hourly, Options{KeepHourly: 3}, false,
			[]string{"2019-11-15T10:49:15Z", "2019-11-15T11:39:15Z", "2019-11-15T11:49:15Z"}},
		{"hourly 2", hourly, Options{KeepHourly: 2}, true,
			[]string{"2019-11-15T10:59:15Z", "2019-11-15T11:59:15Z"}},

		{"simple2 daily 1", simple2, Options{KeepDaily: 1}, true,
			[]string{"2019-12-04T11:59:15Z"}},
		{"simple2 last 1 daily 1", simple2, Options{KeepLast: 1, KeepDaily: 1}, true,
			[]string{"2019-12-03T11:59:15Z", "2019-12-04T11:59:15Z"}},
		{"simple2 daily 1 weekly 1", simple2, Options{KeepDaily: 1, KeepWeekly: 1}, true,
			[]string{"2019-12-01T11:59:15Z", "2019-12-04T11:59:15Z"}},
		{"simple2 daily 1 weekly 1 monthly 1", simple2, Options{KeepDaily: 1, KeepWeekly: 1, KeepMonthly: 1}, true,
			[]string{"2019-11-22T11:59:15Z", "2019-12-01T11:59:15Z", "2019-12-04T11:59:15Z"}},
		{"simple2 monthly 1 yearly 1", simple2, Options{KeepMonthly: 1, KeepYearly: 1}, true,
			[]string{"2018-11-15T11:59:15Z", "2019-12-04T11:59:15Z"}},

		{"simple last 4", simple, Options{KeepLast: 4}, false, []string{}},
		{"simple last 3", simple, Options{KeepLast: 3}, false, []string{"2019-12-02T11:59:15Z"}},
		{"simple last 2", simple, Options{KeepLast: 2}, false,
			[]string{"2019-12-02T11:59:15Z", "2019-12-03T11:59:15Z"}},
		{"simple last 1", simple, Options{KeepLast: 1}, false, allButNewest},
		// PBS's keep-last 0 case is omitted: here 0 means unset, and
		// TestKeepEverything covers that.
		{"simple last 2 daily 2", simple, Options{KeepLast: 2, KeepDaily: 2}, false, []string{}},
		{"simple daily 3", simple, Options{KeepDaily: 3}, false, []string{"2019-12-04T11:59:15Z"}},
		{"simple daily 2", simple, Options{KeepDaily: 2}, false,
			[]string{"2019-12-02T11:59:15Z", "2019-12-04T11:59:15Z"}},
		{"simple weekly 5", simple, Options{KeepWeekly: 5}, false, allButNewest},
		{"simple daily 1 weekly 5", simple, Options{KeepDaily: 1, KeepWeekly: 5}, false, allButNewest},
		{"simple monthly 6", simple, Options{KeepMonthly: 6}, false, allButNewest},
		{"simple yearly 7", simple, Options{KeepYearly: 7}, false, allButNewest},
		{"simple weekly 5 monthly 6 yearly 7", simple, Options{KeepWeekly: 5, KeepMonthly: 6, KeepYearly: 7}, false, allButNewest},
	}
	for _, loc := range []*time.Location{time.UTC, berlin(t)} {
		for _, c := range cases {
			t.Run(loc.String()+"/"+c.name, func(t *testing.T) {
				got := pbsList(Select(snaps(t, c.list...), c.opt, loc), c.returnKept)
				if !slices.Equal(got, c.want) {
					t.Errorf("kept=%v: got %q, want %q", c.returnKept, got, c.want)
				}
			})
		}
	}
}

type markCase struct {
	name string
	in   []string // snaps() specs, any order
	opt  Options
	loc  *time.Location // nil: UTC
	want []string       // render() of the result
}

func runMarkCases(t *testing.T, cases []markCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			loc := c.loc
			if loc == nil {
				loc = time.UTC
			}
			got := render(Select(snaps(t, c.in...), c.opt, loc))
			if !slices.Equal(got, c.want) {
				t.Errorf("Select(%v) in %v:\n got  %s\n want %s", c.opt, loc,
					strings.Join(got, "\n      "), strings.Join(c.want, "\n      "))
			}
		})
	}
}

func TestSingleRules(t *testing.T) {
	var ten []string
	for d := 1; d <= 10; d++ {
		ten = append(ten, fmt.Sprintf("2024-03-%02dT08:00:00Z", d))
	}
	runMarkCases(t, []markCase{
		{"keep-last 3 of 10", ten, Options{KeepLast: 3}, nil, []string{
			"2024-03-10T08:00:00Z keep",
			"2024-03-09T08:00:00Z keep",
			"2024-03-08T08:00:00Z keep",
			"2024-03-07T08:00:00Z remove",
			"2024-03-06T08:00:00Z remove",
			"2024-03-05T08:00:00Z remove",
			"2024-03-04T08:00:00Z remove",
			"2024-03-03T08:00:00Z remove",
			"2024-03-02T08:00:00Z remove",
			"2024-03-01T08:00:00Z remove",
		}},
		{"keep-last more than available", []string{"2024-03-02T00:00:00Z", "2024-03-01T00:00:00Z"},
			Options{KeepLast: 5}, nil, []string{
				"2024-03-02T00:00:00Z keep",
				"2024-03-01T00:00:00Z keep",
			}},
		{"keep-daily several per day", []string{
			"2024-03-01T09:00:00Z", "2024-03-03T23:59:59Z", "2024-03-01T18:00:00Z",
			"2024-03-02T12:00:00Z", "2024-03-03T00:00:00Z", "2024-03-04T06:00:00Z",
			"2024-03-03T12:00:00Z", "2024-03-04T05:00:00Z",
		}, Options{KeepDaily: 3}, nil, []string{
			"2024-03-04T06:00:00Z keep",
			"2024-03-04T05:00:00Z remove",
			"2024-03-03T23:59:59Z keep",
			"2024-03-03T12:00:00Z remove",
			"2024-03-03T00:00:00Z remove",
			"2024-03-02T12:00:00Z keep",
			"2024-03-01T18:00:00Z remove",
			"2024-03-01T09:00:00Z remove",
		}},
		{"keep-hourly", []string{
			"2024-03-01T10:00:00Z", "2024-03-01T10:59:59Z", "2024-03-01T11:00:00Z",
			"2024-03-01T12:30:00Z", "2024-03-01T12:45:00Z", "2024-03-01T09:15:00Z",
		}, Options{KeepHourly: 3}, nil, []string{
			"2024-03-01T12:45:00Z keep",
			"2024-03-01T12:30:00Z remove",
			"2024-03-01T11:00:00Z keep",
			"2024-03-01T10:59:59Z keep",
			"2024-03-01T10:00:00Z remove",
			"2024-03-01T09:15:00Z remove",
		}},
		// 2020-12-31 (Thu), 2021-01-01 and 2021-01-03 all belong to ISO week
		// 2020-W53; 2021-01-04 starts 2021-W01. A calendar-year week key
		// would split W53 in two and keep 2020-12-31 instead of 12-27.
		{"keep-weekly across ISO year boundary", []string{
			"2020-12-27T12:00:00Z", "2020-12-31T12:00:00Z", "2021-01-01T12:00:00Z",
			"2021-01-03T12:00:00Z", "2021-01-04T12:00:00Z",
		}, Options{KeepWeekly: 3}, nil, []string{
			"2021-01-04T12:00:00Z keep",
			"2021-01-03T12:00:00Z keep",
			"2021-01-01T12:00:00Z remove",
			"2020-12-31T12:00:00Z remove",
			"2020-12-27T12:00:00Z keep",
		}},
		{"keep-monthly", []string{
			"2023-11-30T23:00:00Z", "2023-12-01T00:00:00Z", "2023-12-31T23:59:59Z",
			"2024-01-15T00:00:00Z", "2024-01-01T00:00:00Z", "2023-10-10T10:10:10Z",
		}, Options{KeepMonthly: 3}, nil, []string{
			"2024-01-15T00:00:00Z keep",
			"2024-01-01T00:00:00Z remove",
			"2023-12-31T23:59:59Z keep",
			"2023-12-01T00:00:00Z remove",
			"2023-11-30T23:00:00Z keep",
			"2023-10-10T10:10:10Z remove",
		}},
		// keep-yearly uses the calendar year, unlike keep-weekly.
		{"keep-yearly", []string{
			"2019-06-01T00:00:00Z", "2020-12-31T12:00:00Z", "2021-01-01T12:00:00Z",
			"2021-01-03T12:00:00Z", "2020-01-01T00:00:00Z",
		}, Options{KeepYearly: 2}, nil, []string{
			"2021-01-03T12:00:00Z keep",
			"2021-01-01T12:00:00Z remove",
			"2020-12-31T12:00:00Z keep",
			"2020-01-01T00:00:00Z remove",
			"2019-06-01T00:00:00Z remove",
		}},
	})
}

func TestCombinedRules(t *testing.T) {
	// Twice a day for ten days, plus older monthly and yearly stragglers.
	var in []string
	for d := 1; d <= 10; d++ {
		in = append(in, fmt.Sprintf("2024-03-%02dT06:00:00Z", d), fmt.Sprintf("2024-03-%02dT18:00:00Z", d))
	}
	in = append(in, "2024-02-10T06:00:00Z", "2024-01-20T06:00:00Z", "2023-06-01T06:00:00Z", "2022-06-01T06:00:00Z")
	want := []string{
		"2024-03-10T18:00:00Z keep",   // last
		"2024-03-10T06:00:00Z keep",   // last
		"2024-03-09T18:00:00Z keep",   // daily (10th already covered by last)
		"2024-03-09T06:00:00Z remove", // same day as one just kept
		"2024-03-08T18:00:00Z keep",   // daily
		"2024-03-08T06:00:00Z remove",
		"2024-03-07T18:00:00Z keep", // daily, third and last day
		"2024-03-07T06:00:00Z remove",
		"2024-03-06T18:00:00Z remove", // daily stopped here; week 10 is covered
		"2024-03-06T06:00:00Z remove",
		"2024-03-05T18:00:00Z remove",
		"2024-03-05T06:00:00Z remove",
		"2024-03-04T18:00:00Z remove",
		"2024-03-04T06:00:00Z remove",
		"2024-03-03T18:00:00Z keep", // weekly: week 9
		"2024-03-03T06:00:00Z remove",
		"2024-03-02T18:00:00Z remove",
		"2024-03-02T06:00:00Z remove",
		"2024-03-01T18:00:00Z remove",
		"2024-03-01T06:00:00Z remove",
		"2024-02-10T06:00:00Z keep",   // monthly: February (March covered)
		"2024-01-20T06:00:00Z keep",   // monthly: January
		"2023-06-01T06:00:00Z keep",   // yearly: 2023 (2024 covered)
		"2022-06-01T06:00:00Z remove", // yearly 1 used up
	}
	// Week 10 of 2024 is Mar 4-10 and already covered by keep-last; weekly 1
	// then keeps the newest of week 9 (Mar 3) and stops at week 8.
	runMarkCases(t, []markCase{{
		"last 2 daily 3 weekly 1 monthly 2 yearly 1", in,
		Options{KeepLast: 2, KeepDaily: 3, KeepWeekly: 1, KeepMonthly: 2, KeepYearly: 1}, nil, want,
	}})
}

func TestProtected(t *testing.T) {
	runMarkCases(t, []markCase{
		{"not counted by keep-last", []string{
			"2024-03-04T00:00:00Z!", "2024-03-03T00:00:00Z", "2024-03-02T00:00:00Z", "2024-03-01T00:00:00Z",
		}, Options{KeepLast: 2}, nil, []string{
			"2024-03-04T00:00:00Z protected",
			"2024-03-03T00:00:00Z keep",
			"2024-03-02T00:00:00Z keep",
			"2024-03-01T00:00:00Z remove",
		}},
		{"does not use up its day", []string{
			"2024-03-02T20:00:00Z!", "2024-03-02T10:00:00Z", "2024-03-01T10:00:00Z",
		}, Options{KeepDaily: 1}, nil, []string{
			"2024-03-02T20:00:00Z protected",
			"2024-03-02T10:00:00Z keep",
			"2024-03-01T10:00:00Z remove",
		}},
		{"never removed, even past the break", []string{
			"2024-03-03T00:00:00Z", "2024-03-02T00:00:00Z!", "2024-03-01T12:00:00Z",
			"2024-03-01T00:00:00Z!", "2023-01-01T00:00:00Z!~",
		}, Options{KeepLast: 1}, nil, []string{
			"2024-03-03T00:00:00Z keep",
			"2024-03-02T00:00:00Z protected",
			"2024-03-01T12:00:00Z remove",
			"2024-03-01T00:00:00Z protected",
			"2023-01-01T00:00:00Z protected",
		}},
		{"protected unfinished newest", []string{
			"2024-03-02T00:00:00Z!~", "2024-03-01T00:00:00Z",
		}, Options{KeepLast: 1}, nil, []string{
			"2024-03-02T00:00:00Z protected",
			"2024-03-01T00:00:00Z keep",
		}},
	})
}

func TestUnfinished(t *testing.T) {
	runMarkCases(t, []markCase{
		{"newest unfinished is keep-partial and not counted", []string{
			"2024-03-04T00:00:00Z~", "2024-03-03T00:00:00Z", "2024-03-02T00:00:00Z",
		}, Options{KeepLast: 1}, nil, []string{
			"2024-03-04T00:00:00Z keep-partial",
			"2024-03-03T00:00:00Z keep",
			"2024-03-02T00:00:00Z remove",
		}},
		{"unfinished older than a finished one is removed", []string{
			"2024-03-04T00:00:00Z", "2024-03-03T00:00:00Z~", "2024-03-02T00:00:00Z",
		}, Options{KeepLast: 3}, nil, []string{
			"2024-03-04T00:00:00Z keep",
			"2024-03-03T00:00:00Z remove",
			"2024-03-02T00:00:00Z keep",
		}},
		{"two unfinished newest: only the first is spared", []string{
			"2024-03-04T00:00:00Z~", "2024-03-03T00:00:00Z~", "2024-03-02T00:00:00Z",
		}, Options{KeepLast: 5}, nil, []string{
			"2024-03-04T00:00:00Z keep-partial",
			"2024-03-03T00:00:00Z remove",
			"2024-03-02T00:00:00Z keep",
		}},
		// keep-partial is not Keep, so it does not cover its day.
		{"keep-partial leaves its day to a finished one", []string{
			"2024-03-02T20:00:00Z~", "2024-03-02T10:00:00Z", "2024-03-01T10:00:00Z",
		}, Options{KeepDaily: 1}, nil, []string{
			"2024-03-02T20:00:00Z keep-partial",
			"2024-03-02T10:00:00Z keep",
			"2024-03-01T10:00:00Z remove",
		}},
		{"all unfinished", []string{
			"2024-03-02T00:00:00Z~", "2024-03-01T00:00:00Z~",
		}, Options{KeepLast: 2}, nil, []string{
			"2024-03-02T00:00:00Z keep-partial",
			"2024-03-01T00:00:00Z remove",
		}},
	})
}

func TestDST(t *testing.T) {
	loc := berlin(t)
	// 2023-10-29: CEST ends at 01:00 UTC, so 00:30Z (02:30 CEST) and 01:30Z
	// (02:30 CET) share the local hour 02; 23:30Z the day before is 01:30
	// CEST.
	fallBack := []string{
		"2023-10-28T23:30:00Z", "2023-10-29T00:30:00Z", "2023-10-29T01:30:00Z", "2023-10-29T02:30:00Z",
	}
	// 22:30Z on 2023-06-15 is already 00:30 on the 16th in Berlin (CEST).
	midnight := []string{
		"2023-06-14T12:00:00Z", "2023-06-15T10:00:00Z", "2023-06-15T21:30:00Z", "2023-06-15T22:30:00Z",
	}
	runMarkCases(t, []markCase{
		{"fall-back hour is one period in Berlin", fallBack, Options{KeepHourly: 3}, loc, []string{
			"2023-10-29T02:30:00Z keep",
			"2023-10-29T01:30:00Z keep",
			"2023-10-29T00:30:00Z remove",
			"2023-10-28T23:30:00Z keep",
		}},
		{"fall-back hours are distinct in UTC", fallBack, Options{KeepHourly: 3}, time.UTC, []string{
			"2023-10-29T02:30:00Z keep",
			"2023-10-29T01:30:00Z keep",
			"2023-10-29T00:30:00Z keep",
			"2023-10-28T23:30:00Z remove",
		}},
		{"daily boundary in Berlin", midnight, Options{KeepDaily: 2}, loc, []string{
			"2023-06-15T22:30:00Z keep",
			"2023-06-15T21:30:00Z keep",
			"2023-06-15T10:00:00Z remove",
			"2023-06-14T12:00:00Z remove",
		}},
		{"daily boundary in UTC", midnight, Options{KeepDaily: 2}, time.UTC, []string{
			"2023-06-15T22:30:00Z keep",
			"2023-06-15T21:30:00Z remove",
			"2023-06-15T10:00:00Z remove",
			"2023-06-14T12:00:00Z keep",
		}},
	})
}

func TestKeepEverything(t *testing.T) {
	in := snaps(t, "2024-03-01T00:00:00Z", "2024-03-03T00:00:00Z~", "2024-03-02T00:00:00Z!", "2024-02-01T00:00:00Z~")
	got := render(Select(in, Options{}, time.UTC))
	want := []string{
		"2024-03-03T00:00:00Z keep",
		"2024-03-02T00:00:00Z protected",
		"2024-03-01T00:00:00Z keep",
		"2024-02-01T00:00:00Z keep",
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if len(Select(nil, Options{KeepLast: 1}, nil)) != 0 {
		t.Error("Select(nil) returned decisions")
	}
}

func TestSelectDetails(t *testing.T) {
	in := snaps(t, "2024-03-01T00:00:00Z", "2024-03-03T00:00:00Z", "2024-03-02T00:00:00Z")
	orig := slices.Clone(in)
	ds := Select(in, Options{KeepLast: 1}, nil)
	if !slices.Equal(in, orig) {
		t.Error("Select modified its input")
	}
	for _, d := range ds {
		if in[d.Index] != d.Snapshot {
			t.Errorf("Index %d maps to %v, decision holds %v", d.Index, in[d.Index], d.Snapshot)
		}
	}
	if got := []int{ds[0].Index, ds[1].Index, ds[2].Index}; !slices.Equal(got, []int{1, 2, 0}) {
		t.Errorf("indices %v, want [1 2 0]", got)
	}

	// Equal times keep input order, and keep-last sees one snapshot time.
	tie := []Snapshot{
		{Time: mustTime(t, "2024-03-01T00:00:00Z"), Finished: true, ID: "a"},
		{Time: mustTime(t, "2024-03-01T00:00:00Z"), Finished: true, ID: "b"},
		{Time: mustTime(t, "2024-03-01T00:00:00Z").Add(500 * time.Millisecond), Finished: true, ID: "c"},
	}
	if got := render(Select(tie, Options{KeepLast: 3}, time.UTC)); !slices.Equal(got, []string{"c keep", "a remove", "b remove"}) {
		t.Errorf("ties: got %q", got)
	}
}

func TestMarkString(t *testing.T) {
	for m, want := range map[Mark]string{
		Keep: "keep", KeepPartial: "keep-partial", Remove: "remove", Protected: "protected", 0: "Mark(0)",
	} {
		if got := m.String(); got != want {
			t.Errorf("Mark(%d).String() = %q, want %q", int(m), got, want)
		}
	}
	for m, want := range map[Mark]bool{Keep: true, KeepPartial: true, Protected: true, Remove: false, 0: false} {
		if m.Keeps() != want {
			t.Errorf("%v.Keeps() = %v", m, !want)
		}
	}
}

func TestOptions(t *testing.T) {
	if (Options{}).KeepsSomething() {
		t.Error("empty options keep something")
	}
	for i, name := range optionNames {
		var o Options
		*o.counts()[i] = 2
		if !o.KeepsSomething() {
			t.Errorf("%s 2 keeps nothing", name)
		}
		if err := o.Validate(); err != nil {
			t.Errorf("%s 2: %v", name, err)
		}
		if got, want := o.String(), "--"+name+" 2"; got != want {
			t.Errorf("String() = %q, want %q", got, want)
		}
	}

	if err := (Options{KeepDaily: -1}).Validate(); err == nil || err.Error() != "keep-daily -1: must be at least 1" {
		t.Errorf("Validate keep-daily -1: %v", err)
	}
	err := (Options{KeepLast: -2, KeepYearly: -3}).Validate()
	if err == nil || err.Error() != "keep-last -2: must be at least 1\nkeep-yearly -3: must be at least 1" {
		t.Errorf("Validate two negatives: %v", err)
	}
	if (Options{KeepLast: -2}).KeepsSomething() {
		t.Error("negative count keeps something")
	}

	var o Options
	for _, c := range []struct {
		name string
		n    int
		err  string
	}{
		{"keep-last", 3, ""},
		{"keep-weekly", 4, ""},
		{"keep-daily", 0, "keep-daily 0: must be at least 1"},
		{"keep-hourly", -5, "keep-hourly -5: must be at least 1"},
		{"keep-forever", 1, `unknown prune option "keep-forever"`},
	} {
		err := o.Set(c.name, c.n)
		if got := fmt.Sprint(err); (c.err == "" && err != nil) || (c.err != "" && got != c.err) {
			t.Errorf("Set(%q, %d) = %v, want %q", c.name, c.n, err, c.err)
		}
	}
	if want := (Options{KeepLast: 3, KeepWeekly: 4}); o != want {
		t.Errorf("after Set: %+v, want %+v", o, want)
	}
	if got := o.String(); got != "--keep-last 3 --keep-weekly 4" {
		t.Errorf("String() = %q", got)
	}
}

// timeWarp returns a synthetic zone (TZif version 1) whose offset is 0 until
// 2024-04-30T12:00Z, +120h until 2024-05-01T12:00Z and -24h after. Real zones
// never jump like this, but it makes local week keys run backwards, which
// is the only way to observe that PBS ends a rule (break) instead of
// skipping past it.
func timeWarp(t testing.TB) *time.Location {
	t.Helper()
	be32 := func(b []byte, v int64) []byte {
		return append(b, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	}
	transitions := []int64{
		mustTime(t, "2024-04-30T12:00:00Z").Unix(), mustTime(t, "2024-05-01T12:00:00Z").Unix(),
	}
	offsets := []int64{0, 120 * 3600, -24 * 3600}
	b := append([]byte("TZif"), make([]byte, 16)...) // version 0, reserved
	for _, n := range []int{0, 0, 0, len(transitions), len(offsets), 4} {
		b = be32(b, int64(n))
	}
	for _, tr := range transitions {
		b = be32(b, tr)
	}
	b = append(b, 1, 2)
	for _, off := range offsets {
		b = append(be32(b, off), 0, 0)
	}
	b = append(b, "WRP\x00"...)
	loc, err := time.LoadLocationFromTZData("Test/Warp", b)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

func TestRuleStopsAtFirstSurplusPeriod(t *testing.T) {
	warp := timeWarp(t)
	// Local times: A Wed 05-01 (W18, May), B Mon 05-06 (W19, May), C Tue
	// 04-30 (W18, April), D Sat 04-20 (W16, April). keep-weekly 1 keeps A
	// and stops at B, leaving C unmarked although its week is taken;
	// keep-monthly then skips B (May is covered by A) and keeps C as the
	// newest of April. Skipping on instead of stopping would remove C as a
	// second W18 snapshot and keep D.
	in := []string{"2024-05-02T06:00:00Z", "2024-05-01T06:00:00Z", "2024-04-30T06:00:00Z", "2024-04-20T06:00:00Z"}
	runMarkCases(t, []markCase{{
		"weekly then monthly", in, Options{KeepWeekly: 1, KeepMonthly: 2}, warp, []string{
			"2024-05-02T06:00:00Z keep",
			"2024-05-01T06:00:00Z remove",
			"2024-04-30T06:00:00Z keep",
			"2024-04-20T06:00:00Z remove",
		},
	}})
}
