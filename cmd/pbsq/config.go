package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/tasks"
	"github.com/pbsq/pbsq/worker"
)

// Config is the YAML config file (docs/DESIGN.md §8).
type Config struct {
	Redis      RedisConfig                `yaml:"redis,omitempty"`
	Locks      LocksConfig                `yaml:"locks,omitempty"`
	Metrics    MetricsConfig              `yaml:"metrics,omitempty"`
	Dashboard  DashboardConfig            `yaml:"dashboard,omitempty"`
	Datastores map[string]DatastoreConfig `yaml:"datastores,omitempty"`
	Schedules  map[string]ScheduleConfig  `yaml:"schedules,omitempty"`
	Security   SecurityConfig             `yaml:"security,omitempty"`

	// path is where the config was read from ("" when none exists yet).
	path string
	// scheds are Schedules as validated when the config was read.
	scheds []worker.Schedule
}

// RedisConfig names the Redis connection; absent means `pbsq serve` runs
// an in-process Redis.
type RedisConfig struct {
	Addr     string          `yaml:"addr,omitempty"`
	DB       int             `yaml:"db,omitempty"`
	Username string          `yaml:"username,omitempty"`
	TLS      bool            `yaml:"tls,omitempty"`
	Sentinel *SentinelConfig `yaml:"sentinel,omitempty"`
	// Password only from PBSQ_REDIS_PASSWORD: secrets stay out of files
	// that get copied around.
	Password string `yaml:"-"`
}

// SentinelConfig is Redis Sentinel failover.
type SentinelConfig struct {
	Master string   `yaml:"master"`
	Addrs  []string `yaml:"addrs"`
}

// Configured reports whether a Redis server is configured.
func (r RedisConfig) Configured() bool { return r.Addr != "" || r.Sentinel != nil }

// LocksConfig chooses the lock backend.
type LocksConfig struct {
	Backend string        `yaml:"backend,omitempty"`
	Dir     string        `yaml:"dir,omitempty"`
	Wait    time.Duration `yaml:"wait,omitempty"`
	Lease   time.Duration `yaml:"lease,omitempty"`
}

// SecurityConfig: TaskKeyFile names the task-signing key file (one key a
// line; the first signs, all verify). The key itself never goes into the
// config.
type SecurityConfig struct {
	TaskKeyFile string `yaml:"task-key-file,omitempty"`
}

// MetricsConfig is the /metrics listener.
type MetricsConfig struct {
	Listen string `yaml:"listen,omitempty"`
	// ScanInterval is the time between scans of the stores for the
	// datastore and group metrics (default 5m).
	ScanInterval time.Duration `yaml:"scan-interval,omitempty"`
	// GroupSeries exports per-group series (default true): three per backup
	// group, and a manifest read per snapshot per scan.
	GroupSeries *bool `yaml:"group-series,omitempty"`
}

// DatastoreConfig is one datastore: a path or an S3 location.
type DatastoreConfig struct {
	Path string    `yaml:"path,omitempty"`
	S3   *S3Config `yaml:"s3,omitempty"`
	// MaxJobs caps the tasks of this store running at once on all workers
	// sharing the Redis (0: no cap).
	MaxJobs int `yaml:"max-jobs,omitempty"`
}

// S3Config is an S3 datastore; credentials come from the AWS chain.
type S3Config struct {
	Endpoint  string `yaml:"endpoint"`
	Region    string `yaml:"region,omitempty"`
	Bucket    string `yaml:"bucket"`
	Prefix    string `yaml:"prefix,omitempty"`
	PathStyle bool   `yaml:"path-style,omitempty"`
	// PBSInUseOverride lets pbsq write although PBS's .in-use marker is at
	// the prefix: the PBS host it names (or "*"), once the administrator
	// has taken the datastore out of that PBS's hands.
	PBSInUseOverride string `yaml:"pbs-in-use-override,omitempty"`
	// RequestsPerSecond is the store's request budget, shared by every
	// pbsq process through Redis (per process without Redis); 0: none.
	RequestsPerSecond float64 `yaml:"requests-per-second,omitempty"`
	// BytesPerSecond optionally bounds the bytes moved, likewise.
	BytesPerSecond int64 `yaml:"bytes-per-second,omitempty"`
}

// ScheduleConfig queues a job periodically; `pbsq serve` and `pbsq worker`
// run the schedules (each fire is claimed in Redis, so several hosts may).
type ScheduleConfig struct {
	// Cron is a five-field cron line, a descriptor (@daily), optionally
	// after CRON_TZ=<zone>, or "@every <duration>".
	Cron string `yaml:"cron"`
	// After, instead of Cron, names the schedule after whose job this
	// one's runs, chained (only if that job succeeds).
	After string `yaml:"after,omitempty"`
	// Task is the job type: move-group, move-namespace, prune, verify,
	// sync or gc.
	Task string `yaml:"task"`
	// Payload holds the job's keys as `pbsq enqueue` takes them
	// (kebab-case, as PBS's API).
	Payload map[string]any `yaml:"payload"`
}

// schedule validates the schedule as `pbsq enqueue` validates a job.
func (c *Config) schedule(scheduleName string, sc ScheduleConfig) (worker.Schedule, error) {
	typ := sc.Task
	if !strings.HasPrefix(typ, "datastore:") {
		typ = "datastore:" + typ
	}
	if !slices.Contains(tasks.Types, typ) {
		return worker.Schedule{}, fmt.Errorf("schedules.%s.task %q: must be one of move-group, move-namespace, prune, verify, sync, gc", scheduleName, sc.Task)
	}
	raw, err := json.Marshal(sc.Payload)
	if err != nil {
		return worker.Schedule{}, fmt.Errorf("schedules.%s.payload: %w", scheduleName, err)
	}
	p, err := tasks.Decode(typ, raw)
	if err != nil {
		return worker.Schedule{}, fmt.Errorf("schedules.%s.payload: %w", scheduleName, err)
	}
	for _, st := range p.Stores() {
		if _, ok := c.Datastores[st]; !ok {
			return worker.Schedule{}, fmt.Errorf("schedules.%s.payload: unknown datastore %q (configured: %s)", scheduleName, st, c.storeNames())
		}
	}
	var s worker.Schedule
	switch {
	case sc.After != "" && sc.Cron != "":
		return s, fmt.Errorf("schedules.%s: cron %q and after %q: give one of them", scheduleName, sc.Cron, sc.After)
	case sc.After != "":
		s, err = worker.ParseAfterSchedule(scheduleName, sc.After, p)
	default:
		s, err = worker.ParseSchedule(scheduleName, sc.Cron, p)
	}
	if err != nil {
		return worker.Schedule{}, fmt.Errorf("schedules.%s: %w", scheduleName, err)
	}
	return s, nil
}

// schedules returns the configured schedules, sorted by name, as
// validated when the config was read.
func (c *Config) schedules() []worker.Schedule { return c.scheds }

// Defaults of docs/DESIGN.md §3 and §8.
const (
	defaultLocksDir  = "/run/pbsq/locks"
	defaultLockWait  = 5 * time.Second
	defaultLease     = 30 * time.Second
	defaultMetrics   = "127.0.0.1:9464"
	defaultLockStyle = "flock"
)

// defaultConfigPath is used when neither --config nor PBSQ_CONFIG is set.
func defaultConfigPath() string {
	if os.Geteuid() == 0 {
		return "/etc/pbsq/pbsq.yaml"
	}
	if dir, err := os.UserConfigDir(); err == nil {
		return filepath.Join(dir, "pbsq", "pbsq.yaml")
	}
	return "pbsq.yaml"
}

// parseConfig decodes strictly: unknown keys are errors naming the key.
func parseConfig(data []byte, path string) (*Config, error) {
	c := &Config{path: path}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// loadConfig reads path; a missing file gives an empty config that a later
// `datastore create` writes there.
func loadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		c := &Config{path: path}
		c.applyDefaults()
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := parseConfig(data, path)
	if err != nil {
		return nil, err
	}
	c.applyDefaults()
	return c, nil
}

func (c *Config) validate() error {
	switch c.Locks.Backend {
	case "", "flock", "redis":
	default:
		return fmt.Errorf("locks.backend %q: must be flock or redis", c.Locks.Backend)
	}
	if c.Locks.Wait < 0 || c.Locks.Lease < 0 {
		return fmt.Errorf("locks.wait %s / locks.lease %s: must not be negative", c.Locks.Wait, c.Locks.Lease)
	}
	if c.Metrics.ScanInterval != 0 && c.Metrics.ScanInterval < time.Second {
		return fmt.Errorf("metrics.scan-interval %s: must be at least 1s", c.Metrics.ScanInterval)
	}
	if c.Locks.Lease != 0 && c.Locks.Lease < time.Second {
		return fmt.Errorf("locks.lease %s: must be at least 1s", c.Locks.Lease)
	}
	if s := c.Redis.Sentinel; s != nil && (s.Master == "" || len(s.Addrs) == 0) {
		return fmt.Errorf("redis.sentinel: needs master and addrs")
	}
	if c.Redis.DB < 0 || c.Redis.DB > 15 {
		return fmt.Errorf("redis.db %d: must be 0..15", c.Redis.DB)
	}
	if err := c.Dashboard.validate(); err != nil {
		return err
	}
	for n, ds := range c.Datastores {
		if err := name.ValidateStore(n); err != nil {
			return fmt.Errorf("datastores: %w", err)
		}
		if err := ds.validate(n); err != nil {
			return err
		}
	}
	if err := c.checkS3Overlap(); err != nil {
		return err
	}
	c.scheds = nil
	for _, n := range slices.Sorted(maps.Keys(c.Schedules)) {
		s, err := c.schedule(n, c.Schedules[n])
		if err != nil {
			return err
		}
		c.scheds = append(c.scheds, s)
	}
	if err := worker.ValidateChains(c.scheds); err != nil {
		return fmt.Errorf("schedules: %w", err)
	}
	return nil
}

func (d DatastoreConfig) validate(store string) error {
	switch {
	case d.Path == "" && d.S3 == nil:
		return fmt.Errorf("datastores.%s: needs path or s3", store)
	case d.Path != "" && d.S3 != nil:
		return fmt.Errorf("datastores.%s: path and s3 are exclusive", store)
	case d.S3 != nil && (d.S3.Endpoint == "" || d.S3.Bucket == ""):
		return fmt.Errorf("datastores.%s.s3: needs endpoint and bucket", store)
	case d.S3 != nil && d.S3.RequestsPerSecond != 0 && !(d.S3.RequestsPerSecond >= 0.01 && d.S3.RequestsPerSecond <= 1e6):
		// NaN and infinities included: the budget's arithmetic needs a
		// finite interval.
		return fmt.Errorf("datastores.%s.s3.requests-per-second %g: must be 0 (no budget) or from 0.01 to 1000000", store, d.S3.RequestsPerSecond)
	case d.S3 != nil && d.S3.BytesPerSecond < 0:
		return fmt.Errorf("datastores.%s.s3.bytes-per-second %d: must not be negative", store, d.S3.BytesPerSecond)
	case d.S3 != nil && d.S3.BytesPerSecond > 0 && d.S3.RequestsPerSecond == 0:
		return fmt.Errorf("datastores.%s.s3.bytes-per-second: needs requests-per-second as well", store)
	case d.MaxJobs < 0 || d.MaxJobs > 1000:
		return fmt.Errorf("datastores.%s.max-jobs %d: must be 0 (no cap) to 1000", store, d.MaxJobs)
	case d.S3 != nil && strings.Trim(d.S3.Prefix, "/") != d.S3.Prefix:
		return fmt.Errorf("datastores.%s.s3.prefix %q: must not start or end with '/'", store, d.S3.Prefix)
	case d.S3 != nil && d.S3.Prefix != "":
		for _, c := range strings.Split(d.S3.Prefix, "/") {
			if c == "" || c == "." || c == ".." || strings.ContainsFunc(c, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				return fmt.Errorf("datastores.%s.s3.prefix %q: components must not be empty, '.' or '..', nor hold control characters", store, d.S3.Prefix)
			}
		}
	}
	if d.S3 != nil {
		if err := datastore.ValidateInUseOverride(d.S3.PBSInUseOverride); err != nil {
			return fmt.Errorf("datastores.%s.s3: %w", store, err)
		}
	}
	return nil
}

// s3Prefix is the prefix a datastore's keys live under (the store name
// when none is configured, as applyDefaults sets).
func (d DatastoreConfig) s3Prefix(store string) string {
	if d.S3.Prefix == "" {
		return store
	}
	return d.S3.Prefix
}

// checkS3Overlap refuses two datastores whose key prefixes in the same
// bucket of the same endpoint are equal or nested: one's GC would sweep
// the other's chunks, one's listing would see the other's snapshots.
func (c *Config) checkS3Overlap() error {
	type place struct{ store, where, prefix string }
	var seen []place
	for _, n := range slices.Sorted(maps.Keys(c.Datastores)) {
		ds := c.Datastores[n]
		if ds.S3 == nil {
			continue
		}
		p := place{n, strings.ToLower(strings.TrimRight(ds.S3.Endpoint, "/")) + " " + ds.S3.Bucket, ds.s3Prefix(n)}
		for _, o := range seen {
			if o.where == p.where && (strings.HasPrefix(p.prefix+"/", o.prefix+"/") || strings.HasPrefix(o.prefix+"/", p.prefix+"/")) {
				return fmt.Errorf("datastores.%s.s3.prefix %q overlaps datastores.%s.s3.prefix %q in bucket %s: prefixes of one bucket must not be equal or nested", n, p.prefix, o.store, o.prefix, ds.S3.Bucket)
			}
		}
		seen = append(seen, p)
	}
	return nil
}

// applyDefaults fills defaults and then the PBSQ_* environment overrides.
func (c *Config) applyDefaults() {
	env := func(k string, dst *string) {
		if v, ok := os.LookupEnv(k); ok {
			*dst = v
		}
	}
	env("PBSQ_REDIS_ADDR", &c.Redis.Addr)
	env("PBSQ_REDIS_PASSWORD", &c.Redis.Password)
	env("PBSQ_LOCKS_BACKEND", &c.Locks.Backend)
	env("PBSQ_LOCKS_DIR", &c.Locks.Dir)
	env("PBSQ_METRICS_LISTEN", &c.Metrics.Listen)
	env("PBSQ_TASK_KEY_FILE", &c.Security.TaskKeyFile)
	if k := c.Security.TaskKeyFile; k != "" && !filepath.IsAbs(k) && c.path != "" {
		c.Security.TaskKeyFile = filepath.Join(filepath.Dir(c.path), k)
	}
	if c.Locks.Backend == "" {
		c.Locks.Backend = defaultLockStyle
	}
	if c.Locks.Dir == "" {
		c.Locks.Dir = defaultLocksDir
	}
	if c.Locks.Wait == 0 {
		c.Locks.Wait = defaultLockWait
	}
	if c.Locks.Lease == 0 {
		c.Locks.Lease = defaultLease
	}
	if c.Metrics.Listen == "" {
		c.Metrics.Listen = defaultMetrics
	}
	if c.Dashboard.TokenFile != "" && !filepath.IsAbs(c.Dashboard.TokenFile) && c.path != "" {
		c.Dashboard.TokenFile = filepath.Join(filepath.Dir(c.path), c.Dashboard.TokenFile)
	}
	if c.Datastores == nil {
		c.Datastores = map[string]DatastoreConfig{}
	}
	for n, ds := range c.Datastores {
		if ds.Path != "" && !filepath.IsAbs(ds.Path) && c.path != "" {
			ds.Path = filepath.Join(filepath.Dir(c.path), ds.Path)
		}
		if ds.S3 != nil && ds.S3.Prefix == "" {
			s3 := *ds.S3
			s3.Prefix = n
			ds.S3 = &s3
		}
		c.Datastores[n] = ds
	}
}

// storeNames lists the configured datastores for messages.
func (c *Config) storeNames() string {
	var ns []string
	for n := range c.Datastores {
		ns = append(ns, n)
	}
	sort.Strings(ns)
	if len(ns) == 0 {
		return "none configured"
	}
	return strings.Join(ns, ", ")
}

// addDatastore registers a datastore in the config file, keeping the rest of
// the file (comments included) as it is.
func addDatastore(path, store string, ds DatastoreConfig) error {
	var doc yaml.Node
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("config: %w", err)
	default:
		if _, err := parseConfig(data, path); err != nil {
			return err
		}
		if err := yaml.Unmarshal(data, &doc); err != nil {
			return fmt.Errorf("config %s: %w", path, err)
		}
	}
	if doc.Kind == 0 {
		doc = yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{{Kind: yaml.MappingNode}}}
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return fmt.Errorf("config %s: top level must be a mapping", path)
	}
	var stores *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == "datastores" {
			stores = root.Content[i+1]
		}
	}
	if stores == nil || stores.Kind != yaml.MappingNode {
		stores = &yaml.Node{Kind: yaml.MappingNode}
		root.Content = append(root.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: "datastores"}, stores)
	}
	for i := 0; i+1 < len(stores.Content); i += 2 {
		if stores.Content[i].Value == store {
			return fmt.Errorf("datastore %q is already registered in %s", store, path)
		}
	}
	var val yaml.Node
	if err := val.Encode(ds); err != nil {
		return err
	}
	stores.Content = append(stores.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: store}, &val)
	out, err := yaml.Marshal(&doc)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	perm := os.FileMode(0o644)
	if fi, err := os.Stat(path); err == nil {
		perm = fi.Mode().Perm() // keep a config made private private
	}
	if err := writeFileAtomic(path, out, perm); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}
