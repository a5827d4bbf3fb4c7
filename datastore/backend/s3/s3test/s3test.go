// Package s3test starts S3 servers for tests: a real versitygw gateway
// (StartVersity) and the in-process gofakes3 (StartFake).
//
// Both set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION for the
// whole process, because the s3 backend takes credentials only from the AWS
// chain. They use t.Setenv when the test allows it, which means the test
// that calls StartVersity/StartFake must not call t.Parallel (its subtests
// may). In a parallel test, or where Setenv is not allowed, they fall back
// to os.Setenv and restore the old values in Cleanup. The credentials are
// the same constants for every server, so concurrent servers never disagree.
package s3test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"golang.org/x/sys/unix"

	"github.com/pbsq/pbsq/datastore/backend/s3"
)

// Test credentials and names; not secrets.
const (
	AccessKey = "pbsqtestaccesskey"
	SecretKey = "pbsqtestsecretkey"
	Region    = "us-east-1"
	Bucket    = "pbsq-test"
)

// Server is a running S3 endpoint with one bucket.
type Server struct {
	endpoint string
	bucket   string
	pid      int // versitygw's process; 0 for the in-process fake
	n        atomic.Int64
}

// Endpoint is the server's base URL (http://127.0.0.1:port).
func (s *Server) Endpoint() string { return s.endpoint }

// CPUTime is the user and system CPU time the server process has used so
// far (benchmarks compare the server work of two clients by it); zero for
// the in-process fake.
func (s *Server) CPUTime() (time.Duration, error) {
	if s.pid == 0 {
		return 0, nil
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.pid))
	if err != nil {
		return 0, err
	}
	// Fields after the parenthesised command name; utime and stime are
	// the 14th and 15th of the whole line, in USER_HZ (100 on Linux).
	rest := stat[bytes.LastIndexByte(stat, ')')+1:]
	f := strings.Fields(string(rest))
	if len(f) < 13 {
		return 0, fmt.Errorf("versitygw: short /proc stat %q", stat)
	}
	var ticks int64
	for _, v := range f[11:13] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("versitygw: /proc stat %q: %w", stat, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// Bucket is the bucket created at start.
func (s *Server) Bucket() string { return s.bucket }

// Config is an s3.Config for a datastore at prefix in the bucket.
func (s *Server) Config(prefix string) s3.Config {
	return s3.Config{
		Endpoint:       s.endpoint,
		Region:         Region,
		Bucket:         s.bucket,
		Prefix:         prefix,
		PathStyle:      true,
		RequestTimeout: 30 * time.Second,
	}
}

// UniquePrefix returns a new prefix per call, so tests sharing a server do
// not see each other.
func (s *Server) UniquePrefix(base string) string {
	return fmt.Sprintf("%s-%d", base, s.n.Add(1))
}

// New opens a backend at prefix, closed in t.Cleanup.
func (s *Server) New(t testing.TB, prefix string, opts ...s3.Option) *s3.S3 {
	t.Helper()
	b, err := s3.New(context.Background(), s.Config(prefix), opts...)
	if err != nil {
		t.Fatalf("s3.New: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// Client is a raw SDK client for the server, to check what the backend
// stored independently of it.
func (s *Server) Client() *awss3.Client {
	return awss3.New(awss3.Options{
		BaseEndpoint:               aws.String(s.endpoint),
		Region:                     Region,
		UsePathStyle:               true,
		Credentials:                credentials.NewStaticCredentialsProvider(AccessKey, SecretKey, ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
}

// setCredentialEnv points the AWS chain at the test credentials.
func setCredentialEnv(t testing.TB) {
	env := map[string]string{
		"AWS_ACCESS_KEY_ID":     AccessKey,
		"AWS_SECRET_ACCESS_KEY": SecretKey,
		"AWS_SESSION_TOKEN":     "",
		"AWS_REGION":            Region,
		// A profile named in the environment that does not exist here
		// would make config loading fail; empty means unset to the SDK.
		"AWS_PROFILE": "",
	}
	for k, v := range env {
		setenv(t, k, v)
	}
}

// envMu serialises the os.Setenv fallback's save/restore.
var envMu sync.Mutex

func setenv(t testing.TB, key, value string) {
	ok := func() (ok bool) {
		defer func() {
			if recover() != nil {
				ok = false // t.Setenv panics in parallel tests
			}
		}()
		t.Setenv(key, value)
		return true
	}()
	if ok {
		return
	}
	envMu.Lock()
	defer envMu.Unlock()
	old, had := os.LookupEnv(key)
	if err := os.Setenv(key, value); err != nil {
		t.Fatalf("setenv %s: %v", key, err)
	}
	t.Cleanup(func() {
		envMu.Lock()
		defer envMu.Unlock()
		if had {
			_ = os.Setenv(key, old)
		} else {
			_ = os.Unsetenv(key)
		}
	})
}

// StartFake runs gofakes3 (in memory) in-process on an httptest server.
func StartFake(t testing.TB) *Server {
	t.Helper()
	mem := s3mem.New()
	if err := mem.CreateBucket(Bucket); err != nil {
		t.Fatalf("gofakes3: create bucket: %v", err)
	}
	ts := httptest.NewServer(gofakes3.New(mem).Server())
	t.Cleanup(ts.Close)
	setCredentialEnv(t)
	return &Server{endpoint: ts.URL, bucket: Bucket}
}

// FindVersity returns the path of the versitygw binary: $PATH, $GOBIN,
// then $(go env GOPATH)/bin.
func FindVersity() (string, error) {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	var dirs []string
	if gobin := os.Getenv("GOBIN"); gobin != "" {
		dirs = append(dirs, gobin)
	}
	if out, err := exec.Command("go", "env", "GOBIN", "GOPATH").Output(); err == nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) > 0 && strings.TrimSpace(lines[0]) != "" {
			dirs = append(dirs, strings.TrimSpace(lines[0]))
		}
		if len(lines) > 1 {
			for _, gp := range filepath.SplitList(strings.TrimSpace(lines[1])) {
				dirs = append(dirs, filepath.Join(gp, "bin"))
			}
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go", "bin"))
	}
	for _, d := range dirs {
		p := filepath.Join(d, "versitygw")
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", errors.New("versitygw not found")
}

// StartVersity runs a versitygw posix gateway on a free localhost port over
// a temp directory, with one bucket, and stops it in Cleanup.
func StartVersity(t testing.TB) *Server {
	t.Helper()
	return startVersity(t, t.TempDir)
}

// StartVersityInMemory is StartVersity over a directory in /dev/shm
// (tmpfs); it skips the test where /dev/shm is not a tmpfs. Benchmarks
// that compare clients use it: on a disk the server's own file work
// (journal, directory blocks) costs several times the clients' and
// varies from run to run with the disk.
func StartVersityInMemory(t testing.TB) *Server {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		t.Skip("/dev/shm is not a tmpfs")
	}
	return startVersity(t, func() string {
		dir, err := os.MkdirTemp("/dev/shm", "pbsq-versitygw")
		if err != nil {
			t.Fatalf("versitygw: %v", err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(dir) })
		return dir
	})
}

// startVersity runs versitygw over dir(), which also gives the sidecar
// directory where the root lacks user xattrs.
func startVersity(t testing.TB, dir func() string) *Server {
	t.Helper()
	bin, err := FindVersity()
	if err != nil {
		t.Fatal("versitygw not found: run `make test-deps`")
	}
	root := dir()
	args := []string{"--access", AccessKey, "--secret", SecretKey, "--region", Region, "--quiet", "--keep-alive"}
	var backendArgs []string
	// The posix backend keeps metadata (etag, …) in user xattrs; on a
	// filesystem without them, use a sidecar directory instead.
	if err := unix.Setxattr(root, "user.pbsqtest", []byte("1"), 0); err != nil {
		backendArgs = append(backendArgs, "--sidecar", dir())
	} else {
		_ = unix.Removexattr(root, "user.pbsqtest")
	}

	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatalf("versitygw: %v", err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		full := append(append(append([]string{}, args...), "--port", addr, "posix"), backendArgs...)
		full = append(full, root)
		cmd := exec.Command(bin, full...)
		var out lockedBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		// Do not outlive a test binary that is killed.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatalf("versitygw: start: %v", err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		stop := func() {
			_ = cmd.Process.Kill()
			<-exited
		}
		endpoint := "http://" + addr
		if err := waitReady(endpoint, exited, 15*time.Second); err != nil {
			stop()
			lastErr = fmt.Errorf("%w; output:\n%s", err, out.String())
			continue // most likely lost the port to someone else
		}
		t.Cleanup(func() {
			stop()
			if t.Failed() {
				t.Logf("versitygw output:\n%s", out.String())
			}
		})
		setCredentialEnv(t)
		srv := &Server{endpoint: endpoint, bucket: Bucket, pid: cmd.Process.Pid}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if _, err := srv.Client().CreateBucket(ctx, &awss3.CreateBucketInput{Bucket: aws.String(Bucket)}); err != nil {
			t.Fatalf("versitygw: create bucket: %v\noutput:\n%s", err, out.String())
		}
		return srv
	}
	t.Fatalf("versitygw did not start: %v", lastErr)
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitReady polls until the server answers HTTP at all (an unsigned request
// gets a 403, which is fine).
func waitReady(endpoint string, exited <-chan struct{}, timeout time.Duration) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return errors.New("versitygw exited")
		default:
		}
		resp, err := client.Get(endpoint + "/")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("versitygw not answering at %s after %v", endpoint, timeout)
}

// lockedBuffer collects process output written from exec's goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
