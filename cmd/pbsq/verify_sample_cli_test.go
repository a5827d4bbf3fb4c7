package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"
)

// TestVerifySampleAndTimeBoxCLI: --sample and --max-duration on run and
// enqueue (and in schedules) refuse bad values with exit 2 naming them and
// nothing queued; a time-boxed stop exits 4, in-process and through the
// queue; sampled runs report their rotation.
func TestVerifySampleAndTimeBoxCLI(t *testing.T) {
	e := newEnv(t, true)
	e.metricsOpts("scan-interval: 1s")
	e.backups()
	for _, bad := range []struct{ flag, value, want string }{
		{"--sample", "0", "sample 0"},
		{"--sample", "101", "sample 101"},
		{"--sample", "half", `"half"`},
		{"--max-duration", "soon", `"soon"`},
		{"--max-duration", "0s", "max-duration 0s"},
		{"--max-duration", "-1m", "-1m"},
		{"--max-duration", "48h", "max-duration 48h"},
	} {
		for _, verb := range []string{"run", "enqueue"} {
			_, errs := e.expect(exitInvalid, verb, "verify", "--store", "demo", bad.flag, bad.value)
			if !strings.Contains(errs, bad.want) {
				t.Errorf("%s verify %s %s: stderr %q does not name %s", verb, bad.flag, bad.value, errs, bad.want)
			}
		}
	}
	_, errs := e.expect(exitInvalid, "run", "verify", "--store", "demo", "--sample", "10", "--read-only")
	if !strings.Contains(errs, "read-only") {
		t.Errorf("--sample with --read-only: %q", errs)
	}
	if n := e.queued(); n != 0 {
		t.Fatalf("%d task(s) queued by refused flags", n)
	}

	base, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	sched := func(payload string) string {
		return string(base) + "schedules:\n  s:\n    cron: \"@daily\"\n    task: verify\n    payload: " + payload + "\n"
	}
	if err := os.WriteFile(e.config, []byte(sched("{store: demo, sample: 0}")), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errs := e.expect(exitInvalid, "schedules", "ls"); !strings.Contains(errs, "sample 0") {
		t.Errorf("schedule with sample 0: %q", errs)
	}
	if err := os.WriteFile(e.config, []byte(sched("{store: demo, sample: 25, max-duration: 2h}")), 0o644); err != nil {
		t.Fatal(err)
	}
	e.expect(0, "schedules", "ls")
	if err := os.WriteFile(e.config, base, 0o644); err != nil {
		t.Fatal(err)
	}

	// 1ns runs out before the first snapshot: all three are skipped.
	var r struct {
		OK         int `json:"ok"`
		NotReached int `json:"not-reached"`
		Sample     *struct {
			Coverage  float64 `json:"coverage"`
			Completed bool    `json:"completed"`
		} `json:"sample"`
	}
	out, _ := e.expect(exitSkipped, "run", "verify", "--store", "demo", "--max-duration", "1ns", "--json")
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.NotReached != 3 {
		t.Fatalf("time-boxed run: %v, result %s", err, out)
	}
	for i, want := range []float64{0.5, 1} {
		out, _ = e.expect(0, "run", "verify", "--store", "demo", "--sample", "50", "--json")
		r.Sample = nil
		if err := json.Unmarshal([]byte(out), &r); err != nil || r.Sample == nil || r.Sample.Coverage != want || r.Sample.Completed != (i == 1) {
			t.Fatalf("sampled run %d: %v, result %s", i+1, err, out)
		}
	}

	// Through the queue: the payload carries both fields, the stop exits 4.
	id := e.enqueueID("verify", "--store", "demo", "--ignore-verified=false", "--sample", "100", "--max-duration", "1ns")
	show := e.mustRun("tasks", "show", "--json", id)
	if !strings.Contains(show, `"sample":100`) || !strings.Contains(show, `"max-duration":"1ns"`) {
		t.Errorf("task payload lacks sample or max-duration: %s", show)
	}
	w := e.start("worker")
	e.expect(exitSkipped, "tasks", "wait", id)

	// The store scan exports the completed rotation's coverage.
	url := metricsURL(t, w)
	waitFor(t, 30*time.Second, func() bool {
		v, ok := metricValue(scrape(t, url), "pbsq_verify_sample_coverage_ratio", map[string]string{"store": "demo"})
		return ok && v == 1
	})
}
