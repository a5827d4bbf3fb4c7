package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// metricsURL is the address a worker printed for its /metrics.
func metricsURL(t *testing.T, p *proc) string {
	t.Helper()
	re := regexp.MustCompile(`url=(http://[^ ]+)/metrics`)
	var base string
	waitFor(t, 30*time.Second, func() bool {
		m := re.FindStringSubmatch(p.out.String())
		if m != nil {
			base = m[1]
		}
		return m != nil
	})
	return base
}

func TestTaskLogVerifyNamesEverySnapshot(t *testing.T) {
	e := newEnv(t, true)
	e.backups()
	other := filepath.Join(e.dir, "other")
	if err := os.MkdirAll(filepath.Join(other, ".chunks"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.mustRun("datastore", "add", "other", "--path", other)
	w := e.start("worker", "--concurrency", "1")
	base := metricsURL(t, w)

	out, _ := e.expect(0, "enqueue", "verify", "--store", "demo", "--wait", "--json")
	var rec struct{ ID string }
	if err := json.Unmarshal([]byte(out), &rec); err != nil || rec.ID == "" {
		t.Fatalf("enqueue --json %q: %v", out, err)
	}
	log := e.mustRun("tasks", "log", rec.ID)
	for _, want := range []string{
		"verify vm/100/2024-03-01T10:00:00Z (ns a): ok",
		"verify vm/100/2024-03-02T10:00:00Z (ns a): ok",
		"verify ct/200/2024-03-01T11:00:00Z (ns a/b): ok",
		"verify summary: 3 snapshot(s) checked, 3 ok, 0 failed",
		"TASK OK",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	// Every line is stamped.
	stampRe := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z `)
	for _, l := range strings.Split(strings.TrimSpace(log), "\n") {
		if !stampRe.MatchString(l) {
			t.Errorf("line without a time stamp: %q", l)
		}
	}
	// A second verify skips them as already verified, and says so.
	id := strings.TrimSpace(e.mustRun("enqueue", "verify", "--store", "demo", "--ns", "a"))
	e.expect(0, "tasks", "log", "--follow", id)
	log2 := e.mustRun("tasks", "log", id)
	if !strings.Contains(log2, "skipped vm/100/2024-03-02T10:00:00Z (ns a): already verified (ok)") {
		t.Errorf("second verify log:\n%s", log2)
	}

	// The same log over HTTP, read-only.
	resp, err := http.Get(base + "/tasks/" + rec.ID + "/log")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != log {
		t.Errorf("GET log: %d\n%s\nwant\n%s", resp.StatusCode, body, log)
	}
	for path, code := range map[string]int{"/tasks/nope/log": 404, "/tasks/a%20b/log": 400} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != code {
			t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, code)
		}
	}
	resp, err = http.Post(base+"/tasks/"+rec.ID+"/log", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST log: %d", resp.StatusCode)
	}

	// started and ended, RFC 3339, in show and ls.
	var v struct {
		ID             string
		Started, Ended string
	}
	if err := json.Unmarshal([]byte(e.mustRun("tasks", "show", "--json", rec.ID)), &v); err != nil {
		t.Fatal(err)
	}
	st, err1 := time.Parse(time.RFC3339, v.Started)
	en, err2 := time.Parse(time.RFC3339, v.Ended)
	if err1 != nil || err2 != nil || en.Before(st) || time.Since(st) > time.Hour {
		t.Errorf("tasks show --json: started %q ended %q", v.Started, v.Ended)
	}
	var list []struct{ ID, Started, Ended string }
	if err := json.Unmarshal([]byte(e.mustRun("tasks", "ls", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Fatalf("tasks ls: %d tasks", len(list))
	}
	for _, l := range list {
		if _, err := time.Parse(time.RFC3339, l.Started); err != nil {
			t.Errorf("ls: task %s started %q", l.ID, l.Started)
		}
		if _, err := time.Parse(time.RFC3339, l.Ended); err != nil {
			t.Errorf("ls: task %s ended %q", l.ID, l.Ended)
		}
	}

	// The other operations name each snapshot too, and end with a summary.
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"sync", "--source-store", "demo", "--store", "other"}, []string{
			"synced vm/100/2024-03-01T10:00:00Z (ns a) from demo (ns a)", "synced vm/100/2024-03-02T10:00:00Z (ns a) from demo (ns a)",
			"synced ct/200/2024-03-01T11:00:00Z (ns a/b) from demo (ns a/b)", "sync summary: 3 snapshot(s) synced"}},
		{[]string{"move-group", "--store", "demo", "--ns", "a/b", "--backup-type", "ct", "--backup-id", "200", "--target-ns", "a"}, []string{
			"moved ct/200/2024-03-01T11:00:00Z (ns a/b) to (ns a)", "move-group summary: 1 of 1 group(s) moved, 1 snapshot(s)"}},
		{[]string{"prune", "--store", "demo", "--ns", "a", "--keep-last", "1"}, []string{
			"removed vm/100/2024-03-01T10:00:00Z (ns a)", "prune summary: "}},
		{[]string{"gc", "--store", "demo"}, []string{"phase 1 (mark)", "phase 2 (sweep)", "gc summary: "}},
	} {
		out, _ := e.expect(0, append(append([]string{"enqueue"}, c.args...), "--wait", "--json")...)
		var r struct{ ID string }
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatal(err)
		}
		lg := e.mustRun("tasks", "log", r.ID)
		for _, want := range append(c.want, "TASK OK") {
			if !strings.Contains(lg, want) {
				t.Errorf("%s log lacks %q:\n%s", c.args[0], want, lg)
			}
		}
	}

	// Unknown task: exit 2.
	e.expect(2, "tasks", "log", "no-such-task")
	e.expect(2, "tasks", "log", "bad id")
}

func TestTaskLogFollowWhileWaitingForLock(t *testing.T) {
	e := newEnv(t, true)
	e.backups()
	e.start("worker", "--concurrency", "1")
	holder := e.start("lock", "--store", "demo", "--ns", "a", "--exclusive", "--", "sleep", "60")
	waitFor(t, 30*time.Second, func() bool {
		out, _, _ := e.run("locks", "ls")
		return strings.Contains(out, "exclusive")
	})
	id := strings.TrimSpace(e.mustRun("enqueue", "verify", "--store", "demo", "--ns", "a", "--lock-wait", "50s"))
	follow := e.start("tasks", "log", "--follow", id)
	waitFor(t, 30*time.Second, func() bool { return strings.Contains(follow.out.String(), "waiting up to 50s for lock") })
	// The wait names who holds the lock.
	heldBy := fmt.Sprintf("held by %s pid %d", hostname(t), holder.cmd.Process.Pid)
	if !strings.Contains(follow.out.String(), heldBy) {
		t.Errorf("lock wait line does not say %q:\n%s", heldBy, follow.out.String())
	}
	// The line came while the task still waits: it is active, follow runs.
	if out := e.mustRun("tasks", "show", id); !strings.Contains(out, "state:    active") {
		t.Fatalf("task no longer waiting:\n%s", out)
	}
	select {
	case <-follow.done:
		t.Fatalf("follow ended while the task waits:\n%s", follow.out.String())
	default:
	}
	_ = holder.stop(t, 30*time.Second)
	select {
	case <-follow.done:
	case <-time.After(60 * time.Second):
		t.Fatal("follow did not end with the task")
	}
	if follow.err != nil {
		t.Fatalf("follow exit: %v\n%s", follow.err, follow.out.String())
	}
	out := follow.out.String()
	for _, want := range []string{"verify vm/100/2024-03-01T10:00:00Z (ns a): ok", "TASK OK"} {
		if !strings.Contains(out, want) {
			t.Errorf("followed log lacks %q:\n%s", want, out)
		}
	}

	// The exit code is the outcome: a verify that stays busy ends 4.
	holder = e.start("lock", "--store", "demo", "--ns", "a", "--exclusive", "--", "sleep", "60")
	waitFor(t, 30*time.Second, func() bool {
		out, _, _ := e.run("locks", "ls")
		return strings.Contains(out, "exclusive")
	})
	id = strings.TrimSpace(e.mustRun("enqueue", "verify", "--store", "demo", "--ns", "a", "--ignore-verified=false", "--lock-wait", "0s"))
	c := e.cmd("tasks", "log", "--follow", id)
	outb, err := c.Output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 4 {
		t.Fatalf("follow of a skipped task: %v\n%s", err, outb)
	}
	if !strings.Contains(string(outb), "Z skipped vm/100/2024-03-01T10:00:00Z (ns a): busy") || !strings.Contains(string(outb), "TASK WARNINGS") {
		t.Errorf("skipped log:\n%s", outb)
	}
	// Each skip names the lock's holder.
	heldBy = fmt.Sprintf("held by %s pid %d", hostname(t), holder.cmd.Process.Pid)
	for _, l := range strings.Split(string(outb), "\n") {
		if strings.Contains(l, "Z skipped ") && !strings.Contains(l, heldBy) {
			t.Errorf("skip line does not say %q: %s", heldBy, l)
		}
	}
	_ = holder.stop(t, 30*time.Second)
}

func hostname(t *testing.T) string {
	t.Helper()
	h, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	return h
}
