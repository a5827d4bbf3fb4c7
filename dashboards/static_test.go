// Package dashboards holds the Grafana dashboard, the Prometheus config and
// alert rules, and their tests; it has no Go code of its own.
package dashboards

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

func promtool(t *testing.T, args ...string) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: run `make test-deps` (apt-get install prometheus)")
	}
	cmd := exec.Command(path, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func TestAlertRules(t *testing.T) {
	promtool(t, "check", "rules", "prometheus/alerts.yml")
	cmd := exec.Command("promtool", "test", "rules", "alerts_test.yml")
	cmd.Dir = "prometheus"
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	// Every alert has a unit test case.
	rules, _ := os.ReadFile("prometheus/alerts.yml")
	tests, _ := os.ReadFile("prometheus/alerts_test.yml")
	for _, line := range strings.Split(string(rules), "\n") {
		if name, ok := strings.CutPrefix(strings.TrimSpace(line), "- alert: "); ok {
			if !strings.Contains(string(tests), "alertname: "+name) {
				t.Errorf("alert %s has no promtool test", name)
			}
		}
	}
}

func TestPrometheusConfig(t *testing.T) {
	// The config refers to the rules at their in-container path; check a
	// copy pointing at the file here.
	data, _ := os.ReadFile("prometheus/prometheus.yml")
	dir := t.TempDir()
	local := strings.ReplaceAll(string(data), "/etc/prometheus/alerts.yml", filepath.Join(mustAbs(t, "prometheus"), "alerts.yml"))
	p := filepath.Join(dir, "prometheus.yml")
	_ = os.WriteFile(p, []byte(local), 0o644)
	promtool(t, "check", "config", p)
}

func mustAbs(t *testing.T, p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// dashboardExprs returns every PromQL target of the Grafana dashboard.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile("grafana/pbsq.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name string `json:"name"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	if !vars["instance"] || !vars["store"] {
		t.Errorf("dashboard variables %v: want instance and store", vars)
	}
	var out []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			if tg.Expr == "" {
				t.Errorf("panel %q has an empty target", p.Title)
			}
			out = append(out, tg.Expr)
		}
	}
	return out
}

func TestDashboardShape(t *testing.T) {
	exprs := dashboardExprs(t)
	if len(exprs) < 12 {
		t.Fatalf("%d PromQL targets, want at least 12", len(exprs))
	}
	for _, want := range []string{"asynq_queue_latency_seconds", "pbsq_tasks_total", "pbsq_task_duration_seconds_bucket",
		"pbsq_task_progress_ratio", "pbsq_lock_acquire_total", "pbsq_lock_wait_seconds_bucket", "pbsq_skipped_items_total",
		"pbsq_verify_bytes_total", "pbsq_verify_chunks_total", "pbsq_prune_snapshots_total", "pbsq_move_snapshots_total",
		"pbsq_sync_bytes_total", "pbsq_gc_removed_bytes_total",
		"pbsq_datastore_used_bytes", "pbsq_datastore_available_bytes", "pbsq_datastore_size_bytes", "pbsq_snapshots",
		"pbsq_group_last_backup_timestamp_seconds", "pbsq_group_last_verify_timestamp_seconds", "pbsq_group_verify_failed_snapshots",
		"pbsq_job_last_success_timestamp_seconds", "pbsq_gc_last_run_timestamp_seconds", "pbsq_gc_pending_bytes",
		"pbsq_s3_requests_total"} {
		found := false
		for _, e := range exprs {
			found = found || strings.Contains(e, want)
		}
		if !found {
			t.Errorf("no panel shows %s", want)
		}
	}
}

// TestComposeFile checks docker-compose.yml structurally: no Docker engine
// runs here, so we check services, images, volumes, ports and that every
// file it mounts exists.
func TestComposeFile(t *testing.T) {
	data, err := os.ReadFile("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Build       any               `yaml:"build"`
			Command     []string          `yaml:"command"`
			Volumes     []string          `yaml:"volumes"`
			Ports       []string          `yaml:"ports"`
			Environment map[string]string `yaml:"environment"`
			Configs     []struct {
				Source string `yaml:"source"`
				Target string `yaml:"target"`
			} `yaml:"configs"`
			Deploy struct {
				Replicas int `yaml:"replicas"`
			} `yaml:"deploy"`
		} `yaml:"services"`
		Volumes map[string]any `yaml:"volumes"`
		Configs map[string]struct {
			Content string `yaml:"content"`
		} `yaml:"configs"`
	}
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"redis", "minio", "pbsq-worker", "asynqmon", "prometheus", "grafana"} {
		s, ok := c.Services[name]
		if !ok {
			t.Errorf("service %s missing", name)
			continue
		}
		if s.Image == "" && s.Build == nil {
			t.Errorf("service %s has neither image nor build", name)
		}
		for _, v := range s.Volumes {
			src := strings.Split(v, ":")[0]
			if strings.HasPrefix(src, "./") {
				if _, err := os.Stat(filepath.Join("..", src)); err != nil {
					t.Errorf("service %s mounts missing %s", name, src)
				}
			} else if _, ok := c.Volumes[src]; !ok {
				t.Errorf("service %s uses undeclared volume %s", name, src)
			}
		}
		for _, p := range s.Ports {
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("service %s publishes %s beyond loopback", name, p)
			}
		}
	}
	redis := strings.Join(c.Services["redis"].Command, " ")
	if !strings.Contains(redis, "--appendonly yes") || !strings.Contains(redis, "--requirepass") {
		t.Errorf("redis is not durable or has no password: %s", redis)
	}
	w := c.Services["pbsq-worker"]
	if w.Deploy.Replicas != 2 {
		t.Errorf("pbsq-worker replicas %d, want 2", w.Deploy.Replicas)
	}
	if len(w.Configs) != 1 || !strings.Contains(c.Configs[w.Configs[0].Source].Content, "backend: redis") {
		t.Error("pbsq-worker does not use the redis lock backend")
	}
	if _, err := os.Stat("../Dockerfile"); err != nil {
		t.Error("Dockerfile missing")
	}
	for _, secret := range []string{"hunter2", "minioadmin"} {
		if strings.Contains(string(data), secret) {
			t.Errorf("compose file contains a literal secret %q", secret)
		}
	}
}
