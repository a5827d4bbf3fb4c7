package s3_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	iofs "io/fs"
	"net"
	"net/http"
	"sync/atomic"
	"syscall"
	"testing"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/pbsq/pbsq/datastore/backend/s3"
	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
)

// lostReply sends matching requests to the server and then drops the
// answer with a connection reset, as a network does that fails after the
// server did the work; the SDK retries, and the retry meets the result.
type lostReply struct {
	inner interface {
		Do(*http.Request) (*http.Response, error)
	}
	match func(*http.Request) bool
	left  atomic.Int32 // replies still to lose
}

func (l *lostReply) Do(r *http.Request) (*http.Response, error) {
	if !l.match(r) || l.left.Add(-1) < 0 {
		return l.inner.Do(r)
	}
	resp, err := l.inner.Do(r)
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return nil, &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
}

func conditional(r *http.Request) bool {
	return r.Method == http.MethodPut && r.Header.Get("If-None-Match") == "*"
}

func lossyBackend(t *testing.T, srv *s3test.Server, lose int32) (*s3.S3, *lostReply) {
	lr := &lostReply{match: conditional}
	lr.left.Store(lose)
	b := srv.New(t, srv.UniquePrefix("lostreply"), func(o *awss3.Options) {
		lr.inner = o.HTTPClient
		o.HTTPClient = lr
	})
	return b, lr
}

// TestCreateFileLostReply: a conditional write whose reply is lost is
// retried by the SDK and answered 412 — by our own object. CreateFile must
// still report it created (the GC lease depends on it: a GC refused by its
// own lease would leave that lease behind for a day), and must not claim
// someone else's object.
func TestCreateFileLostReply(t *testing.T) {
	srv := s3test.StartVersity(t)
	ctx := context.Background()

	b, lr := lossyBackend(t, srv, 1)
	created, err := b.CreateFile(ctx, ".pbsq/gc-running", []byte(`{"id":"mine"}`))
	if err != nil || !created {
		t.Fatalf("CreateFile with a lost reply = %v, %v; want created", created, err)
	}
	if lr.left.Load() >= 0 {
		t.Fatal("no reply was lost: the test tested nothing")
	}
	if got, err := b.ReadFile(ctx, ".pbsq/gc-running"); err != nil || string(got) != `{"id":"mine"}` {
		t.Fatalf("content %q, %v", got, err)
	}

	// Someone else's object, met by a retry: not created.
	other, _ := lossyBackend(t, srv, 0)
	if _, err := other.CreateFile(ctx, "x/owner", []byte("theirs")); err != nil {
		t.Fatal(err)
	}
	if created, err := other.CreateFile(ctx, "x/owner", []byte("theirs")); err != nil || created {
		t.Fatalf("CreateFile of an existing object = %v, %v; want not created", created, err)
	}
	// A retry (reply lost on an attempt that did nothing, as the object
	// existed) meeting different content: not ours.
	lr3 := &lostReply{match: conditional}
	lr3.left.Store(1)
	b3 := srv.New(t, other.Prefix(), func(o *awss3.Options) { lr3.inner = o.HTTPClient; o.HTTPClient = lr3 })
	if created, err := b3.CreateFile(ctx, "x/owner", []byte("mine, different")); err != nil || created {
		t.Fatalf("CreateFile meeting different content after a retry = %v, %v; want not created", created, err)
	}
	if got, _ := other.ReadFile(ctx, "x/owner"); string(got) != "theirs" {
		t.Fatalf("existing object changed to %q", got)
	}
}

// TestRenameLostReply: Rename's conditional copy, retried after a lost
// reply, meets its own copy; the rename must finish, not report the
// target as existing.
func TestRenameLostReply(t *testing.T) {
	srv := s3test.StartVersity(t)
	ctx := context.Background()
	b, lr := lossyBackend(t, srv, 0)
	data := bytes.Repeat([]byte("chunk"), 1000)
	if err := b.WriteFile(ctx, "r/a", data); err != nil {
		t.Fatal(err)
	}
	lr.left.Store(1)
	if err := b.Rename(ctx, "r/a", "r/a.0.bad"); err != nil {
		t.Fatalf("Rename with a lost copy reply: %v", err)
	}
	if lr.left.Load() >= 0 {
		t.Fatal("no reply was lost: the test tested nothing")
	}
	if _, err := b.Stat(ctx, "r/a"); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("source still there: %v", err)
	}
	if got, err := b.ReadFile(ctx, "r/a.0.bad"); err != nil || !bytes.Equal(got, data) {
		t.Errorf("target: %d bytes, %v", len(got), err)
	}
	// An existing target is still refused.
	if err := b.WriteFile(ctx, "r/b", data); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteFile(ctx, "r/c", []byte("other")); err != nil {
		t.Fatal(err)
	}
	if err := b.Rename(ctx, "r/b", "r/c"); !errors.Is(err, iofs.ErrExist) {
		t.Errorf("rename onto an existing file: %v, want ErrExist", err)
	}
}
