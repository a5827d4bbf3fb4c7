package prune

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkSelect covers a typical group (100 snapshots) and an extreme one
// (100,000, about eleven years of hourly backups) under a usual retention
// policy, computed in a DST zone.
func BenchmarkSelect(b *testing.B) {
	loc := berlin(b)
	opt := Options{KeepLast: 3, KeepHourly: 24, KeepDaily: 7, KeepWeekly: 4, KeepMonthly: 12, KeepYearly: 5}
	for _, n := range []int{100, 100_000} {
		in := make([]Snapshot, n)
		start := mustTime(b, "2025-06-01T00:00:00Z")
		for i := range in {
			// Oldest first, the order a directory listing tends to give.
			in[i] = Snapshot{
				Time:      start.Add(-time.Duration(n-i) * time.Hour),
				Finished:  i != n-1,
				Protected: i%997 == 0,
			}
		}
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				Select(in, opt, loc)
			}
		})
	}
}
