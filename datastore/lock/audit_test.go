package lock_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

// auditBackend grants each lock ID once at a time; its leases can be made
// to look lost.
type auditBackend struct {
	mu   sync.Mutex
	held map[string]bool
	lost chan struct{}
}

type auditLease struct {
	b    *auditBackend
	id   string
	lost chan struct{}
}

func (l *auditLease) Release() error {
	l.b.mu.Lock()
	defer l.b.mu.Unlock()
	delete(l.b.held, l.id)
	return nil
}

func (l *auditLease) Lost() <-chan struct{} { return l.lost }

func (b *auditBackend) TryLock(_ context.Context, req lock.Request, _ lock.Holder) (lock.Lease, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.held[req.ID()] {
		return nil, &lock.BusyError{Request: req, Conflict: req}
	}
	b.held[req.ID()] = true
	return &auditLease{b: b, id: req.ID(), lost: b.lost}, nil
}

func (b *auditBackend) Holders(context.Context) ([]lock.Held, error) { return nil, nil }
func (b *auditBackend) Close() error                                 { return nil }

type auditLog struct {
	mu  sync.Mutex
	evs []lock.AuditEvent
}

func (a *auditLog) add(e lock.AuditEvent) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.evs = append(a.evs, e)
}

func (a *auditLog) events() []lock.AuditEvent {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]lock.AuditEvent(nil), a.evs...)
}

func TestAuditGrantReleaseBusy(t *testing.T) {
	b := &auditBackend{held: map[string]bool{}}
	var log auditLog
	l := lock.New(b, lock.Options{Wait: -1, Audit: log.add, Holder: lock.Holder{Host: "h", PID: 7}}).WithTask("t1")
	ctx := context.Background()
	ns := name.MustNamespace("a/b")

	before := time.Now()
	g, err := l.Namespace(ctx, "main", ns, lock.Exclusive)
	if err != nil {
		t.Fatal(err)
	}
	// A second holder is refused at once: one busy event, with its holder.
	other := l.WithTask("t2")
	if _, err := other.Namespace(ctx, "main", ns, lock.Shared); !errors.Is(err, lock.ErrBusy) {
		t.Fatalf("second lock: %v", err)
	}
	if err := g.Release(); err != nil {
		t.Fatal(err)
	}
	_ = g.Release() // idempotent: no second event
	after := time.Now()

	evs := log.events()
	if len(evs) != 3 {
		t.Fatalf("%d events, want grant, busy, release: %+v", len(evs), evs)
	}
	grant, busy, rel := evs[0], evs[1], evs[2]
	if grant.Op != lock.AuditGrant || rel.Op != lock.AuditRelease || busy.Op != lock.AuditBusy {
		t.Fatalf("ops %s %s %s", grant.Op, busy.Op, rel.Op)
	}
	if grant.Guard == 0 || rel.Guard != grant.Guard || busy.Guard != 0 {
		t.Errorf("guard ids: grant %d release %d busy %d", grant.Guard, rel.Guard, busy.Guard)
	}
	if grant.Holder.TaskID != "t1" || grant.Holder.PID != 7 || busy.Holder.TaskID != "t2" || rel.Holder != grant.Holder {
		t.Errorf("holders: %+v %+v %+v", grant.Holder, busy.Holder, rel.Holder)
	}
	if grant.Request.ID() != lock.NamespaceRequest("main", ns, lock.Exclusive).ID() || grant.Request.Mode != lock.Exclusive {
		t.Errorf("request %s", grant.Request)
	}
	if grant.Time.Before(before) || rel.Time.Before(grant.Time) || after.Before(rel.Time) {
		t.Errorf("times out of order: %v %v %v %v", before, grant.Time, rel.Time, after)
	}

	// The root namespace is never locked, so nothing is audited for it.
	if g, err := l.Namespace(ctx, "main", name.Root, lock.Shared); err != nil || g.Release() != nil {
		t.Fatal(err)
	}
	if n := len(log.events()); n != 3 {
		t.Errorf("root guard audited: %d events", n)
	}
}

func TestAuditLostLease(t *testing.T) {
	b := &auditBackend{held: map[string]bool{}, lost: make(chan struct{})}
	var log auditLog
	l := lock.New(b, lock.Options{Wait: -1, Audit: log.add})
	g, err := l.Namespace(context.Background(), "main", name.MustNamespace("a"), lock.Shared)
	if err != nil {
		t.Fatal(err)
	}
	close(b.lost)
	deadline := time.Now().Add(5 * time.Second)
	for len(log.events()) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("no lost event: %+v", log.events())
		}
		time.Sleep(time.Millisecond)
	}
	_ = g.Release()
	evs := log.events()
	if len(evs) != 3 || evs[1].Op != lock.AuditLost || evs[2].Op != lock.AuditRelease || evs[1].Guard != evs[0].Guard {
		t.Fatalf("events %+v, want grant, lost, release of one guard", evs)
	}
}

// TestAuditCancelledWait: a wait that ends with the context, while the lock
// was refused, counts as a busy refusal.
func TestAuditCancelledWait(t *testing.T) {
	b := &auditBackend{held: map[string]bool{}}
	var log auditLog
	l := lock.New(b, lock.Options{Wait: time.Minute, Audit: log.add})
	ns := name.MustNamespace("a")
	g, err := l.Namespace(context.Background(), "main", ns, lock.Exclusive)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	if _, err := l.Namespace(ctx, "main", ns, lock.Exclusive); err == nil {
		t.Fatal("granted twice")
	}
	evs := log.events()
	if len(evs) != 2 || evs[1].Op != lock.AuditBusy || evs[1].Waited < 100*time.Millisecond {
		t.Fatalf("events %+v, want grant then busy after the wait", evs)
	}
}
