package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
)

// metricValue finds the sample of name whose labels include all of want.
func metricValue(body, name string, want map[string]string) (float64, bool) {
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for k, v := range want {
			if !strings.Contains(line, fmt.Sprintf("%s=%q", k, v)) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		return f, err == nil
	}
	return 0, false
}

// metricsOpts adds keys to the config's metrics section.
func (e *env) metricsOpts(keys ...string) {
	e.t.Helper()
	cfg, err := os.ReadFile(e.config)
	if err != nil {
		e.t.Fatal(err)
	}
	lines := strings.Split(string(cfg), "\n")
	for i, l := range lines {
		if strings.TrimSpace(l) == "listen: 127.0.0.1:0" {
			indent := l[:len(l)-len(strings.TrimLeft(l, " "))]
			var add []string
			for _, k := range keys {
				add = append(add, indent+k)
			}
			lines = append(lines[:i+1], append(add, lines[i+1:]...)...)
			break
		}
	}
	if err := os.WriteFile(e.config, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

func scrape(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestStoreScanMetrics(t *testing.T) {
	srv := s3test.StartVersity(t)
	e := newEnv(t, true)
	e.metricsOpts("scan-interval: 1s")
	e.backups()
	e.mustRun("datastore", "create", "offsite", "--s3-endpoint", srv.Endpoint(), "--s3-bucket", srv.Bucket(), "--s3-path-style")
	w := e.start("worker", "--concurrency", "1")
	base := metricsURL(t, w)

	before := time.Now().Add(-time.Second)
	e.expect(0, "enqueue", "verify", "--store", "demo", "--wait")
	out, _ := e.expect(0, "enqueue", "gc", "--store", "demo", "--wait", "--json")
	var gc struct {
		Result struct {
			PendingBytes int64 `json:"pending-bytes"`
		}
	}
	if err := json.Unmarshal([]byte(out), &gc); err != nil {
		t.Fatal(err)
	}
	e.expect(0, "enqueue", "sync", "--source-store", "demo", "--store", "offsite", "--wait")
	e.expect(0, "enqueue", "gc", "--store", "offsite", "--wait")
	after := time.Now().Add(time.Second)

	demo := map[string]string{"store": "demo"}
	group := func(ns, typ, id string) map[string]string {
		return map[string]string{"store": "demo", "ns": ns, "backup_type": typ, "backup_id": id}
	}
	// The scan runs every second: wait until it saw the tasks.
	var body string
	waitFor(t, 30*time.Second, func() bool {
		body = scrape(t, base)
		v, ok := metricValue(body, "pbsq_group_last_verify_timestamp_seconds", group("a/b", "ct", "200"))
		n, _ := metricValue(body, "pbsq_snapshots", map[string]string{"store": "offsite", "ns": "a"})
		u, _ := metricValue(body, "pbsq_datastore_used_bytes", map[string]string{"store": "offsite"})
		return ok && v > 0 && n == 2 && u > 0
	})
	in := func(what string, v float64, lo, hi time.Time) {
		t.Helper()
		if v < float64(lo.Unix()) || v > float64(hi.Unix()) {
			t.Errorf("%s = %v, want within %s..%s", what, v, lo.Format(time.RFC3339), hi.Format(time.RFC3339))
		}
	}
	must := func(name string, labels map[string]string) float64 {
		t.Helper()
		v, ok := metricValue(body, name, labels)
		if !ok {
			t.Errorf("no %s%v", name, labels)
		}
		return v
	}

	var st syscall.Statfs_t
	if err := syscall.Statfs(e.dir, &st); err != nil {
		t.Fatal(err)
	}
	if size := must("pbsq_datastore_size_bytes", demo); size != float64(st.Blocks*uint64(st.Bsize)) {
		t.Errorf("size %v, statfs says %d", size, st.Blocks*uint64(st.Bsize))
	}
	used, avail := must("pbsq_datastore_used_bytes", demo), must("pbsq_datastore_available_bytes", demo)
	if used <= 0 || avail <= 0 || used+avail > must("pbsq_datastore_size_bytes", demo) {
		t.Errorf("used %v available %v", used, avail)
	}
	for ns, n := range map[string]float64{"": 0, "a": 2, "a/b": 1} {
		if v := must("pbsq_snapshots", map[string]string{"store": "demo", "ns": ns}); v != n {
			t.Errorf("snapshots in ns %q: %v, want %v", ns, v, n)
		}
	}
	// A group's last backup is its newest finished snapshot's time.
	for _, c := range []struct {
		ns, typ, id, at string
	}{{"a", "vm", "100", "2024-03-02T10:00:00Z"}, {"a/b", "ct", "200", "2024-03-01T11:00:00Z"}} {
		at, _ := time.Parse(time.RFC3339, c.at)
		if v := must("pbsq_group_last_backup_timestamp_seconds", group(c.ns, c.typ, c.id)); v != float64(at.Unix()) {
			t.Errorf("last backup of %s/%s: %v, want %d", c.typ, c.id, v, at.Unix())
		}
		in("last verify of "+c.id, must("pbsq_group_last_verify_timestamp_seconds", group(c.ns, c.typ, c.id)), before, after)
		if v := must("pbsq_group_verify_failed_snapshots", group(c.ns, c.typ, c.id)); v != 0 {
			t.Errorf("verify failed of %s: %v", c.id, v)
		}
	}
	in("verify success", must("pbsq_job_last_success_timestamp_seconds", map[string]string{"store": "demo", "type": "datastore:verify"}), before, after)
	in("sync success", must("pbsq_job_last_success_timestamp_seconds", map[string]string{"store": "offsite", "type": "datastore:sync"}), before, after)
	in("gc run", must("pbsq_gc_last_run_timestamp_seconds", demo), before, after)
	if v := must("pbsq_gc_pending_bytes", demo); v != float64(gc.Result.PendingBytes) {
		t.Errorf("gc pending %v, gc said %d", v, gc.Result.PendingBytes)
	}
	// S3: requests counted by operation and code; used bytes from the GC.
	if v := must("pbsq_s3_requests_total", map[string]string{"store": "offsite", "op": "PutObject", "code": "200"}); v < 1 {
		t.Errorf("S3 PutObject requests: %v", v)
	}
	if v := must("pbsq_datastore_used_bytes", map[string]string{"store": "offsite"}); v <= 0 {
		t.Errorf("S3 used bytes %v", v)
	}
	if _, ok := metricValue(body, "pbsq_datastore_size_bytes", map[string]string{"store": "offsite"}); ok {
		t.Error("S3 store has a size")
	}
	if v := must("pbsq_snapshots", map[string]string{"store": "offsite", "ns": "a"}); v != 2 {
		t.Errorf("offsite snapshots in a: %v", v)
	}

	// A verify that fails ct/200 (its one chunk corrupted): the group
	// counts a failed snapshot and has no passed verify any more; vm/100
	// keeps its state.
	var chunk string
	_ = filepath.WalkDir(filepath.Join(e.dir, "store", ".chunks"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.Contains(d.Name(), ".") {
			chunk = p
		}
		return err
	})
	raw, err := os.ReadFile(chunk)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)/2] ^= 0xff
	if err := os.WriteFile(chunk, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	e.expect(1, "enqueue", "verify", "--store", "demo", "--ns", "a/b", "--ignore-verified=false", "--wait")
	waitFor(t, 30*time.Second, func() bool {
		body = scrape(t, base)
		v, _ := metricValue(body, "pbsq_group_verify_failed_snapshots", group("a/b", "ct", "200"))
		return v == 1
	})
	if v := must("pbsq_group_last_verify_timestamp_seconds", group("a/b", "ct", "200")); v != 0 {
		t.Errorf("last verify ok of a group whose only snapshot failed: %v, want 0", v)
	}
	in("last verify of 100 after ct/200 failed", must("pbsq_group_last_verify_timestamp_seconds", group("a", "vm", "100")), before, after)
	if v := must("pbsq_group_verify_failed_snapshots", group("a", "vm", "100")); v != 0 {
		t.Errorf("verify failed of vm/100: %v", v)
	}
}

// Per-group series can be turned off.
func TestStoreScanNoGroupSeries(t *testing.T) {
	e := newEnv(t, true)
	e.metricsOpts("scan-interval: 1s", "group-series: false")
	e.backups()
	w := e.start("worker")
	base := metricsURL(t, w)
	var body string
	waitFor(t, 30*time.Second, func() bool {
		body = scrape(t, base)
		_, ok := metricValue(body, "pbsq_snapshots", map[string]string{"store": "demo", "ns": "a"})
		return ok
	})
	if strings.Contains(body, "pbsq_group_last_backup_timestamp_seconds{") {
		t.Error("group series exported with group-series: false")
	}
	cfg, _ := os.ReadFile(e.config)
	cfg = []byte(strings.Replace(string(cfg), "scan-interval: 1s", "scan-interval: 10ms", 1))
	_ = os.WriteFile(e.config, cfg, 0o644)
	_, errs := e.expect(2, "worker")
	if !strings.Contains(errs, "scan-interval") {
		t.Errorf("bad scan-interval: %q", errs)
	}
}
