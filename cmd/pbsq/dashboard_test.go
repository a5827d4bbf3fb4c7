package main

import (
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pbsq/pbsq/tasks"
)

// appendConfig adds YAML to the env's config.
func (e *env) appendConfig(yaml string) {
	e.t.Helper()
	f, err := os.OpenFile(e.config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(yaml); err != nil {
		e.t.Fatal(err)
	}
}

// dashReq is one request to the dashboard API; it returns the status.
type dashReq struct {
	method, url string
	header      map[string]string
	user, pass  string
}

func (d dashReq) do(t *testing.T) int {
	t.Helper()
	req, err := http.NewRequest(d.method, d.url, strings.NewReader(`{"x":1}`))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range d.header {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	if d.pass != "" {
		req.SetBasicAuth(d.user, d.pass)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// demoQueue is the queue of the test store's tasks (one per store).
var demoQueue = tasks.QueueFor(&tasks.Verify{Store: "demo"})

func (e *env) paused() bool {
	e.t.Helper()
	info, err := e.inspector().GetQueueInfo(demoQueue)
	if err != nil {
		e.t.Fatal(err)
	}
	return info.Paused
}

// origin is scheme://host of a URL.
func origin(t *testing.T, u string) string {
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	return p.Scheme + "://" + p.Host
}

// TestDashboardReadOnlyByDefault: with no dashboard config the dashboard
// answers GETs, refuses every mutation (cross-site or not), and answers
// no Host but loopback (a DNS-rebound name is another site).
func TestDashboardReadOnlyByDefault(t *testing.T) {
	e := newEnv(t, true)
	serve := e.start("serve")
	st := waitServeState(t, e)
	e.mustRun("enqueue", "verify", "--store", "demo", "--wait") // the queue exists
	pause := dashAPI(st, "/queues/"+demoQueue+":pause")
	own := origin(t, st.Dashboard)

	if code := (dashReq{method: "GET", url: dashAPI(st, "/queues")}).do(t); code != 200 {
		t.Errorf("GET queues: %d", code)
	}
	for _, r := range []dashReq{
		{method: "POST", url: pause, header: map[string]string{"Origin": "http://evil.example", "Content-Type": "text/plain"}},
		{method: "POST", url: pause, header: map[string]string{"Origin": own, "Sec-Fetch-Site": "same-origin"}},
		{method: "POST", url: pause},
		{method: "DELETE", url: dashAPI(st, "/queues/"+demoQueue+"/completed_tasks:delete_all")},
	} {
		if code := r.do(t); code < 400 {
			t.Errorf("%s %s %v: %d, want refused", r.method, r.url, r.header, code)
		}
	}
	if e.paused() {
		t.Fatal("the read-only dashboard paused the queue")
	}
	if code := (dashReq{method: "GET", url: dashAPI(st, "/queues"), header: map[string]string{"Host": "rebound.evil.example"}}).do(t); code != http.StatusMisdirectedRequest {
		t.Errorf("GET with a foreign Host: %d, want 421", code)
	}
	if err := serve.stop(t, 20e9); err != nil {
		t.Errorf("serve exit: %v", err)
	}
}

// TestDashboardWritesNeedTokenAndSameOrigin: with read-only false and a
// token file, a mutation needs the token and the dashboard's own origin:
// cross-site by Origin (text/plain, the "simple request" a page can send
// without a preflight), by Sec-Fetch-Site or by Referer is refused even
// with the right token; the same origin with the token is accepted.
func TestDashboardWritesNeedTokenAndSameOrigin(t *testing.T) {
	e := newEnv(t, true)
	token := "dash-" + randHex(t, 16)
	tokFile := filepath.Join(e.dir, "dashboard.token")
	must(t, os.WriteFile(tokFile, []byte(token+"\n"), 0o600))
	e.appendConfig("dashboard:\n  read-only: false\n  token-file: dashboard.token\n")
	serve := e.start("serve")
	st := waitServeState(t, e)
	e.mustRun("enqueue", "verify", "--store", "demo", "--wait")
	pause := dashAPI(st, "/queues/"+demoQueue+":pause")
	own := origin(t, st.Dashboard)

	if code := (dashReq{method: "GET", url: dashAPI(st, "/queues")}).do(t); code != http.StatusUnauthorized {
		t.Errorf("GET without the token: %d, want 401", code)
	}
	if code := (dashReq{method: "GET", url: dashAPI(st, "/queues"), pass: token}).do(t); code != 200 {
		t.Errorf("GET with the token: %d", code)
	}
	for _, r := range []dashReq{
		{method: "POST", url: pause, pass: token, header: map[string]string{"Origin": "http://evil.example", "Content-Type": "text/plain"}},
		{method: "POST", url: pause, pass: token, header: map[string]string{"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"}},
		{method: "POST", url: pause, pass: token, header: map[string]string{"Referer": "http://evil.example/page", "Content-Type": "text/plain"}},
		{method: "POST", url: pause, header: map[string]string{"Origin": own}},
		{method: "POST", url: pause, pass: "wrong-" + token, header: map[string]string{"Origin": own}},
	} {
		if code := r.do(t); code != http.StatusForbidden && code != http.StatusUnauthorized {
			t.Errorf("POST %v (token %v): %d, want 403 or 401", r.header, r.pass == token, code)
		}
		if e.paused() {
			t.Fatalf("POST %v paused the queue", r.header)
		}
	}
	ok := dashReq{method: "POST", url: pause, pass: token, header: map[string]string{"Origin": own, "Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"}}
	if code := ok.do(t); code >= 300 {
		t.Fatalf("same-origin POST with the token: %d", code)
	}
	if !e.paused() {
		t.Error("the allowed pause did not pause the queue")
	}
	if strings.Contains(serve.out.String(), token) {
		t.Error("serve logged the dashboard token")
	}
	if err := serve.stop(t, 20e9); err != nil {
		t.Errorf("serve exit: %v", err)
	}
}

// TestDashboardNotOnPublicMetrics: metrics.listen open to the network
// serves /metrics but not the dashboard; a separate dashboard.listen
// serves it there only.
func TestDashboardNotOnPublicMetrics(t *testing.T) {
	e := newEnv(t, true)
	serve := e.start("serve", "--listen", "0.0.0.0:0")
	st := waitServeState(t, e)
	if st.Dashboard != "" {
		t.Errorf("dashboard served with public metrics: %s", st.Dashboard)
	}
	port := st.Metrics[strings.LastIndexByte(st.Metrics, ':')+1 : len(st.Metrics)-len("/metrics")]
	base := "http://127.0.0.1:" + port
	if code := (dashReq{method: "GET", url: base + "/metrics"}).do(t); code != 200 {
		t.Errorf("/metrics: %d", code)
	}
	for _, p := range []string{"/monitoring/", "/monitoring/api/queues"} {
		if code := (dashReq{method: "GET", url: base + p}).do(t); code != http.StatusNotFound {
			t.Errorf("GET %s on the public metrics listener: %d, want 404", p, code)
		}
	}
	if !strings.Contains(serve.out.String(), "dashboard not served") {
		t.Errorf("serve does not say the dashboard is off:\n%s", serve.out.String())
	}
	must(t, serve.stop(t, 20e9))

	e.appendConfig("dashboard:\n  listen: 127.0.0.1:0\n")
	serve = e.start("serve", "--listen", "0.0.0.0:0")
	st = waitServeState(t, e)
	if st.Dashboard == "" || strings.Contains(st.Dashboard, port) {
		t.Fatalf("dashboard %q", st.Dashboard)
	}
	if code := (dashReq{method: "GET", url: dashAPI(st, "/queues")}).do(t); code != 200 {
		t.Errorf("dashboard on its own listener: %d", code)
	}
	mport := st.Metrics[strings.LastIndexByte(st.Metrics, ':')+1 : len(st.Metrics)-len("/metrics")]
	if code := (dashReq{method: "GET", url: "http://127.0.0.1:" + mport + "/monitoring/api/queues"}).do(t); code != http.StatusNotFound {
		t.Errorf("dashboard also on the metrics listener: %d", code)
	}
	must(t, serve.stop(t, 20e9))
}

// TestDashboardConfigValidation: unsafe or malformed dashboard settings
// are exit 2 naming the value, before anything listens.
func TestDashboardConfigValidation(t *testing.T) {
	e := newEnv(t, false)
	base, err := os.ReadFile(e.config)
	must(t, err)
	tok := filepath.Join(e.dir, "tok")
	must(t, os.WriteFile(tok, []byte("0123456789abcdef0123\n"), 0o644))
	for _, c := range []struct{ yaml, want string }{
		{"dashboard:\n  read-only: false\n", "needs dashboard.token-file"},
		{"dashboard:\n  listen: 0.0.0.0:9999\n", `"0.0.0.0:9999" is not a loopback`},
		{"dashboard:\n  listen: nonsense\n", `dashboard.listen "nonsense"`},
		{"dashboard:\n  bogus: 1\n", "bogus"},
		{"dashboard:\n  read-only: false\n  token-file: " + tok + "\n", "chmod 600"},
	} {
		must(t, os.WriteFile(e.config, append(append([]byte{}, base...), c.yaml...), 0o644))
		_, errs := e.expect(2, "serve")
		if !strings.Contains(errs, c.want) {
			t.Errorf("%q: stderr lacks %q:\n%s", c.yaml, c.want, errs)
		}
	}
	must(t, os.WriteFile(e.config, base, 0o644))
	if _, errs := e.expect(2, "serve", "--dashboard-listen", "0.0.0.0:0"); !strings.Contains(errs, "--dashboard-listen") {
		t.Errorf("public --dashboard-listen without a token: %s", errs)
	}
}
