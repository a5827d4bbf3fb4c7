package datastore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/backend/s3"
	"github.com/pbsq/pbsq/datastore/backend/s3/faultproxy"
	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
	"github.com/pbsq/pbsq/datastore/name"
)

// The crash test kills a move-namespace at a random moment with SIGKILL
// (a child process: the test binary re-executed as TestHelperMove), then
// reruns the same move and checks that the job is finished and nothing is
// lost: every snapshot exactly once, at its target, with its owner; verify
// all ok; no source left; every moved index journalled.

const (
	mcGroups    = 10
	mcSnapshots = 3
)

// mcEnv describes the store to the child process.
type mcEnv struct {
	kind    string // fs or s3
	dir     string // fs base
	srv     *s3test.Server
	proxy   *faultproxy.Proxy // s3: between the child and srv
	prefix  string            // s3
	lockDir string
	merge   bool
}

func (e mcEnv) environ() []string {
	env := append(os.Environ(), "PBSQ_MOVE_HELPER=1", "PBSQ_MOVE_KIND="+e.kind, "PBSQ_MOVE_LOCKS="+e.lockDir,
		"PBSQ_MOVE_MERGE="+strconv.FormatBool(e.merge))
	if e.kind == "fs" {
		return append(env, "PBSQ_MOVE_DIR="+e.dir)
	}
	return append(env, "PBSQ_MOVE_S3_ENDPOINT="+e.proxy.URL(), "PBSQ_MOVE_S3_BUCKET="+e.srv.Bucket(), "PBSQ_MOVE_S3_PREFIX="+e.prefix)
}

func mcRequest(merge bool) MoveNamespaceRequest {
	return MoveNamespaceRequest{NS: name.MustNamespace("src"), TargetNS: name.MustNamespace("dst/moved"), MaxDepth: -1, DeleteSource: true, MergeGroups: merge}
}

// TestHelperMove is the child: it runs the move and is usually killed.
func TestHelperMove(t *testing.T) {
	if os.Getenv("PBSQ_MOVE_HELPER") != "1" {
		t.Skip("child process of TestMoveCrashResume")
	}
	// The store described by the PBSQ_MOVE_* variables (mcEnv.environ).
	on := TestAt(os.Getenv("PBSQ_MOVE_DIR"))
	if os.Getenv("PBSQ_MOVE_KIND") != "fs" {
		cfg := s3.Config{Endpoint: os.Getenv("PBSQ_MOVE_S3_ENDPOINT"), Region: s3test.Region, Bucket: os.Getenv("PBSQ_MOVE_S3_BUCKET"),
			Prefix: os.Getenv("PBSQ_MOVE_S3_PREFIX"), PathStyle: true, RequestTimeout: 30 * time.Second}
		b, err := s3.New(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		on = TestOn("s3", b)
	}
	s := TestStore(t, on, TestFlockAt(os.Getenv("PBSQ_MOVE_LOCKS"), time.Second))
	fmt.Println("MOVING")
	phase := ""
	res, err := s.MoveNamespace(context.Background(), mcRequest(os.Getenv("PBSQ_MOVE_MERGE") == "true"), func(p Progress) {
		if p.Phase != phase {
			phase = p.Phase
			fmt.Println("PHASE " + phase) // lets the parent aim its kills
		}
	})
	if err != nil || !res.Complete {
		t.Fatalf("move: %v %+v", err, res)
	}
	fmt.Println("MOVED")
}

// mcSource is the namespace of group i below src.
func mcSource(i int) string {
	return []string{"src", "src/c1", "src/c1/c2", "src/c3"}[i%4]
}

// mcBuild writes the source tree (and, when merging, an older snapshot of
// group 0 already at the target) and returns the expected final place of
// every snapshot.
func mcBuild(t testing.TB, s *Store, merge bool) map[string]string {
	t.Helper()
	ctx := context.Background()
	mtNS(t, s, "src/c1/c2", "src/c3", "dst")
	want := map[string]string{}
	type put struct {
		snap  name.Snapshot
		owner string
	}
	var puts []put
	for i := 0; i < mcGroups; i++ {
		g := mtGroup(t, mcSource(i), fmt.Sprintf("vm/%d", i))
		target, _ := name.Rebase(g.NS, name.MustNamespace("src"), name.MustNamespace("dst/moved"))
		for h := 0; h < mcSnapshots; h++ {
			sn := name.NewSnapshot(g, mtAt(10+h))
			puts = append(puts, put{sn, fmt.Sprintf("owner%d@pbs", i)})
			want[sn.String()] = target.String()
		}
	}
	if merge {
		mtNS(t, s, "dst/moved")
		sn := name.NewSnapshot(mtGroup(t, "dst/moved", "vm/0"), mtAt(1))
		puts = append(puts, put{sn, "owner0@pbs"})
		want[sn.String()] = "dst/moved"
	}
	// Owners first, then every snapshot at once: tiny snapshots (an index
	// and the manifest) keep the 30 trials per backend quick.
	var wg sync.WaitGroup
	errs := make(chan error, 2*len(puts))
	for i, p := range puts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%mcSnapshots == 0 || i == len(puts)-1 {
				errs <- s.b.WriteFile(ctx, backend.Join(p.snap.Group.Path(), "owner"), []byte(p.owner+"\n"))
			}
		}()
	}
	wg.Wait()
	for _, p := range puts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- mtPutSnapshot(ctx, s.b, p.snap, "", -1)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return want
}

func TestMoveCrashResume(t *testing.T) {
	trials := 30
	if v, err := strconv.Atoi(os.Getenv("PBSQ_MOVE_CRASH_TRIALS")); err == nil && v > 0 {
		trials = v
	}
	t.Run("fs", func(t *testing.T) {
		mcTrials(t, trials, 2, func(t *testing.T, merge bool) mcEnv {
			return mcEnv{kind: "fs", dir: t.TempDir(), lockDir: filepath.Join(t.TempDir(), "locks"), merge: merge}
		})
	})
	t.Run("versitygw", func(t *testing.T) {
		if testing.Short() {
			t.Skip("versitygw in -short mode")
		}
		srv := s3test.StartVersity(t)
		mcTrials(t, trials, 3, func(t *testing.T, merge bool) mcEnv {
			proxy, err := faultproxy.New(srv.Endpoint(), faultproxy.Rates{}, 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(proxy.Close)
			return mcEnv{kind: "s3", srv: srv, proxy: proxy, prefix: srv.UniquePrefix("crash"), lockDir: filepath.Join(t.TempDir(), "locks"), merge: merge}
		})
	})
}

// mcTrials runs the killed trials in lanes (parallel: most of a trial is
// waiting for I/O and process start-up). Each lane first runs one move
// that is not killed, to measure when the child starts moving groups and
// when it is done; its kills then land uniformly in that window, which
// adapts to where the kills land (the machine's speed varies). Seeds are
// the trial numbers.
func mcTrials(t *testing.T, trials, lanes int, newEnv func(t *testing.T, merge bool) mcEnv) {
	var (
		mu      sync.Mutex
		stages  [4]int // finished first, before any snapshot moved, split, cleaning up
		start   = time.Now()
		perLane = (trials + lanes - 1) / lanes
	)
	t.Run("lanes", func(t *testing.T) {
		for lane := 0; lane < lanes; lane++ {
			t.Run(fmt.Sprint("lane-", lane), func(t *testing.T) {
				t.Parallel()
				var lo, hi time.Duration
				share := min(perLane, trials-lane*perLane)
				split := 0
				for i := 0; ; i++ {
					// A loaded machine shifts where kills land: a lane
					// runs extra trials (up to twice its share) until a
					// third of its share landed mid-move.
					if i > share && (3*split >= share || i > 2*share) {
						break
					}
					seed := 2*lane*perLane + i - 1 // -1: the calibration run
					name := fmt.Sprint("trial-", seed)
					if i == 0 {
						name = "calibrate"
					}
					ok := t.Run(name, func(t *testing.T) {
						var delay time.Duration
						if i > 0 {
							rng := rand.New(rand.NewPCG(uint64(seed), 0x70b5))
							delay = lo + time.Duration(rng.Int64N(int64(hi-lo)+1))
						}
						took, stage := mcTrial(t, newEnv, seed, i > 0, delay)
						switch {
						case i == 0:
							lo, hi = took.movePhase, took.done
							t.Logf("uninterrupted child move: %v, moving groups from %v", took.done, took.movePhase)
							return
						case stage == 0: // the child finished first: aim earlier
							hi = max(lo+time.Millisecond, hi*4/5)
						case stage == 1: // nothing moved yet: aim later
							lo = min(max(lo, delay), hi*4/5)
						}
						if stage == 2 {
							split++
						}
						mu.Lock()
						stages[stage]++
						mu.Unlock()
					})
					if !ok {
						return
					}
				}
			})
		}
	})
	t.Logf("%d trials in %v: %d finished before the kill, %d killed before the first snapshot moved, %d with the groups split, %d after the last (cleaning up)",
		stages[0]+stages[1]+stages[2]+stages[3], time.Since(start).Round(time.Millisecond), stages[0], stages[1], stages[2], stages[3])
	if trials >= 10 && stages[2] < trials/3 {
		t.Errorf("only %d of %d kills landed while snapshots were moving: tune the delays", stages[2], trials)
	}
}

// mcTrial builds a store, runs the child (killed after delay when kill
// is set), reruns the move and checks the result. It returns the child's
// timing and where the kill landed: 0 after the child finished,
// 1 before the first snapshot moved, 2 with groups split, 3 after all
// snapshots moved.
func mcTrial(t *testing.T, newEnv func(t *testing.T, merge bool) mcEnv, seed int, kill bool, delay time.Duration) (mcTiming, int) {
	merge := seed%2 == 0
	e := newEnv(t, merge)
	on := TestAt(e.dir)
	if e.kind == "s3" {
		on = TestOn("versitygw", e.srv.New(t, e.prefix))
	}
	parent := TestStore(t, on, TestFlockAt(e.lockDir, time.Second))
	want := mcBuild(t, parent, merge)
	took, movePhase, killed := mcChild(t, e, kill, delay)
	if killed && e.proxy != nil {
		// Requests the dead child had sent still complete on the server
		// (a re-queued task starts long after them).
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := e.proxy.WaitQuiet(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	stage := 0
	left := mcManifests(t, parent, "ns/src")
	if killed && mtExistsQuiet(parent, "src") {
		arrived := mcManifests(t, parent, "ns/dst/ns/moved")
		if merge {
			arrived-- // the target's own older snapshot
		}
		switch {
		case left == mcGroups*mcSnapshots && arrived == 0:
			stage = 1
		case left > 0:
			stage = 2
		default:
			stage = 3
		}
	}
	res, err := parent.MoveNamespace(context.Background(), mcRequest(merge), nil)
	switch {
	case err == nil:
		if !res.Complete {
			t.Fatalf("rerun incomplete: %+v", res)
		}
	case errors.Is(err, ErrNotFound) && stage == 0:
		// The child finished before the kill: nothing left to do.
	default:
		t.Fatalf("rerun after kill at %v: %v", delay, err)
	}
	mcCheck(t, parent, want)
	t.Logf("seed %d: kill after %v: killed %v, stage %d, %d finished snapshots were left at the source", seed, delay, killed, stage, left)
	return mcTiming{took, movePhase}, stage
}

// mcTiming is when an uninterrupted child started moving groups and when
// it was done, from the start of its move.
type mcTiming struct{ done, movePhase time.Duration }

// mcManifests counts the finished snapshots below dir.
func mcManifests(t testing.TB, s *Store, dir string) int {
	n := 0
	err := s.b.Walk(context.Background(), dir, func(fi backend.FileInfo) error {
		if strings.HasSuffix(fi.Name, "/"+ManifestName) {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func mtExistsQuiet(s *Store, ns string) bool {
	ok, err := s.NamespaceExists(context.Background(), name.MustNamespace(ns))
	return err != nil || ok
}

// mcChild runs the child; with kill it sends SIGKILL delay after the child
// starts moving. It returns how long the move ran, when its move phase
// began (after checks and namespace creation) and whether it was killed
// before finishing.
func mcChild(t *testing.T, e mcEnv, kill bool, delay time.Duration) (took, movePhase time.Duration, killed bool) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperMove$", "-test.count=1")
	cmd.Env = e.environ()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 16)
	var out strings.Builder
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			lines <- sc.Text()
		}
		close(lines)
	}()
	// Wait until the child is about to move: process start-up is not
	// part of the window the kills aim at.
	for l := range lines {
		if l == "MOVING" {
			break
		}
	}
	began := time.Now()
	exited := make(chan error, 1)
	var moved time.Duration // when the child reported the move done
	go func() {
		for l := range lines {
			switch l {
			case "PHASE move":
				movePhase = time.Since(began)
			case "MOVED":
				moved = time.Since(began)
			}
		}
		exited <- cmd.Wait()
	}()
	if kill {
		select {
		case err := <-exited:
			if err != nil {
				t.Fatalf("child failed: %v\n%s%s", err, out.String(), stderr.String())
			}
			return moved, movePhase, false
		case <-time.After(delay):
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
	}
	err = <-exited
	if kill && err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signaled() {
			return moved, movePhase, moved == 0
		}
	}
	if err != nil || moved == 0 {
		t.Fatalf("child failed: %v\n%s%s", err, out.String(), stderr.String())
	}
	return moved, movePhase, false
}

// mcCheck checks the finished state.
func mcCheck(t *testing.T, s *Store, want map[string]string) {
	t.Helper()
	ctx := context.Background()
	where := mtWhereWalk(t, s)
	for sn, ns := range want {
		if got := where[sn]; len(got) != 1 || got[0] != ns {
			t.Errorf("snapshot %s in %v, want exactly once in %q", sn, got, ns)
		}
	}
	if len(where) != len(want) {
		t.Errorf("%d snapshots, want %d", len(where), len(want))
	}
	var wg sync.WaitGroup
	for i := 0; i < mcGroups; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			target, _ := name.Rebase(name.MustNamespace(mcSource(i)), name.MustNamespace("src"), name.MustNamespace("dst/moved"))
			g := mtGroup(t, target.String(), fmt.Sprintf("vm/%d", i))
			if o, err := s.GroupOwner(ctx, g); err != nil || o != fmt.Sprintf("owner%d@pbs", i) {
				t.Errorf("owner of %s:%s: %q %v", g.NS, g, o, err)
			}
		}()
	}
	wg.Wait()
	if mtExistsQuiet(s, "src") {
		t.Error("source namespace left")
	}
	leftovers := 0
	err := s.b.Walk(ctx, "ns/src", func(fi backend.FileInfo) error {
		leftovers++
		if leftovers < 5 {
			t.Errorf("source leftover %s", fi.Name)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.b.Stat(ctx, "ns/src"); err == nil {
		t.Error("source directory left")
	}
	journal := mtJournal(t, s)
	err = s.b.Walk(ctx, "ns/dst/ns/moved", func(fi backend.FileInfo) error {
		if !strings.HasSuffix(fi.Name, ".fidx") || strings.Contains(fi.Name, "/vm/0/"+mtAt(1).Format(name.TimeLayout)) {
			return nil
		}
		if from := journal[fi.Name]; !strings.HasPrefix(from, "ns/src/") {
			t.Errorf("moved index %s not journalled (from %q)", fi.Name, from)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if recs, err := s.b.List(ctx, moveStateDir); err == nil {
		for _, r := range recs {
			if !strings.HasPrefix(r.Name, ".") { // a killed write's temp file is harmless
				t.Errorf("move record left: %s", r.Name)
			}
		}
	}
	TestVerifyAll(t, s, -1, 0)
}
