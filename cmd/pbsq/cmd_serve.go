package main

import (
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

// serveStatePaths are where the state file goes: next to the config, or,
// when that directory is not writable, in the runtime dir, keyed by the
// config's path.
func (a *app) serveStatePaths() []string {
	abs, err := filepath.Abs(a.configPath)
	if err != nil {
		abs = a.configPath
	}
	paths := []string{filepath.Join(filepath.Dir(abs), "serve.json")}
	run := os.Getenv("XDG_RUNTIME_DIR")
	if run == "" {
		run = os.TempDir()
	}
	sum := sha256.Sum256([]byte(abs))
	return append(paths, filepath.Join(run, "pbsq", "serve-"+hex.EncodeToString(sum[:6])+".json"))
}

// readServeState returns the state of a live `pbsq serve` of this config,
// or nil; state files of dead processes are ignored.
func (a *app) readServeState() (*serveState, string, error) {
	for _, p := range a.serveStatePaths() {
		data, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, "", fmt.Errorf("serve state %s: %w", p, err)
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

// writeServeState writes st to the first place that takes it.
func (a *app) writeServeState(st serveState) (string, error) {
	data, _ := json.MarshalIndent(st, "", "  ")
	var errs []error
	for _, p := range a.serveStatePaths() {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			errs = append(errs, err)
			continue
		}
		tmp := p + ".tmp"
		if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := os.Rename(tmp, p); err != nil {
			errs = append(errs, err)
			continue
		}
		return p, nil
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
dashboard (at /monitoring on the same listener, or on --dashboard-listen).

Without redis in the config it runs an in-process Redis on a loopback port:
tasks then live in memory and are lost when serve stops. Other pbsq commands
of the same config (enqueue, tasks) find it through a state file next to the
config, removed on exit.`,
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

			dash := asynqmon.New(asynqmon.Options{RootPath: "/monitoring", RedisConnOpt: conn})
			defer dash.Close()
			mux := http.NewServeMux()
			mux.Handle("/metrics", rt.metricsHandler())
			dashMux := mux
			if dashListen != "" {
				dashMux = http.NewServeMux()
			}
			dashMux.Handle("/monitoring", dash)
			dashMux.Handle("/monitoring/", dash)

			var servers []*http.Server
			defer func() { shutdownHTTP(servers...) }()
			addr := a.listenAddr(f.listen)
			if addr == "off" {
				return usagef("serve needs --listen for /metrics and the dashboard")
			}
			srv, bound, err := serveHTTP(addr, mux)
			if err != nil {
				return err
			}
			servers = append(servers, srv)
			st.Metrics = "http://" + bound + "/metrics"
			st.Dashboard = "http://" + bound + "/monitoring/"
			if dashListen != "" {
				dsrv, dbound, err := serveHTTP(dashListen, dashMux)
				if err != nil {
					return err
				}
				servers = append(servers, dsrv)
				st.Dashboard = "http://" + dbound + "/monitoring/"
				dashMux.Handle("/{$}", indexHandler(st))
			}
			mux.Handle("/{$}", indexHandler(st))

			statePath, err := a.writeServeState(st)
			if err != nil {
				return err
			}
			defer os.Remove(statePath)
			fmt.Printf("pbsq serve: pid %d, redis %s%s\n", st.PID, st.Redis, map[bool]string{true: " (in-process, not durable)", false: ""}[st.Embedded])
			fmt.Printf("  dashboard: %s\n  metrics:   %s\n  state:     %s\n", st.Dashboard, st.Metrics, statePath)
			fmt.Println("  stop with Ctrl-C or SIGTERM; running tasks get the shutdown timeout")
			<-ctx.Done()
			// The state goes first, so no new command picks a dying Redis.
			_ = os.Remove(statePath)
			a.log.Info("stopping serve", "timeout", f.shutdownTimeout)
			return nil
		},
	}
	f.register(cmd, "address of /metrics and /monitoring (the dashboard)")
	cmd.Flags().StringVar(&dashListen, "dashboard-listen", "", "serve the dashboard on its own address instead")
	return cmd
}

// tickMiniredis lets keys with a TTL expire: miniredis only ages them when
// told to.
func tickMiniredis(mr *miniredis.Miniredis) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				mr.FastForward(time.Second)
			case <-done:
				return
			}
		}
	}()
	return func() { close(done) }
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
