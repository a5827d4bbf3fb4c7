package main

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// DashboardConfig is the asynq web dashboard of `pbsq serve`.
//
// Exposure rules: the dashboard is read-only unless read-only is false,
// which needs a token file. Without listen it shares the /metrics
// listener only while that is loopback: opening /metrics to the network
// for Prometheus does not open the dashboard. A listen address that is
// not loopback needs a token file too.
type DashboardConfig struct {
	// Listen is the dashboard's own address; "" shares /metrics' listener
	// when that is loopback, "off" serves none.
	Listen string `yaml:"listen,omitempty"`
	// ReadOnly (default true) refuses every request that is not GET/HEAD.
	ReadOnly *bool `yaml:"read-only,omitempty"`
	// TokenFile holds the token (or password) every request must carry,
	// as HTTP Basic password (any user name) or "Authorization: Bearer".
	// Never inline: the config gets copied around.
	TokenFile string `yaml:"token-file,omitempty"`
}

// readOnly is ReadOnly with its default.
func (d DashboardConfig) readOnly() bool { return d.ReadOnly == nil || *d.ReadOnly }

func (d DashboardConfig) validate() error {
	if d.Listen != "" && d.Listen != "off" {
		if _, _, err := net.SplitHostPort(d.Listen); err != nil {
			return fmt.Errorf("dashboard.listen %q: must be host:port or off: %v", d.Listen, err)
		}
	}
	return d.check("dashboard.listen", d.Listen)
}

// check applies the rules that need a token to addr (the configured or
// the flag's dashboard address).
func (d DashboardConfig) check(what, addr string) error {
	if d.TokenFile != "" {
		return nil
	}
	if !d.readOnly() {
		return fmt.Errorf("dashboard.read-only false needs dashboard.token-file: a dashboard that can change the queue needs authentication")
	}
	if addr != "" && addr != "off" && !isLoopbackAddr(addr) {
		return fmt.Errorf("%s %q is not a loopback address: needs dashboard.token-file", what, addr)
	}
	return nil
}

// isLoopbackAddr reports whether host:port only listens on loopback.
// An empty host (":9464") is every interface.
func isLoopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

const (
	maxTokenFile = 4 << 10
	minTokenLen  = 16
)

// readToken reads the dashboard token: a regular file (no symlink) that
// group and others can neither read nor write, holding at least 16 bytes.
func readToken(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("dashboard.token-file %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("dashboard.token-file %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("dashboard.token-file %s: not a regular file", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("dashboard.token-file %s has mode %04o: must be readable by its owner only (chmod 600)", path, fi.Mode().Perm())
	}
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return nil, fmt.Errorf("dashboard.token-file %s: %w", path, err)
	}
	tok := bytes.TrimSpace(b)
	if len(b) > maxTokenFile || len(tok) < minTokenLen || bytes.ContainsAny(tok, "\r\n") {
		return nil, fmt.Errorf("dashboard.token-file %s: must hold one token of %d to %d bytes", path, minTokenLen, maxTokenFile)
	}
	return tok, nil
}

// dashboardGuard protects the dashboard: authentication (when a token is
// set), read-only mode, and a same-origin check on every request that
// could change something, so that a web page the administrator visits
// cannot drive the dashboard with the browser's ambient access.
type dashboardGuard struct {
	readOnly bool
	// tokenSum is the SHA-256 of the token; nil means no authentication.
	tokenSum []byte
	// loopback: the listener is loopback, so the Host header must name
	// loopback too (a rebound DNS name is another site).
	loopback bool
	cop      *http.CrossOriginProtection
}

func newDashboardGuard(readOnly bool, token []byte, loopback bool) *dashboardGuard {
	g := &dashboardGuard{readOnly: readOnly, loopback: loopback, cop: http.NewCrossOriginProtection()}
	if token != nil {
		sum := sha256.Sum256(token)
		g.tokenSum = sum[:]
	}
	return g
}

func (g *dashboardGuard) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if g.loopback && !loopbackHost(r.Host) {
			http.Error(w, "pbsq dashboard: Host must be a loopback address", http.StatusMisdirectedRequest)
			return
		}
		if g.tokenSum != nil && !g.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Basic realm="pbsq dashboard", charset="UTF-8"`)
			http.Error(w, "pbsq dashboard: authentication required", http.StatusUnauthorized)
			return
		}
		if safeMethod(r.Method) {
			h.ServeHTTP(w, r)
			return
		}
		if g.readOnly {
			http.Error(w, "pbsq dashboard is read-only (dashboard.read-only)", http.StatusMethodNotAllowed)
			return
		}
		if err := g.sameOrigin(r); err != nil {
			http.Error(w, "pbsq dashboard: "+err.Error(), http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func safeMethod(m string) bool { return m == http.MethodGet || m == http.MethodHead }

// sameOrigin refuses a cross-site request: by Sec-Fetch-Site or Origin
// (net/http's CrossOriginProtection), and, for old browsers that send
// neither, by Referer.
func (g *dashboardGuard) sameOrigin(r *http.Request) error {
	if err := g.cop.Check(r); err != nil {
		return err
	}
	if r.Header.Get("Origin") != "" || r.Header.Get("Sec-Fetch-Site") != "" {
		return nil
	}
	if ref := r.Header.Get("Referer"); ref != "" {
		u, err := url.Parse(ref)
		if err != nil || u.Host != r.Host {
			return fmt.Errorf("cross-origin request refused (Referer)")
		}
	}
	return nil
}

// authorized compares the request's token with the configured one in
// constant time (over their hashes, so the length does not leak either).
func (g *dashboardGuard) authorized(r *http.Request) bool {
	var got string
	if _, pw, ok := r.BasicAuth(); ok {
		got = pw
	} else if b, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		got = b
	} else {
		return false
	}
	sum := sha256.Sum256([]byte(got))
	return subtle.ConstantTimeCompare(sum[:], g.tokenSum) == 1
}

// loopbackHost reports whether a Host header names loopback.
func loopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
