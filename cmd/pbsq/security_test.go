package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
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

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sys/unix"

	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
	"github.com/pbsq/pbsq/datastore/lock/redistest"
	"github.com/pbsq/pbsq/tasks"
)

// TestSecretsNeverLeak runs a real S3 flow through the CLI — datastore
// create on versitygw, backup, `pbsq serve` against a password-protected
// Redis, enqueue --wait of verify, move-group, sync to and from S3, gc and
// a refused job — with distinctive values for AWS_SECRET_ACCESS_KEY and
// PBSQ_REDIS_PASSWORD, at debug log level and with umask 0. Then it looks
// for either secret (raw, hex, base64, or a long piece of it) in every
// output: each command's stdout and stderr, serve's log, every Redis key
// (task payloads, results, pbsq's own keys), /metrics, the dashboard's
// API, the config file, serve's state file and every file pbsq wrote. It
// also checks that nothing pbsq created is world-writable.
func TestSecretsNeverLeak(t *testing.T) {
	awsSecret := "pbsqAwsS3cr3t-" + randHex(t, 12)
	redisPass := "pbsqRedisPw-" + randHex(t, 12)
	accessKey := "PBSQAK" + strings.ToUpper(randHex(t, 6))

	endpoint := startVersityWith(t, accessKey, awsSecret)
	rs := redistest.Start(t)
	admin := rs.Client()
	if err := admin.ConfigSet(context.Background(), "requirepass", redisPass).Err(); err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr(), Password: redisPass})
	t.Cleanup(func() { _ = rdb.Close() })

	e := newEnv(t, false)
	// The harshest umask from here on: every mode is pbsq's own choice.
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })
	cfg := fmt.Sprintf("locks:\n  dir: %s\n  wait: 2s\nmetrics:\n  listen: 127.0.0.1:0\nredis:\n  addr: %s\ndatastores:\n  demo:\n    path: %s\n",
		filepath.Join(e.dir, "locks"), rs.Addr(), filepath.Join(e.dir, "store"))
	if err := os.WriteFile(e.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{
		"AWS_ACCESS_KEY_ID=" + accessKey, "AWS_SECRET_ACCESS_KEY=" + awsSecret, "AWS_REGION=us-east-1",
		"AWS_SESSION_TOKEN=", "AWS_PROFILE=", "PBSQ_REDIS_PASSWORD=" + redisPass,
	}
	var outputs []named // everything to search
	run := func(want int, args ...string) string {
		t.Helper()
		c := e.cmd(append([]string{"--log-level", "debug"}, args...)...)
		c.Env = append(c.Env, env...)
		var out, errb bytes.Buffer
		c.Stdout, c.Stderr = &out, &errb
		code := runExit(t, c.Run())
		label := "pbsq " + strings.Join(args, " ")
		outputs = append(outputs, named{label + " (stdout)", out.String()}, named{label + " (stderr)", errb.String()})
		if code != want {
			t.Fatalf("%s: exit %d, want %d\n%s%s", label, code, want, out.String(), errb.String())
		}
		return out.String()
	}

	// The bucket, then the S3 store through the CLI.
	ctx := context.Background()
	s3c := awss3.New(awss3.Options{BaseEndpoint: aws.String(endpoint), Region: "us-east-1", UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(accessKey, awsSecret, "")})
	if _, err := s3c.CreateBucket(ctx, &awss3.CreateBucketInput{Bucket: aws.String("secure")}); err != nil {
		t.Fatal(err)
	}
	run(0, "datastore", "create", "offsite", "--s3-endpoint", endpoint, "--s3-bucket", "secure", "--s3-path-style")
	img := filepath.Join(e.dir, "disk.img")
	if err := os.WriteFile(img, bytes.Repeat([]byte("secure data "), 40000), 0o644); err != nil {
		t.Fatal(err)
	}
	run(0, "ns", "create", "--store", "offsite", "--ns", "a")
	run(0, "ns", "create", "--store", "offsite", "--ns", "b")
	run(0, "backup", "--store", "offsite", "--ns", "a", "--type", "vm", "--id", "1", "--time", "2024-03-01T10:00:00Z", img)
	run(0, "backup", "--store", "demo", "--type", "vm", "--id", "2", "--time", "2024-03-01T10:00:00Z", img)

	serve := startWithEnv(t, e, env, "--log-level", "debug", "serve", "--listen", "127.0.0.1:0")
	st := waitServeState(t, e)

	run(0, "enqueue", "verify", "--store", "offsite", "--wait")
	run(0, "enqueue", "move-group", "--store", "offsite", "--ns", "a", "--backup-type", "vm", "--backup-id", "1", "--target-ns", "b", "--wait")
	run(0, "enqueue", "sync", "--source-store", "offsite", "--store", "demo", "--ns", "", "--wait")
	run(0, "enqueue", "sync", "--source-store", "demo", "--source-ns", "", "--store", "offsite", "--ns", "a", "--max-depth", "0", "--wait")
	run(0, "enqueue", "gc", "--store", "offsite", "--wait")
	run(2, "enqueue", "verify", "--store", "offsite", "--ns", "missing", "--wait")
	run(2, "enqueue", "verify", "--store", "offsite", "--ns", "../etc")
	run(0, "tasks", "ls")
	id := strings.TrimSpace(run(0, "enqueue", "verify", "--store", "offsite", "--ignore-verified=false"))
	run(0, "tasks", "wait", id)
	run(0, "tasks", "show", id, "--json")
	run(0, "locks", "ls")
	run(0, "ls", "--store", "offsite", "-r", "--json")

	// A wrong password must not be echoed either.
	wrong := "pbsqWrongPw-" + randHex(t, 8)
	c := e.cmd("tasks", "ls")
	c.Env = append(c.Env, "PBSQ_REDIS_PASSWORD="+wrong)
	out, _ := c.CombinedOutput()
	if strings.Contains(string(out), wrong) {
		t.Errorf("a wrong Redis password is echoed: %s", out)
	}
	outputs = append(outputs, named{"pbsq tasks ls with a wrong password", string(out)})

	// HTTP: /metrics, the dashboard page and its API.
	for _, u := range []string{st.Metrics, st.Dashboard, dashAPI(st, "/queues"), dashAPI(st, "/queues/pbsq:offsite"),
		dashAPI(st, "/queues/pbsq:offsite/completed_tasks"), dashAPI(st, "/queues/pbsq:offsite/archived_tasks"),
		dashAPI(st, "/servers"), dashAPI(st, "/redis_info")} {
		outputs = append(outputs, named{u, httpGet(t, u)})
	}
	if err := serve.stop(t, 30*time.Second); err != nil {
		t.Errorf("serve exit: %v", err)
	}
	outputs = append(outputs, named{"pbsq serve output", serve.out.String()})

	// Redis: every key, whatever its type.
	outputs = append(outputs, named{"redis dump", dumpRedis(t, rdb)})
	// Every file pbsq wrote or read: config, serve state, stores, locks.
	err := filepath.WalkDir(e.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.Mode().Perm()&0o002 != 0 && info.Mode()&fs.ModeSymlink == 0 {
			t.Errorf("%s is world-writable (%s)", p, info.Mode())
		}
		if !d.IsDir() && info.Size() < 16<<20 {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			outputs = append(outputs, named{p, string(b)})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "locks", "offsite")); err != nil {
		t.Errorf("no lock files of store offsite were checked: %v", err)
	}

	checked := 0
	for _, o := range outputs {
		for _, sec := range []struct{ what, v string }{{"AWS_SECRET_ACCESS_KEY", awsSecret}, {"PBSQ_REDIS_PASSWORD", redisPass}} {
			if where := leaks(o.text, sec.v); where != "" {
				t.Errorf("%s leaks into %s (%s): …%s…", sec.what, o.name, where, excerpt(o.text, sec.v))
			}
		}
		checked += len(o.text)
	}
	t.Logf("searched %d outputs (%d bytes) for both secrets", len(outputs), checked)
}

type named struct{ name, text string }

// leaks reports how secret appears in text ("" when it does not): raw,
// hex, base64, or any 12-byte piece of it.
func leaks(text, secret string) string {
	forms := map[string]string{
		"raw": secret, "hex": hex.EncodeToString([]byte(secret)),
		"base64": base64.StdEncoding.EncodeToString([]byte(secret)), "url": url.QueryEscape(secret),
	}
	for what, f := range forms {
		if strings.Contains(text, f) {
			return what
		}
	}
	// The random tail is what makes the secret distinctive.
	tail := secret[len(secret)-12:]
	if strings.Contains(text, tail) {
		return "a piece"
	}
	return ""
}

func excerpt(text, secret string) string {
	i := strings.Index(text, secret[len(secret)-12:])
	if i < 0 {
		return "(encoded)"
	}
	return text[max(0, i-60):min(len(text), i+40)]
}

func randHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// startVersityWith runs versitygw with the given credentials (s3test's
// are fixed constants, which would not be distinctive).
func startVersityWith(t *testing.T, access, secret string) string {
	t.Helper()
	bin, err := s3test.FindVersity()
	if err != nil {
		t.Fatal("versitygw not found: run `make test-deps`")
	}
	root := t.TempDir()
	var extra []string
	if err := unix.Setxattr(root, "user.pbsqtest", []byte("1"), 0); err != nil {
		extra = append(extra, "--sidecar", t.TempDir())
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	args := append([]string{"--access", access, "--secret", secret, "--region", "us-east-1", "--quiet", "--port", addr, "posix"}, extra...)
	cmd := exec.Command(bin, append(args, root)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out syncBuf
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	endpoint := "http://" + addr
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(endpoint + "/")
		if err == nil {
			resp.Body.Close()
			return endpoint
		}
		if time.Now().After(deadline) {
			t.Fatalf("versitygw not answering: %v\n%s", err, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startWithEnv is env.start with extra environment variables.
func startWithEnv(t *testing.T, e *env, extra []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: e.cmd(args...), out: &syncBuf{}, done: make(chan struct{})}
	p.cmd.Env = append(p.cmd.Env, extra...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("pbsq %s output:\n%s", strings.Join(args, " "), p.out.String())
		}
	})
	return p
}

func waitServeState(t *testing.T, e *env) serveState {
	t.Helper()
	p := e.statePath()
	deadline := time.Now().Add(30 * time.Second)
	for {
		data, err := os.ReadFile(p)
		var st serveState
		if err == nil && json.Unmarshal(data, &st) == nil && st.Metrics != "" {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("pbsq serve wrote no state in %s: %v", p, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func dashAPI(st serveState, p string) string {
	return strings.TrimSuffix(st.Dashboard, "/") + "/api" + p
}

func httpGet(t *testing.T, u string) string {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET %s: %s", u, resp.Status)
	}
	return string(b)
}

// dumpRedis returns every key and its value, whatever the type.
func dumpRedis(t *testing.T, rdb *redis.Client) string {
	t.Helper()
	ctx := context.Background()
	var b strings.Builder
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) == 0 {
		t.Fatal("redis holds no keys: the flow did not run")
	}
	for _, k := range keys {
		typ, err := rdb.Type(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		var v any
		switch typ {
		case "string":
			v, err = rdb.Get(ctx, k).Result()
		case "hash":
			v, err = rdb.HGetAll(ctx, k).Result()
		case "list":
			v, err = rdb.LRange(ctx, k, 0, -1).Result()
		case "set":
			v, err = rdb.SMembers(ctx, k).Result()
		case "zset":
			v, err = rdb.ZRangeWithScores(ctx, k, 0, -1).Result()
		case "stream":
			v, err = rdb.XRange(ctx, k, "-", "+").Result()
		}
		if err != nil && !errors.Is(err, redis.Nil) {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s (%s) = %v\n", k, typ, v)
	}
	if !strings.Contains(b.String(), tasks.TypeSync) {
		t.Error("no sync task payload in the Redis dump")
	}
	return b.String()
}

// TestListenLoopbackByDefault: /metrics (worker) and /metrics plus the
// dashboard (serve) bind to loopback unless configured otherwise: the
// dashboard can delete and run tasks and has no authentication.
func TestListenLoopbackByDefault(t *testing.T) {
	t.Setenv("PBSQ_METRICS_LISTEN", "") // restored after the test
	os.Unsetenv("PBSQ_METRICS_LISTEN")
	c, err := loadConfig(filepath.Join(t.TempDir(), "none.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	a := &app{cfg: c}
	host, _, err := net.SplitHostPort(a.listenAddr(""))
	if err != nil || !net.ParseIP(host).IsLoopback() {
		t.Fatalf("default metrics listen address %q is not loopback", a.listenAddr(""))
	}
	root := newRootCmd()
	for _, name := range []string{"serve", "worker"} {
		sub, _, err := root.Find([]string{name})
		if err != nil {
			t.Fatal(err)
		}
		for _, fl := range []string{"listen", "dashboard-listen"} {
			if f := sub.Flags().Lookup(fl); f != nil && f.DefValue != "" {
				if h, _, err := net.SplitHostPort(f.DefValue); err != nil || !net.ParseIP(h).IsLoopback() {
					t.Errorf("%s --%s defaults to %q, not loopback", name, fl, f.DefValue)
				}
			}
		}
	}

	// The real thing: a worker with no listen address configured binds
	// 127.0.0.1:9464 (or, when that port is taken, says so).
	e := newEnv(t, true)
	if err := os.WriteFile(e.config, []byte("redis:\n  addr: "+e.redis.Addr()+"\nlocks:\n  dir: "+filepath.Join(e.dir, "locks")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := e.start("worker")
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(p.out.String(), "127.0.0.1:9464") {
		if time.Now().After(deadline) {
			t.Fatalf("worker did not report its default listen address:\n%s", p.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if strings.Contains(p.out.String(), "0.0.0.0") || strings.Contains(p.out.String(), "[::]") {
		t.Errorf("worker listens on all interfaces:\n%s", p.out.String())
	}
}

// TestEnqueueHostileInput: the CLI refuses path traversal in every name
// flag and payloads larger than the worker accepts (64 KiB), exit 2,
// nothing queued.
func TestEnqueueHostileInput(t *testing.T) {
	e := newEnv(t, true)
	long := "regex:" + strings.Repeat("a", 1000)
	var filters []string
	for i := 0; i < 70; i++ {
		filters = append(filters, "--group-filter", long)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"enqueue", "move-group", "--store", "demo", "--ns", "a", "--backup-type", "vm", "--backup-id", "../../x", "--target-ns", "b"}, "../../x"},
		{[]string{"enqueue", "move-group", "--store", "demo", "--ns", "a", "--backup-type", "vm", "--backup-id", "1", "--target-ns", "../b"}, "../b"},
		{[]string{"enqueue", "move-namespace", "--store", "demo", "--ns", "/a", "--target-ns", "b"}, "/a"},
		{[]string{"enqueue", "sync", "--source-store", "demo", "--source-ns", "a/./b", "--store", "demo", "--ns", "c"}, "a/./b"},
		{[]string{"enqueue", "prune", "--store", "../demo", "--keep-last", "1"}, "../demo"},
		{[]string{"enqueue", "verify", "--store", "demo", "--backup-type", "vm", "--backup-id", "1", "--snapshot", "../2024-03-01T10:00:00Z"}, "snapshot"},
		{[]string{"enqueue", "sync", "--source-store", "demo", "--store", "demo", "--source-ns", "a", "--ns", "b", "--owner", "root@pam\nEVIL"}, "owner"},
	} {
		_, stderr, code := e.run(c.args...)
		if code != 2 || !strings.Contains(stderr, c.want) {
			t.Errorf("%s: exit %d, want 2 naming %q: %s", strings.Join(c.args, " "), code, c.want, stderr)
		}
	}
	if n := e.queued(); n != 0 {
		t.Fatalf("%d task(s) queued by refused enqueues", n)
	}

	// 70 long group filters pass Validate but make a payload over 64 KiB,
	// which the worker refuses unread.
	args := append([]string{"enqueue", "sync", "--source-store", "demo", "--source-ns", "a", "--store", "demo", "--ns", "b"}, filters...)
	_, stderr, code := e.run(args...)
	if code != 2 || !strings.Contains(stderr, "65536") {
		t.Errorf("oversize payload: exit %d, want 2 naming the limit: %s", code, stderr)
	}
	if n := e.queued(); n != 0 {
		t.Errorf("%d task(s) queued by an oversize enqueue", n)
	}
}
