package s3_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/backend/backendtest"
	"github.com/pbsq/pbsq/datastore/backend/s3"
	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
)

// servers runs fn against versitygw (a real S3 server) and gofakes3. The
// server is started in the parent test (it sets the AWS env with
// t.Setenv); fn's subtests may be parallel.
func servers(t *testing.T, fn func(t *testing.T, srv *s3test.Server)) {
	t.Run("versitygw", func(t *testing.T) { fn(t, s3test.StartVersity(t)) })
	t.Run("gofakes3", func(t *testing.T) { fn(t, s3test.StartFake(t)) })
}

func TestConformance(t *testing.T) {
	servers(t, func(t *testing.T, srv *s3test.Server) {
		backendtest.Run(t, func(t *testing.T) backend.Backend {
			return srv.New(t, srv.UniquePrefix("conf/"+strings.ReplaceAll(t.Name(), "/", "_")))
		})
	})
}

// listKeys lists the whole bucket with the raw SDK client.
func listKeys(t testing.TB, srv *s3test.Server, prefix string) []string {
	t.Helper()
	var keys []string
	p := awss3.NewListObjectsV2Paginator(srv.Client(), &awss3.ListObjectsV2Input{
		Bucket: aws.String(srv.Bucket()), Prefix: aws.String(prefix),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range page.Contents {
			keys = append(keys, aws.ToString(o.Key))
		}
	}
	sort.Strings(keys)
	return keys
}

const chunk = ".chunks/abcd/abcd0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab"

// TestKeyLayout checks the object keys against PBS's S3 datastore layout.
func TestKeyLayout(t *testing.T) {
	servers(t, func(t *testing.T, srv *s3test.Server) {
		ctx := context.Background()
		prefix := srv.UniquePrefix("layout")
		b := srv.New(t, prefix)
		for _, name := range []string{chunk, "ns/a/vm/100/owner", "ns/a/vm/100/2024-03-01T10:00:00Z/index.json.blob", ".lock"} {
			if err := b.WriteFile(ctx, name, []byte("x")); err != nil {
				t.Fatal(err)
			}
		}
		want := []string{
			prefix + "/" + chunk,
			prefix + "/.cnt/.lock",
			prefix + "/.cnt/ns/a/vm/100/2024-03-01T10:00:00Z/index.json.blob",
			prefix + "/.cnt/ns/a/vm/100/owner",
		}
		if got := listKeys(t, srv, prefix+"/"); !slices.Equal(got, want) {
			t.Fatalf("keys = %q\nwant %q", got, want)
		}
		// A slash-wrapped prefix is the same datastore.
		b2 := srv.New(t, "/"+prefix+"/")
		if data, err := b2.ReadFile(ctx, "ns/a/vm/100/owner"); err != nil || string(data) != "x" {
			t.Fatalf("ReadFile via /prefix/ = %q, %v", data, err)
		}
		if got, want := b.String(), "s3://"+srv.Bucket()+"/"+prefix+" ("+srv.Endpoint()+")"; got != want {
			t.Errorf("String() = %q, want %q", got, want)
		}
		if f := b.Features(); f.AtomicRename || !f.ImplicitDirs || !f.RoundTrips {
			t.Errorf("Features() = %+v", f)
		}
	})
}

// TestPrefixIsolation: two datastores in one bucket, one prefix a string
// prefix of the other, never see each other.
func TestPrefixIsolation(t *testing.T) {
	servers(t, func(t *testing.T, srv *s3test.Server) {
		ctx := context.Background()
		base := srv.UniquePrefix("iso")
		one, two := srv.New(t, base), srv.New(t, base+"x")
		for _, b := range []*s3.S3{one, two} {
			for _, name := range []string{chunk, "vm/100/owner", "ns/a/vm/1/owner"} {
				if err := b.WriteFile(ctx, name, []byte(b.Prefix())); err != nil {
					t.Fatal(err)
				}
			}
		}
		count := func(b *s3.S3) int {
			n := 0
			if err := b.Walk(ctx, "", func(backend.FileInfo) error { n++; return nil }); err != nil {
				t.Fatal(err)
			}
			return n
		}
		if n := count(one); n != 3 {
			t.Fatalf("Walk(root) of %s = %d files, want 3", one, n)
		}
		fis, err := one.List(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(fis) != 3 { // .chunks, ns, vm
			t.Fatalf("List(root) = %+v", fis)
		}
		if err := one.RemoveAll(ctx, "ns"); err != nil {
			t.Fatal(err)
		}
		if err := one.RemoveAll(ctx, ".chunks"); err != nil {
			t.Fatal(err)
		}
		if n := count(two); n != 3 {
			t.Fatalf("RemoveAll in %s touched %s: %d files left", one, two, n)
		}
		if data, err := two.ReadFile(ctx, "ns/a/vm/1/owner"); err != nil || string(data) != two.Prefix() {
			t.Fatalf("ReadFile in other prefix = %q, %v", data, err)
		}
		if n := count(one); n != 1 {
			t.Fatalf("Walk(root) of %s after RemoveAll = %d files, want 1", one, n)
		}
	})
}

func TestCheckBucket(t *testing.T) {
	servers(t, func(t *testing.T, srv *s3test.Server) {
		ctx := context.Background()
		if err := srv.New(t, "check").CheckBucket(ctx); err != nil {
			t.Fatalf("CheckBucket = %v", err)
		}

		cfg := srv.Config("check")
		cfg.Bucket = "no-such-bucket"
		b, err := s3.New(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.CheckBucket(ctx); !errors.Is(err, s3.ErrBucketNotFound) {
			t.Errorf("CheckBucket(missing bucket) = %v, want ErrBucketNotFound", err)
		} else {
			t.Log(err)
		}

		if strings.Contains(t.Name(), "versitygw") { // gofakes3 ignores signatures
			const wrong = "wrong-secret-value"
			bad := srv.New(t, "check", func(o *awss3.Options) {
				o.Credentials = credentials.NewStaticCredentialsProvider(s3test.AccessKey, wrong, "")
			})
			err := bad.CheckBucket(ctx)
			if !errors.Is(err, s3.ErrAccessDenied) {
				t.Errorf("CheckBucket(bad secret) = %v, want ErrAccessDenied", err)
			} else if !strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") || strings.Contains(err.Error(), wrong) {
				t.Errorf("CheckBucket(bad secret) message: %v", err)
			} else {
				t.Log(err)
			}
		}
	})

	// Nothing listens on a port we just closed.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := s3.Config{Endpoint: "http://user:hunter2@" + addr, Bucket: "b", Region: "us-east-1", PathStyle: true}
	if _, err := s3.New(context.Background(), cfg); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("New(endpoint with userinfo) = %v, want an error without the secret", err)
	}
	cfg.Endpoint = "http://" + addr
	b, err := s3.New(context.Background(), cfg, func(o *awss3.Options) {
		o.Credentials = credentials.NewStaticCredentialsProvider("ak", "sk", "")
	})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = b.CheckBucket(context.Background())
	if !errors.Is(err, s3.ErrUnreachable) {
		t.Errorf("CheckBucket(unreachable) = %v, want ErrUnreachable", err)
	} else {
		t.Log(err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("CheckBucket(unreachable) took %v", d)
	}
}

// TestConcurrentCreate: many goroutines through a small semaphore.
func TestConcurrentCreate(t *testing.T) {
	srv := s3test.StartFake(t)
	cfg := srv.Config(srv.UniquePrefix("conc"))
	cfg.MaxInFlight = 4
	b, err := s3.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	errs := make(chan error, 200)
	for i := 0; i < 200; i++ {
		go func() {
			_, err := b.CreateFile(ctx, ".chunks/0000/"+strings.Repeat("0", 60)+string(rune('a'+i%26))+string(rune('a'+i/26)), []byte("x"))
			errs <- err
		}()
	}
	for i := 0; i < 200; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	if err := b.Walk(ctx, ".chunks", func(backend.FileInfo) error { n++; return nil }); err != nil || n != 200 {
		t.Fatalf("Walk = %d, %v", n, err)
	}
}

func TestNewErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := s3.New(ctx, s3.Config{}); err == nil {
		t.Error("New without bucket succeeded")
	}
	if _, err := s3.New(ctx, s3.Config{Bucket: "b", Endpoint: "http://[::1"}); err == nil {
		t.Error("New with a bad endpoint succeeded")
	}
}

// TestRetriesFlakyServer: a server that throttles (503 SlowDown) or drops
// the connection on a fifth of all requests. Every operation must still
// succeed, well past the SDK's default retry token bucket (~100 retries).
func TestRetriesFlakyServer(t *testing.T) {
	mem := s3mem.New()
	if err := mem.CreateBucket("flaky"); err != nil {
		t.Fatal(err)
	}
	fake := gofakes3.New(mem).Server()
	var n, failed atomic.Int64
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch n.Add(1) % 10 {
		case 1:
			failed.Add(1)
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`)
			return
		case 6:
			failed.Add(1)
			if hj, ok := w.(http.Hijacker); ok {
				if conn, _, err := hj.Hijack(); err == nil {
					_ = conn.Close() // connection reset mid-request
					return
				}
			}
		}
		fake.ServeHTTP(w, r)
	}))
	defer ts.Close()

	b, err := s3.New(context.Background(), s3.Config{
		Endpoint: ts.URL, Region: "us-east-1", Bucket: "flaky", Prefix: "p", PathStyle: true,
	}, func(o *awss3.Options) {
		o.Credentials = credentials.NewStaticCredentialsProvider("ak", "sk", "")
	})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	const files = 300
	errs := make(chan error, files)
	for i := 0; i < files; i++ {
		go func() {
			name := fmt.Sprintf(".chunks/%04x/%064x", i, i)
			if _, err := b.CreateFile(ctx, name, []byte(name)); err != nil {
				errs <- err
				return
			}
			data, err := b.ReadFile(ctx, name)
			if err == nil && string(data) != name {
				err = fmt.Errorf("%s: read %q", name, data)
			}
			errs <- err
		}()
	}
	for i := 0; i < files; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if err := b.RemoveAll(ctx, ".chunks"); err != nil {
		t.Fatal(err)
	}
	if fis, err := b.List(ctx, ""); err != nil || len(fis) != 0 {
		t.Fatalf("List(root) after RemoveAll = %v, %v", fis, err)
	}
	t.Logf("%d of %d requests failed and were retried", failed.Load(), n.Load())
}

func TestRemoveFilesBatches(t *testing.T) {
	srv := s3test.StartFake(t)
	b := srv.New(t, srv.UniquePrefix("rmfiles"))
	ctx := context.Background()
	var names []string
	for i := 0; i < 1205; i++ {
		n := fmt.Sprintf("ns/a/vm/1/f%04d", i)
		if err := b.WriteFile(ctx, n, []byte("x")); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			names = append(names, n)
		}
	}
	names = append(names, "ns/a/vm/1/missing")
	if err := b.RemoveFiles(ctx, names); err != nil {
		t.Fatal(err)
	}
	left, err := b.List(ctx, "ns/a/vm/1")
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 602 {
		t.Fatalf("%d files left, want 602", len(left))
	}
	if err := b.RemoveFiles(ctx, []string{"../x"}); !errors.Is(err, backend.ErrInvalidPath) {
		t.Fatalf("invalid path: %v", err)
	}
}
