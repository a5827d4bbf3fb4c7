package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/hibiken/asynq"
	"github.com/hibiken/asynqmon"
	"github.com/pbsq/pbsq/internal/tick"
	"github.com/spf13/cobra"
)

func init() { extraCommands = append(extraCommands, (*app).serveCmd) }

// serveState is what a running `pbsq serve` tells other pbsq processes of
// the same config: where its Redis is, and its URLs.
type serveState struct {
	PID       int    `json:"pid"`
	Redis     string `json:"redis"`
	Embedded  bool   `json:"embedded"`
	Metrics   string `json:"metrics,omitempty"`
	Dashboard string `json:"dashboard,omitempty"`
	// TaskKeyFile is the generated key of the embedded default.
	TaskKeyFile string `json:"task-key-file,omitempty"`
}

// serveStateDirs are where the state file may go, in order: the user's
// runtime dir ($XDG_RUNTIME_DIR/pbsq), then /run/pbsq/serve for root or
// the user's cache dir otherwise. Each is made 0700 and must belong to
// this user and be writable by it alone: never a shared $TMPDIR, where
// another user could plant a state file or pre-create the directory.
func serveStateDirs() []string {
	var dirs []string
	if run := os.Getenv("XDG_RUNTIME_DIR"); filepath.IsAbs(run) {
		dirs = append(dirs, filepath.Join(run, "pbsq"))
	}
	if os.Geteuid() == 0 {
		return append(dirs, "/run/pbsq/serve")
	}
	if cache, err := os.UserCacheDir(); err == nil && filepath.IsAbs(cache) {
		dirs = append(dirs, filepath.Join(cache, "pbsq", "run"))
	}
	return dirs
}

// serveStateName is the state file's name, keyed by the config's path so
// that serves of different configs do not meet.
func (a *app) serveStateName() string {
	abs, err := filepath.Abs(a.configPath)
	if err != nil {
		abs = a.configPath
	}
	sum := sha256.Sum256([]byte(abs))
	return "serve-" + hex.EncodeToString(sum[:6]) + ".json"
}

// maxServeState bounds what is read of a state file.
const maxServeState = 64 << 10

// readServeState returns the state of a live `pbsq serve` of this config,
// or nil; state files of dead processes are ignored, and so are (with a
// warning) files or directories another user could have written.
func (a *app) readServeState() (*serveState, string, error) {
	name := a.serveStateName()
	for _, dir := range serveStateDirs() {
		p := filepath.Join(dir, name)
		d, err := openPrivateDir(dir, false)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			a.log.Warn("ignoring serve state directory", "err", err)
			continue
		}
		data, err := readPrivateFile(d, name, maxServeState)
		d.Close()
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			a.log.Warn("ignoring serve state file", "path", p, "err", err)
			continue
		}
		var st serveState
		if err := json.Unmarshal(data, &st); err != nil || st.Redis == "" {
			a.log.Warn("ignoring unreadable serve state file", "path", p, "err", err)
			continue
		}
		if !processAlive(st.PID) {
			a.log.Debug("ignoring stale serve state file", "path", p, "pid", st.PID)
			continue
		}
		return &st, p, nil
	}
	return nil, "", nil
}

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// writeServeState writes st to the first state directory that takes it.
func (a *app) writeServeState(st serveState) (string, error) {
	data, _ := json.MarshalIndent(st, "", "  ")
	name := a.serveStateName()
	var errs []error
	for _, dir := range serveStateDirs() {
		d, err := openPrivateDir(dir, true)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		err = writeFileAtomicAt(d, name, append(data, '\n'), 0o600)
		d.Close()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		return filepath.Join(dir, name), nil
	}
	if len(errs) == 0 {
		errs = append(errs, errors.New("no private directory: set XDG_RUNTIME_DIR"))
	}
	return "", fmt.Errorf("serve state: %w", errors.Join(errs...))
}

func (a *app) serveCmd() *cobra.Command {
	var f workerFlags
	var dashListen string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Embedded default: Redis (in-process unless configured), a worker, /metrics and the asynq dashboard",
		Long: `serve runs everything on one host: a worker, /metrics and the asynq web
dashboard (at /monitoring on the same listener, or on dashboard.listen /
--dashboard-listen).

The dashboard is read-only unless dashboard.read-only is false, which needs
dashboard.token-file; changes are accepted only from the dashboard's own
origin. It shares the /metrics listener only while that is loopback: a
metrics.listen open to the network does not open the dashboard.

Without redis in the config it runs an in-process Redis on a loopback port:
tasks then live in memory and are lost when serve stops. Other pbsq commands
of the same config (enqueue, tasks) find it through a state file in a
directory only this user can write ($XDG_RUNTIME_DIR/pbsq, or /run/pbsq/serve
for root), removed on exit.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if st, p, err := a.readServeState(); err != nil {
				return err
			} else if st != nil {
				return usagef("pbsq serve is already running for %s (pid %d, state %s, dashboard %s)", a.configPath, st.PID, p, st.Dashboard)
			}
			st := serveState{PID: os.Getpid()}
			var conn asynq.RedisConnOpt
			if a.cfg.Redis.Configured() {
				conn = a.configuredQueue()
				st.Redis = redisLabel(conn)
			} else {
				mr, err := miniredis.Run()
				if err != nil {
					return fmt.Errorf("embedded redis: %w", err)
				}
				defer mr.Close()
				stopClock := tickMiniredis(mr)
				defer stopClock()
				conn = asynq.RedisClientOpt{Addr: mr.Addr()}
				st.Redis, st.Embedded = mr.Addr(), true
				a.log.Warn("no Redis configured: using an in-process Redis; it is NOT durable, queued and finished tasks are lost when serve stops (configure redis.addr for production)",
					"addr", mr.Addr(), "config", a.configPath)
			}

			if err := a.serveTaskKey(); err != nil {
				return err
			}
			st.TaskKeyFile = a.serveKeyFile
			rt, err := a.startWorker(ctx, conn, f)
			if err != nil {
				return err
			}
			defer rt.shutdown()

			dc := a.cfg.Dashboard
			dashAddr := dc.Listen
			if dashListen != "" {
				if err := dc.check("--dashboard-listen", dashListen); err != nil {
					return usageError{err}
				}
				dashAddr = dashListen
			}
			addr := a.listenAddr(f.listen)
			if addr == "off" && (dashAddr == "" || dashAddr == "off") {
				return usagef("serve needs --listen for /metrics and the dashboard")
			}
			var token []byte
			if dc.TokenFile != "" {
				if token, err = readToken(dc.TokenFile); err != nil {
					return usageError{err}
				}
			}
			mux := http.NewServeMux()
			mux.Handle("/metrics", rt.metricsHandler())
			rt.handleLogs(mux)
			var dashMux *http.ServeMux
			switch {
			case dashAddr == "off":
			case dashAddr != "":
				dashMux = http.NewServeMux()
			case isLoopbackAddr(addr):
				dashMux = mux
			default:
				a.log.Warn("dashboard not served: metrics.listen is not loopback and opening /metrics does not open the dashboard; set dashboard.listen (with dashboard.token-file) to serve it",
					"metrics", addr)
			}
			if dashMux != nil {
				dash := asynqmon.New(asynqmon.Options{RootPath: "/monitoring", RedisConnOpt: conn, ReadOnly: dc.readOnly()})
				defer dash.Close()
				loopback := isLoopbackAddr(addr)
				if dashAddr != "" {
					loopback = isLoopbackAddr(dashAddr)
				}
				guarded := newDashboardGuard(dc.readOnly(), token, loopback).wrap(dash)
				dashMux.Handle("/monitoring", guarded)
				dashMux.Handle("/monitoring/", guarded)
			}

			var servers []*http.Server
			defer func() { shutdownHTTP(servers...) }()
			if addr != "off" {
				srv, bound, err := serveHTTP(addr, mux)
				if err != nil {
					return err
				}
				servers = append(servers, srv)
				st.Metrics = "http://" + bound + "/metrics"
				if dashMux == mux {
					st.Dashboard = "http://" + bound + "/monitoring/"
				}
			}
			if dashMux != nil && dashMux != mux {
				dsrv, dbound, err := serveHTTP(dashAddr, dashMux)
				if err != nil {
					return err
				}
				servers = append(servers, dsrv)
				st.Dashboard = "http://" + dbound + "/monitoring/"
				dashMux.Handle("/{$}", indexHandler(st))
			}
			if dashMux == mux {
				// The index names Redis: only beside the dashboard it links.
				mux.Handle("/{$}", indexHandler(st))
			}

			statePath, err := a.writeServeState(st)
			if err != nil {
				return err
			}
			defer os.Remove(statePath)
			fmt.Printf("pbsq serve: pid %d, redis %s%s\n", st.PID, st.Redis, map[bool]string{true: " (in-process, not durable)", false: ""}[st.Embedded])
			fmt.Printf("  dashboard: %s%s\n  metrics:   %s\n  state:     %s\n", orNone(st.Dashboard), map[bool]string{true: " (read-only)", false: ""}[a.cfg.Dashboard.readOnly()], orNone(st.Metrics), statePath)
			fmt.Println("  stop with Ctrl-C or SIGTERM; running tasks get the shutdown timeout")
			<-ctx.Done()
			// The state goes first, so no new command picks a dying Redis.
			_ = os.Remove(statePath)
			a.log.Info("stopping serve", "timeout", f.shutdownTimeout)
			return nil
		},
	}
	f.register(cmd, "address of /metrics and /monitoring (the dashboard)")
	cmd.Flags().StringVar(&dashListen, "dashboard-listen", "", "serve the dashboard on its own address instead (default dashboard.listen; \"off\": none)")
	return cmd
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// tickMiniredis lets keys with a TTL expire: miniredis only ages them when
// told to.
func tickMiniredis(mr *miniredis.Miniredis) (stop func()) {
	return tick.Start(context.Background(), time.Second, func() bool {
		mr.FastForward(time.Second)
		return true
	})
}

var indexPage = template.Must(template.New("index").Parse(`<!doctype html>
<title>pbsq</title>
<h1>pbsq serve</h1>
<ul>
<li><a href="{{.Dashboard}}">asynq dashboard</a> (queue, tasks, results)</li>
<li><a href="{{.Metrics}}">Prometheus metrics</a></li>
</ul>
<p>Redis: {{.Redis}}{{if .Embedded}} — in-process, <b>not durable</b>{{end}}</p>
`))

func indexHandler(st serveState) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_ = indexPage.Execute(w, st)
	})
}
