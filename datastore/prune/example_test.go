package prune_test

import (
	"fmt"
	"time"

	"github.com/pbsq/pbsq/datastore/prune"
)

func Example() {
	var opt prune.Options
	// A CLI layer sets only the options the user passed, so "--keep-daily 0"
	// is rejected rather than read as unset.
	if err := opt.Set("keep-daily", 2); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(opt.Set("keep-last", 0))

	at := func(s string) time.Time {
		t, _ := time.Parse(time.RFC3339, s)
		return t
	}
	snaps := []prune.Snapshot{
		{ID: "vm/100/2024-03-01T10:00:00Z", Time: at("2024-03-01T10:00:00Z"), Finished: true},
		{ID: "vm/100/2024-03-02T10:00:00Z", Time: at("2024-03-02T10:00:00Z"), Finished: true},
		{ID: "vm/100/2024-03-02T22:00:00Z", Time: at("2024-03-02T22:00:00Z"), Finished: true},
		{ID: "vm/100/2024-02-01T10:00:00Z", Time: at("2024-02-01T10:00:00Z"), Finished: true, Protected: true},
		{ID: "vm/100/2024-03-03T08:00:00Z", Time: at("2024-03-03T08:00:00Z")}, // still running
	}
	fmt.Println("retention:", opt)
	for _, d := range prune.Select(snaps, opt, time.UTC) {
		fmt.Printf("%-12s %s\n", d.Mark, d.Snapshot.ID)
	}
	// Output:
	// keep-last 0: must be at least 1
	// retention: --keep-daily 2
	// keep-partial vm/100/2024-03-03T08:00:00Z
	// keep         vm/100/2024-03-02T22:00:00Z
	// remove       vm/100/2024-03-02T10:00:00Z
	// keep         vm/100/2024-03-01T10:00:00Z
	// protected    vm/100/2024-02-01T10:00:00Z
}
