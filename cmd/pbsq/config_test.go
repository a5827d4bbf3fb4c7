package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	good := `
redis:
  addr: 127.0.0.1:6379
  db: 2
locks:
  backend: redis
  wait: 7s
  lease: 40s
metrics:
  listen: 127.0.0.1:9999
datastores:
  main:
    path: data/main
  offsite:
    s3:
      endpoint: http://127.0.0.1:7070
      bucket: backups
      path-style: true
      pbs-in-use-override: pbs1.example.com
`
	c, err := parseConfig([]byte(good), "/etc/pbsq/pbsq.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c.applyDefaults()
	if c.Redis.DB != 2 || c.Locks.Wait != 7*time.Second || c.Locks.Lease != 40*time.Second || c.Locks.Dir != defaultLocksDir {
		t.Fatalf("parsed %+v", c)
	}
	if c.Datastores["main"].Path != "/etc/pbsq/data/main" {
		t.Fatalf("relative path not resolved against the config file: %q", c.Datastores["main"].Path)
	}
	if c.Datastores["offsite"].S3.Prefix != "offsite" || !c.Datastores["offsite"].S3.PathStyle || c.Datastores["offsite"].S3.PBSInUseOverride != "pbs1.example.com" {
		t.Fatalf("s3 defaults: %+v", c.Datastores["offsite"].S3)
	}
	bad := map[string]string{
		"unknown top key":     "redsi:\n  addr: x\n",
		"unknown nested key":  "locks:\n  backnd: flock\n",
		"bad backend":         "locks:\n  backend: etcd\n",
		"bad store name":      "datastores:\n  a/b:\n    path: /x\n",
		"store without path":  "datastores:\n  main: {}\n",
		"path and s3":         "datastores:\n  main:\n    path: /x\n    s3: {endpoint: http://x, bucket: b}\n",
		"password in file":    "redis:\n  password: hunter2\n",
		"negative wait":       "locks:\n  wait: -1s\n",
		"bad db":              "redis:\n  db: 99\n",
		"bad in-use override": "datastores:\n  main:\n    s3: {endpoint: http://x, bucket: b, pbs-in-use-override: 'pbs 1'}\n",
		"negative max-jobs":   "datastores:\n  main:\n    path: /x\n    max-jobs: -1\n",
		"huge max-jobs":       "datastores:\n  main:\n    path: /x\n    max-jobs: 1001\n",
		"negative rps":        "datastores:\n  main:\n    s3: {endpoint: http://x, bucket: b, requests-per-second: -1}\n",
		"NaN rps":             "datastores:\n  main:\n    s3: {endpoint: http://x, bucket: b, requests-per-second: .nan}\n",
		"infinite rps":        "datastores:\n  main:\n    s3: {endpoint: http://x, bucket: b, requests-per-second: .inf}\n",
		"tiny rps":            "datastores:\n  main:\n    s3: {endpoint: http://x, bucket: b, requests-per-second: 1e-300}\n",
		"negative bytes/s":    "datastores:\n  main:\n    s3: {endpoint: http://x, bucket: b, requests-per-second: 10, bytes-per-second: -1}\n",
		"bytes/s alone":       "datastores:\n  main:\n    s3: {endpoint: http://x, bucket: b, bytes-per-second: 1000}\n",
		"task key in file":    "security:\n  task-key: 0123456789abcdef0123456789abcdef\n",
	}
	for what, y := range bad {
		_, err := parseConfig([]byte(y), "c.yaml")
		if err == nil {
			t.Errorf("%s: accepted", what)
			continue
		}
		if !strings.Contains(err.Error(), "c.yaml") {
			t.Errorf("%s: error does not name the file: %v", what, err)
		}
	}
	for y, want := range map[string]string{
		"datastores:\n  main:\n    path: /x\n    max-jobs: -1\n":                                     "max-jobs -1",
		"datastores:\n  main:\n    s3: {endpoint: http://x, bucket: b, requests-per-second: .nan}\n": "requests-per-second NaN",
	} {
		if _, err := parseConfig([]byte(y), "c.yaml"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %q: %v", want, err)
		}
	}
	fleet, err := parseConfig([]byte("datastores:\n  main:\n    path: /x\n    max-jobs: 2\n  off:\n    s3: {endpoint: http://x, bucket: b, requests-per-second: 0.5, bytes-per-second: 1000}\n"), "c.yaml")
	if err != nil || fleet.Datastores["main"].MaxJobs != 2 || fleet.Datastores["off"].S3.RequestsPerSecond != 0.5 || fleet.Datastores["off"].S3.BytesPerSecond != 1000 {
		t.Errorf("max-jobs and the S3 budget: %+v %v", fleet, err)
	}
	if _, err := parseConfig([]byte("locks:\n  backnd: flock\n"), "c.yaml"); !strings.Contains(err.Error(), "backnd") {
		t.Errorf("unknown key not named: %v", err)
	}
}

func TestAddDatastoreKeepsComments(t *testing.T) {
	p := filepath.Join(t.TempDir(), "pbsq.yaml")
	_ = os.WriteFile(p, []byte("# my comment\nlocks:\n  backend: flock # inline\n"), 0o644)
	if err := addDatastore(p, "main", DatastoreConfig{Path: "/srv/main"}); err != nil {
		t.Fatal(err)
	}
	if err := addDatastore(p, "main", DatastoreConfig{Path: "/srv/other"}); err == nil {
		t.Fatal("registered a datastore twice")
	}
	data, _ := os.ReadFile(p)
	if !strings.Contains(string(data), "# my comment") || !strings.Contains(string(data), "# inline") {
		t.Fatalf("comments lost:\n%s", data)
	}
	c, err := loadConfig(p)
	if err != nil || c.Datastores["main"].Path != "/srv/main" {
		t.Fatalf("reload: %v %+v", err, c)
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add("redis:\n  addr: x:1\ndatastores:\n  main:\n    path: /x\n")
	f.Add("locks: {backend: redis, lease: 30s}\n")
	f.Add("datastores:\n  s3store:\n    s3: {endpoint: http://e, bucket: b, prefix: p}\n")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseConfig([]byte(s), "fuzz.yaml")
		if err != nil {
			return
		}
		c.applyDefaults()
		if err := c.validate(); err != nil {
			t.Fatalf("accepted config fails validation after defaults: %v", err)
		}
	})
}
