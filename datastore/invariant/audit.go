package invariant

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

// Audit collects lock.AuditEvents (Add is a lock.Options.Audit) from one
// or many processes and checks them for overlaps the lock semantics forbid.
type Audit struct {
	mu  sync.Mutex
	evs []AuditRecord
	w   *json.Encoder // optional log file
	f   *os.File
}

// AuditRecord is an audit event in a form that survives a file: holders
// of different processes are told apart by host and PID.
type AuditRecord struct {
	Op     string `json:"op"`
	TimeNS int64  `json:"t"`
	Store  string `json:"store"`
	Kind   string `json:"kind"`
	Mode   string `json:"mode"`
	// Path is the lock's namespace, group or snapshot path, as in
	// lock.Request.ID.
	NS       string `json:"ns"`
	Group    string `json:"group,omitempty"`
	Snapshot string `json:"snapshot,omitempty"`
	Host     string `json:"host"`
	PID      int    `json:"pid"`
	Task     string `json:"task"`
	Guard    uint64 `json:"guard,omitempty"`
	WaitedNS int64  `json:"waited,omitempty"`
}

// NewAuditFile returns an Audit that also appends every event to path as
// JSON lines, for a worker process whose audit the test reads afterwards.
func NewAuditFile(path string) (*Audit, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	return &Audit{w: json.NewEncoder(f), f: f}, nil
}

// Close closes the log file, if any.
func (a *Audit) Close() error {
	if a.f == nil {
		return nil
	}
	return a.f.Close()
}

// Add records one event; it is safe for concurrent use.
func (a *Audit) Add(e lock.AuditEvent) {
	req := e.Request.Normalize()
	r := AuditRecord{
		Op: e.Op.String(), TimeNS: e.Time.UnixNano(),
		Store: req.Store, Kind: req.Kind.String(), Mode: req.Mode.String(), NS: req.NS.String(),
		Host: e.Holder.Host, PID: e.Holder.PID, Task: e.Holder.TaskID,
		Guard: e.Guard, WaitedNS: int64(e.Waited),
	}
	switch req.Kind {
	case lock.Group:
		r.Group = req.Group.String()
	case lock.Snapshot:
		r.Group, r.Snapshot = req.Snapshot.Group.String(), req.Snapshot.TimeString()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.evs = append(a.evs, r)
	if a.w != nil {
		_ = a.w.Encode(r) // one write(2) per line: whole lines survive a kill
	}
}

// ReadAuditFile adds the events of a log written by NewAuditFile.
func (a *Audit) ReadAuditFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	defer f.Close()
	return a.read(f)
}

func (a *Audit) read(rd io.Reader) error {
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	a.mu.Lock()
	defer a.mu.Unlock()
	for sc.Scan() {
		var r AuditRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			continue // a line cut short by a kill
		}
		a.evs = append(a.evs, r)
	}
	return sc.Err()
}

// Len is the number of events collected.
func (a *Audit) Len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.evs)
}

// AuditStats summarise lock contention.
type AuditStats struct {
	Grants int
	// Busy: acquisitions that gave up after their retry window.
	Busy int
	// BusyRate is Busy / (Grants + Busy).
	BusyRate float64
	// Contended: acquisitions that found the lock busy at least once and
	// retried (waited 20 ms or more, the first backoff being 25–50 ms).
	Contended int
	// WaitP50, WaitP95, WaitMax: time spent acquiring, over grants and
	// busy refusals alike.
	WaitP50, WaitP95, WaitMax time.Duration
	// Held: grants whose release (or loss) was never recorded.
	Unreleased int
}

func (s AuditStats) String() string {
	return fmt.Sprintf("%d grants, %d busy after the retry window (busy rate %.2f%%), %d had to retry; lock wait p50 %s p95 %s max %s",
		s.Grants, s.Busy, 100*s.BusyRate, s.Contended, s.WaitP50.Round(time.Microsecond), s.WaitP95.Round(time.Microsecond), s.WaitMax.Round(time.Microsecond))
}

// Stats computes the contention figures.
func (a *Audit) Stats() AuditStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	var st AuditStats
	var waits []time.Duration
	ends := map[string]bool{}
	for _, r := range a.evs {
		switch r.Op {
		case "grant":
			st.Grants++
			waits = append(waits, time.Duration(r.WaitedNS))
		case "busy":
			st.Busy++
			waits = append(waits, time.Duration(r.WaitedNS))
		case "release", "lost":
			ends[guardKey(r)] = true
		}
	}
	for _, r := range a.evs {
		if r.Op == "grant" && !ends[guardKey(r)] {
			st.Unreleased++
		}
	}
	if n := st.Grants + st.Busy; n > 0 {
		st.BusyRate = float64(st.Busy) / float64(n)
	}
	for _, w := range waits {
		if w >= 20*time.Millisecond {
			st.Contended++
		}
	}
	sort.Slice(waits, func(i, j int) bool { return waits[i] < waits[j] })
	st.WaitP50, st.WaitP95 = percentile(waits, 0.50), percentile(waits, 0.95)
	if len(waits) > 0 {
		st.WaitMax = waits[len(waits)-1]
	}
	return st
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}

func guardKey(r AuditRecord) string {
	return r.Host + "/" + strconv.Itoa(r.PID) + "/" + strconv.FormatUint(r.Guard, 10)
}

// holding is one lock held by one holder over [start, end).
type holding struct {
	rec        AuditRecord
	req        lock.Request
	chain      []lock.Request
	start, end int64
}

func (h *holding) holder() string {
	return h.rec.Host + "/" + strconv.Itoa(h.rec.PID) + "/" + h.rec.Task
}

func (h *holding) String() string {
	return fmt.Sprintf("%s held by %s [%s, %s]", h.req, h.holder(),
		time.Unix(0, h.start).UTC().Format("15:04:05.000000"), endString(h.end))
}

func endString(ns int64) string {
	if ns == math.MaxInt64 {
		return "never released"
	}
	return time.Unix(0, ns).UTC().Format("15:04:05.000000")
}

// Overlaps returns every pair of locks that two different holders (task
// ids, or processes) held at the same time although the semantics forbid
// it: the same lock in conflicting modes, any lock of a namespace's chain
// (its ancestors, shared), and an exclusive namespace against any lock at
// or below it. A grant without a recorded end counts as held to the end.
func (a *Audit) Overlaps() []string {
	a.mu.Lock()
	recs := append([]AuditRecord(nil), a.evs...)
	a.mu.Unlock()

	end := map[string]int64{}
	for _, r := range recs {
		if r.Op == "release" || r.Op == "lost" {
			k := guardKey(r)
			if e, ok := end[k]; !ok || r.TimeNS < e {
				end[k] = r.TimeNS
			}
		}
	}
	var hs []*holding
	for _, r := range recs {
		if r.Op != "grant" {
			continue
		}
		req, err := r.request()
		if err != nil {
			return []string{fmt.Sprintf("unreadable audit record %+v: %v", r, err)}
		}
		e, ok := end[guardKey(r)]
		if !ok {
			e = math.MaxInt64
		}
		hs = append(hs, &holding{rec: r, req: req, chain: req.Chain(), start: r.TimeNS, end: e})
	}
	sort.Slice(hs, func(i, j int) bool { return hs[i].start < hs[j].start })

	var out []string
	var active []*holding
	for _, h := range hs {
		keep := active[:0]
		for _, o := range active {
			if o.end > h.start {
				keep = append(keep, o)
			}
		}
		active = keep
		for _, o := range active {
			if o.holder() != h.holder() && forbidden(o, h) {
				out = append(out, fmt.Sprintf("%s overlaps %s", o, h))
			}
		}
		active = append(active, h)
	}
	return out
}

// forbidden reports whether two holders may not hold a and b at once.
func forbidden(a, b *holding) bool {
	if a.req.Store != b.req.Store {
		return false
	}
	for _, x := range a.chain {
		for _, y := range b.chain {
			if lock.Conflicts(x, y) {
				return true
			}
		}
	}
	return exclusiveOver(a.req, b.req) || exclusiveOver(b.req, a.req)
}

// exclusiveOver: x is an exclusive namespace lock and y is any lock at or
// below that namespace.
func exclusiveOver(x, y lock.Request) bool {
	return x.Kind == lock.Namespace && x.Mode == lock.Exclusive && !x.NS.IsRoot() && x.NS.Contains(y.NS)
}

// request rebuilds the lock request of a record.
func (r AuditRecord) request() (lock.Request, error) {
	ns, err := name.ParseNamespace(r.NS)
	if err != nil {
		return lock.Request{}, err
	}
	mode := lock.Shared
	if r.Mode == lock.Exclusive.String() {
		mode = lock.Exclusive
	}
	switch r.Kind {
	case lock.Namespace.String():
		return lock.NamespaceRequest(r.Store, ns, mode), nil
	case lock.Group.String():
		g, err := name.ParseGroup(ns, r.Group)
		if err != nil {
			return lock.Request{}, err
		}
		return lock.GroupRequest(r.Store, g), nil
	case lock.Snapshot.String():
		s, err := name.ParseSnapshot(ns, r.Group+"/"+r.Snapshot)
		if err != nil {
			return lock.Request{}, err
		}
		return lock.SnapshotRequest(r.Store, s, mode), nil
	}
	return lock.Request{}, fmt.Errorf("kind %q", r.Kind)
}
