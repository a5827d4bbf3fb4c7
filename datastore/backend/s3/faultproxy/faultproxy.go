// Package faultproxy is an HTTP reverse proxy that injects the faults S3
// clients meet in reality — 503 SlowDown, 500 InternalError, connection
// resets and slow responses — at configurable rates, between pbsq and a real
// S3 server in tests.
package faultproxy

import (
	"context"
	"fmt"
	"io"
	"log"
	"math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// Rates are probabilities per request (0..1); their sum must be ≤ 1.
type Rates struct {
	SlowDown float64 // 503 SlowDown before reaching the server
	Internal float64 // 500 InternalError before reaching the server
	Reset    float64 // connection closed without a response
	// ResetAfter: the request reaches the server, then the connection is
	// closed before the response: the client cannot know it succeeded.
	ResetAfter float64
	Slow       float64 // response delayed by SlowDelay
	SlowDelay  time.Duration
}

// Total is the share of requests that fail (slow ones do not).
func (r Rates) Total() float64 { return r.SlowDown + r.Internal + r.Reset + r.ResetAfter }

// Stats counts what the proxy did.
type Stats struct {
	Requests, SlowDown, Internal, Reset, ResetAfter, Slow int64
}

// Proxy is a running fault-injecting proxy.
type Proxy struct {
	srv   *httptest.Server
	proxy *httputil.ReverseProxy
	mu    sync.Mutex
	rates Rates
	rng   *rand.Rand
	stats struct {
		requests, slowDown, internal, reset, resetAfter, slow atomic.Int64
	}
	logMu sync.Mutex
	kinds map[string]int64
	log   []Entry

	// Open client connections and requests in flight (WaitQuiet).
	quietMu  sync.Mutex
	conns    int
	inFlight int
	quiet    chan struct{} // closed when both reach zero; nil while they are
}

// Entry is one request the proxy received.
type Entry struct {
	Time time.Time
	Kind string // see Kind
	Path string // URL path: /bucket/key with path-style addressing
}

// Kind names the S3 operation of a request, for Counts: "DeleteObjects",
// "DeleteObject", "ListObjects", "CopyObject", "PutObject", "GetObject",
// "HeadObject", or the HTTP method otherwise.
func Kind(r *http.Request) string {
	q := r.URL.Query()
	switch {
	case r.Method == http.MethodPost && q.Has("delete"):
		return "DeleteObjects"
	case r.Method == http.MethodDelete:
		return "DeleteObject"
	case r.Method == http.MethodGet && q.Has("list-type"):
		return "ListObjects"
	case r.Method == http.MethodPut && r.Header.Get("X-Amz-Copy-Source") != "":
		return "CopyObject"
	case r.Method == http.MethodPut:
		return "PutObject"
	case r.Method == http.MethodGet:
		return "GetObject"
	case r.Method == http.MethodHead:
		return "HeadObject"
	}
	return r.Method
}

// Counts returns the number of requests per Kind so far.
func (p *Proxy) Counts() map[string]int64 {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	m := make(map[string]int64, len(p.kinds))
	for k, v := range p.kinds {
		m[k] = v
	}
	return m
}

// Log returns every request so far, in order of arrival.
func (p *Proxy) Log() []Entry {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	return append([]Entry(nil), p.log...)
}

// ResetLog forgets Counts and Log (not Stats).
func (p *Proxy) ResetLog() {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	p.kinds, p.log = nil, nil
}

func (p *Proxy) record(r *http.Request) {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	if p.kinds == nil {
		p.kinds = make(map[string]int64)
	}
	k := Kind(r)
	p.kinds[k]++
	p.log = append(p.log, Entry{Time: time.Now(), Kind: k, Path: r.URL.Path})
}

// New starts a proxy on a loopback port in front of target (an http URL).
func New(target string, rates Rates, seed int64) (*Proxy, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("faultproxy target %q: %w", target, err)
	}
	if rates.Total()+rates.Slow > 1 {
		return nil, fmt.Errorf("faultproxy: rates add up to more than 1")
	}
	p := &Proxy{rates: rates, rng: rand.New(rand.NewSource(seed))}
	p.proxy = &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(u)
		// The SDK signs the Host header; keep the client's.
		r.Out.Host = r.In.Host
	}}
	p.proxy.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		w.WriteHeader(http.StatusBadGateway)
	}
	// A client that went away mid-response is expected (tests kill them).
	p.proxy.ErrorLog = log.New(io.Discard, "", 0)
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(p.serve))
	p.srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			p.busy(&p.conns, 1)
		case http.StateClosed, http.StateHijacked:
			p.busy(&p.conns, -1)
		}
	}
	p.srv.Start()
	return p, nil
}

// busy adds d to one of the quiet counters.
func (p *Proxy) busy(n *int, d int) {
	p.quietMu.Lock()
	defer p.quietMu.Unlock()
	*n += d
	switch {
	case p.conns == 0 && p.inFlight == 0:
		if p.quiet != nil {
			close(p.quiet)
			p.quiet = nil
		}
	case p.quiet == nil:
		p.quiet = make(chan struct{})
	}
}

// WaitQuiet waits until no client connection is open and no request is in
// flight. Requests go on to the server even when their client hangs up, so
// once a killed client's connections are closed, everything it sent has
// reached the server and completed there, as a re-run after a crash finds
// it in reality (a worker's task is retried long after its death).
func (p *Proxy) WaitQuiet(ctx context.Context) error {
	p.quietMu.Lock()
	ch := p.quiet
	p.quietMu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("faultproxy: still busy: %w", ctx.Err())
	}
}

// URL is the proxy's endpoint, to give pbsq instead of the server's.
func (p *Proxy) URL() string { return p.srv.URL }

// SetRates changes the rates, e.g. to heal the network mid-test.
func (p *Proxy) SetRates(r Rates) {
	p.mu.Lock()
	p.rates = r
	p.mu.Unlock()
}

// Stats returns the counts so far.
func (p *Proxy) Stats() Stats {
	return Stats{
		Requests: p.stats.requests.Load(), SlowDown: p.stats.slowDown.Load(), Internal: p.stats.internal.Load(),
		Reset: p.stats.reset.Load(), ResetAfter: p.stats.resetAfter.Load(), Slow: p.stats.slow.Load(),
	}
}

// Close stops the proxy.
func (p *Proxy) Close() { p.srv.Close() }

func (p *Proxy) roll() (float64, Rates) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rng.Float64(), p.rates
}

const s3Error = `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>%s</Message><RequestId>faultproxy</RequestId></Error>`

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	p.busy(&p.inFlight, 1)
	defer p.busy(&p.inFlight, -1)
	p.stats.requests.Add(1)
	p.record(r)
	x, rates := p.roll()
	switch {
	case x < rates.SlowDown:
		p.stats.slowDown.Add(1)
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, s3Error, "SlowDown", "Please reduce your request rate.")
		return
	case x < rates.SlowDown+rates.Internal:
		p.stats.internal.Add(1)
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprintf(w, s3Error, "InternalError", "We encountered an internal error. Please try again.")
		return
	case x < rates.SlowDown+rates.Internal+rates.Reset:
		p.stats.reset.Add(1)
		hangUp(w)
		return
	case x < rates.Total():
		p.stats.resetAfter.Add(1)
		rec := httptest.NewRecorder()
		p.proxy.ServeHTTP(rec, detached(r))
		hangUp(w)
		return
	case x < rates.Total()+rates.Slow:
		p.stats.slow.Add(1)
		select {
		case <-time.After(rates.SlowDelay):
		case <-r.Context().Done():
			return
		}
	}
	p.proxy.ServeHTTP(plainWriter{w}, detached(r))
}

// detached lets the server see a request through, whatever becomes of its
// client: requests that reached a server complete there.
func detached(r *http.Request) *http.Request {
	return r.WithContext(context.WithoutCancel(r.Context()))
}

// plainWriter hides the connection's CloseNotifier, through which
// ReverseProxy would otherwise cancel a detached request when its client
// hangs up.
type plainWriter struct{ http.ResponseWriter }

// hangUp closes the client connection with a TCP reset and no response.
func hangUp(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic("faultproxy: response writer cannot be hijacked")
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}
