package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pbsq/pbsq/datastore/lock/redistest"
)

// TestServeStatePlantedRefused: a serve state file another user could
// have written — owned by another uid, group/world-writable, a symlink, or
// in a directory others may write — is ignored with a warning (enqueue and
// tasks then find no queue, exit 2) instead of sending the CLI to the
// Redis it names. The control, the same file made properly, is used.
func TestServeStatePlantedRefused(t *testing.T) {
	rs := redistest.Start(t) // the "attacker's" Redis the planted file names
	e := newEnv(t, false)
	dir := filepath.Dir(e.statePath())
	data, _ := json.Marshal(serveState{PID: os.Getpid(), Redis: rs.Addr(), Embedded: true})
	plant := func(t *testing.T) {
		t.Helper()
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(e.statePath(), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name string
		bad  func(t *testing.T)
		want string
	}{
		{"other owner", func(t *testing.T) { must(t, os.Chown(e.statePath(), 65534, 65534)) }, "owned by uid 65534"},
		{"world-writable", func(t *testing.T) { must(t, os.Chmod(e.statePath(), 0o666)) }, "others may write"},
		{"group-writable", func(t *testing.T) { must(t, os.Chmod(e.statePath(), 0o620)) }, "others may write"},
		{"symlink", func(t *testing.T) {
			real := filepath.Join(dir, "real.json")
			must(t, os.Rename(e.statePath(), real))
			must(t, os.Symlink(real, e.statePath()))
		}, "symlink"},
		{"fifo", func(t *testing.T) {
			must(t, os.Remove(e.statePath()))
			must(t, syscallMkfifo(e.statePath()))
		}, "not a regular file"},
		{"dir world-writable", func(t *testing.T) { must(t, os.Chmod(dir, 0o777)) }, "others may write"},
		{"dir other owner", func(t *testing.T) { must(t, os.Chown(dir, 65534, 65534)) }, "owned by uid 65534"},
		{"dir symlink", func(t *testing.T) {
			real := dir + ".real"
			must(t, os.RemoveAll(real))
			must(t, os.Rename(dir, real))
			must(t, os.Symlink(real, dir))
		}, "serve state directory"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			plant(t)
			c.bad(t)
			_, errs := e.expect(2, "tasks", "ls")
			if !strings.Contains(errs, c.want) || !strings.Contains(errs, "no Redis configured") {
				t.Errorf("stderr does not refuse the planted state (%q):\n%s", c.want, errs)
			}
		})
	}
	t.Run("control", func(t *testing.T) {
		plant(t)
		e.expect(0, "tasks", "ls")
	})

	// serve is not kept from starting by a planted file: it replaces it
	// with its own, 0600 in a 0700 directory.
	plant(t)
	must(t, os.Chown(e.statePath(), 65534, 65534))
	serve := e.start("serve")
	st := waitServeState(t, e)
	if st.PID != serve.cmd.Process.Pid {
		t.Fatalf("state names pid %d, serve is %d", st.PID, serve.cmd.Process.Pid)
	}
	for p, want := range map[string]os.FileMode{e.statePath(): 0o600, dir: 0o700 | os.ModeDir} {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %s, want %s", p, fi.Mode(), want)
		}
	}
	if err := serve.stop(t, 20e9); err != nil {
		t.Errorf("serve exit: %v", err)
	}
}

// TestConfigTempNotFollowed: `datastore add` rewrites the config through
// a fresh temp file; a symlink planted at the old predictable temp name
// (or any name) is not written through.
func TestConfigTempNotFollowed(t *testing.T) {
	e := newEnv(t, false)
	victim := filepath.Join(t.TempDir(), "victim")
	must(t, os.WriteFile(victim, []byte("untouched\n"), 0o600))
	must(t, os.Symlink(victim, e.config+".tmp"))
	must(t, os.MkdirAll(filepath.Join(e.dir, "store2", ".chunks"), 0o755))
	e.mustRun("datastore", "add", "second", "--path", filepath.Join(e.dir, "store2"))
	if b, _ := os.ReadFile(victim); string(b) != "untouched\n" {
		t.Errorf("victim written through the symlink: %q", b)
	}
	if b, _ := os.ReadFile(e.config); !strings.Contains(string(b), "second") {
		t.Errorf("config not updated:\n%s", b)
	}
	if fi, err := os.Lstat(e.config); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("config is no longer a regular file: %v %v", fi, err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func syscallMkfifo(p string) error { return unix.Mkfifo(p, 0o600) }
