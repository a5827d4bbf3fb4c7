package dashboards

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
)

// liveEnv runs the pbsq binary against a temp config.
type liveEnv struct {
	t      *testing.T
	bin    string
	dir    string
	config string
}

func (e *liveEnv) pbsq(args ...string) string {
	e.t.Helper()
	cmd := exec.Command(e.bin, args...)
	cmd.Env = append(os.Environ(), "PBSQ_CONFIG="+e.config, "PBSQ_LOCKS_DIR="+filepath.Join(e.dir, "locks"))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		e.t.Fatalf("pbsq %v: %v\n%s%s", args, err, out.String(), errb.String())
	}
	return out.String()
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func httpGet(t *testing.T, u string) []byte {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s\n%s", u, resp.Status, b)
	}
	return b
}

// startProcess starts a long-running command, stopped at cleanup.
func startProcess(t *testing.T, env []string, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	log, _ := os.Create(filepath.Join(t.TempDir(), filepath.Base(name)+".log"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
		}
		if t.Failed() {
			data, _ := os.ReadFile(log.Name())
			t.Logf("%s output:\n%s", name, data)
		}
	})
	return cmd
}

type promResult struct {
	Status    string `json:"status"`
	Error     string `json:"error"`
	ErrorType string `json:"errorType"`
	Data      struct {
		ResultType string            `json:"resultType"`
		Result     []json.RawMessage `json:"result"`
	} `json:"data"`
}

func promQuery(t *testing.T, base, expr string) promResult {
	t.Helper()
	r, err := tryQuery(base, expr)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// tryQuery is promQuery for polling while Prometheus starts.
func tryQuery(base, expr string) (promResult, error) {
	var r promResult
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return r, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return r, fmt.Errorf("query %s: %w", expr, err)
	}
	return r, nil
}

// mayBeEmpty lists dashboard queries that have data only in situations a
// short healthy run does not produce.
var mayBeEmpty = map[string]string{
	"pbsq_task_progress_ratio": "only while a task runs",
	"pbsq_skipped_items_total": "only after a busy skip",
}

// TestLiveDashboardQueries starts `pbsq serve` running real tasks and a real
// Prometheus scraping it, then evaluates every PromQL expression of the
// dashboard and of the alert rules through Prometheus's HTTP API.
func TestLiveDashboardQueries(t *testing.T) {
	prometheus, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus not found: run `make test-deps` (apt-get install prometheus)")
	}
	e := &liveEnv{t: t, dir: t.TempDir()}
	e.config = filepath.Join(e.dir, "pbsq.yaml")
	e.bin = filepath.Join(e.dir, "pbsq")
	if out, err := exec.Command("go", "build", "-o", e.bin, "../cmd/pbsq").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	// Two datastores with real backups.
	e.pbsq("datastore", "create", "main", "--path", filepath.Join(e.dir, "main"))
	e.pbsq("datastore", "create", "mirror", "--path", filepath.Join(e.dir, "mirror"))
	// An S3 store (real versitygw), so the S3 panels have data.
	s3 := s3test.StartVersity(t)
	e.pbsq("datastore", "create", "offsite", "--s3-endpoint", s3.Endpoint(), "--s3-bucket", s3.Bucket(), "--s3-path-style")
	e.pbsq("ns", "create", "--store", "main", "--ns", "a")
	e.pbsq("ns", "create", "--store", "main", "--ns", "b")
	data := filepath.Join(e.dir, "disk.img")
	_ = os.WriteFile(data, bytes.Repeat([]byte("pbsq live metrics\n"), 300000), 0o644)
	for i, at := range []string{"2024-03-01T10:00:00Z", "2024-03-02T10:00:00Z", "2024-03-03T10:00:00Z"} {
		e.pbsq("backup", "--store", "main", "--ns", "a", "--type", "vm", "--id", fmt.Sprint(100+i%2), "--time", at, data)
	}

	// A schedule, so the scheduler's series exist (it need not fire).
	sched := "schedules:\n  mirror-gc:\n    cron: \"@daily\"\n    task: gc\n    payload: {store: mirror, dry-run: true}\n"
	if f, err := os.OpenFile(e.config, os.O_APPEND|os.O_WRONLY, 0); err != nil {
		t.Fatal(err)
	} else if _, err := f.WriteString(sched); err != nil || f.Close() != nil {
		t.Fatalf("append a schedule to %s: %v", e.config, err)
	}

	listen := freePort(t)
	startProcess(t, []string{"PBSQ_CONFIG=" + e.config, "PBSQ_LOCKS_DIR=" + filepath.Join(e.dir, "locks")}, e.bin, "serve", "--listen", listen)
	metricsURL := "http://" + listen + "/metrics"
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, err := http.Get(metricsURL); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("pbsq serve did not come up")
		}
		time.Sleep(200 * time.Millisecond)
	}

	// Prometheus scraping the worker every second, with pbsq's rules.
	promDir := t.TempDir()
	promListen := freePort(t)
	rules, _ := filepath.Abs("prometheus/alerts.yml")
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: pbsq
    static_configs:
      - targets: [%q]
`, rules, listen)
	_ = os.WriteFile(filepath.Join(promDir, "prometheus.yml"), []byte(cfg), 0o644)
	startProcess(t, nil, prometheus, "--config.file="+filepath.Join(promDir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(promDir, "data"), "--web.listen-address="+promListen)
	promBase := "http://" + promListen
	waitFor(t, 60*time.Second, "prometheus scraping pbsq", func() bool {
		r, err := tryQuery(promBase, `up{job="pbsq"} == 1`)
		return err == nil && r.Status == "success" && len(r.Data.Result) == 1
	})

	// Real tasks through the queue.
	e.pbsq("enqueue", "sync", "--source-store", "main", "--store", "offsite", "--wait")
	e.pbsq("enqueue", "verify", "--store", "main", "--wait")
	e.pbsq("enqueue", "prune", "--store", "main", "--ns", "a", "--keep-last", "1", "--dry-run", "--wait")
	e.pbsq("enqueue", "move-group", "--store", "main", "--ns", "a", "--backup-type", "vm", "--backup-id", "101", "--target-ns", "b", "--wait")
	e.pbsq("enqueue", "sync", "--source-store", "main", "--store", "mirror", "--wait")
	e.pbsq("enqueue", "gc", "--store", "main", "--wait")
	e.pbsq("enqueue", "verify", "--store", "mirror", "--ignore-verified=false", "--wait")

	// promtool accepts the live exposition.
	exposition := httpGet(t, metricsURL)
	check := exec.Command("promtool", "check", "metrics")
	check.Stdin = bytes.NewReader(exposition)
	if out, err := check.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}

	// Let Prometheus scrape the final counters a few times.
	waitFor(t, 30*time.Second, "the gc task in Prometheus", func() bool {
		r := promQuery(t, promBase, `pbsq_tasks_total{type="datastore:gc",outcome="ok"} > 0`)
		return len(r.Data.Result) == 1
	})
	// Every query has data once Prometheus has scraped the counters a few
	// times (rates need two samples): poll, then report what has none.
	exprs := dashboardExprs(t)
	var failures []string
	deadline = time.Now().Add(60 * time.Second)
	for {
		failures = failures[:0]
		for _, expr := range exprs {
			q := strings.NewReplacer(`"$instance"`, `".*"`, `"$store"`, `".*"`, `=~"$instance"`, `=~".*"`, `=~"$store"`, `=~".*"`).Replace(expr)
			r := promQuery(t, promBase, q)
			if r.Status != "success" {
				failures = append(failures, fmt.Sprintf("dashboard query does not evaluate: %s: %s %s", expr, r.ErrorType, r.Error))
				continue
			}
			empty := len(r.Data.Result) == 0
			why := ""
			for metric, reason := range mayBeEmpty {
				if strings.Contains(expr, metric) {
					why = reason
				}
			}
			if empty && why == "" {
				failures = append(failures, "dashboard query has no data against a live worker: "+expr)
			}
		}
		if len(failures) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	for _, f := range failures {
		t.Error(f)
	}
	// The rules load and evaluate healthily; no alert is firing on a
	// healthy run except none.
	var rulesResp struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name      string `json:"name"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
					State     string `json:"state"`
					Query     string `json:"query"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	waitFor(t, 20*time.Second, "rule evaluation", func() bool {
		_ = json.Unmarshal(httpGet(t, promBase+"/api/v1/rules"), &rulesResp)
		for _, g := range rulesResp.Data.Groups {
			for _, r := range g.Rules {
				if r.Health == "unknown" {
					return false
				}
			}
		}
		return len(rulesResp.Data.Groups) > 0
	})
	n := 0
	for _, g := range rulesResp.Data.Groups {
		for _, r := range g.Rules {
			n++
			if r.Health != "ok" {
				t.Errorf("rule %s: health %s %s", r.Name, r.Health, r.LastError)
			}
			if res := promQuery(t, promBase, r.Query); res.Status != "success" {
				t.Errorf("rule %s query does not evaluate: %s", r.Name, res.Error)
			}
			if r.State == "firing" {
				t.Errorf("rule %s fires on a healthy run", r.Name)
			}
		}
	}
	if n < 12 {
		t.Errorf("%d rules loaded, want 12", n)
	}
	// The store-content rules see their series in the live worker.
	for _, expr := range []string{
		"pbsq_datastore_available_bytes", "pbsq_group_last_backup_timestamp_seconds",
		"pbsq_group_last_verify_timestamp_seconds", "pbsq_job_last_success_timestamp_seconds", "pbsq_job_scheduled",
		`pbsq_s3_requests_total{store="offsite"}`,
	} {
		if r := promQuery(t, promBase, expr); len(r.Data.Result) == 0 {
			t.Errorf("no %s in Prometheus for the alert rules", expr)
		}
	}
	t.Logf("%d dashboard queries and %d rules evaluated against a live worker", len(exprs), n)
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
