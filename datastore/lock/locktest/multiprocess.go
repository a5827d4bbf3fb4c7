package locktest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/lock"
)

// record is one line a child writes: a held interval (wall-clock ns, the
// one clock all processes of the host share) or, with Busy set, its tally.
type record struct {
	Index  int       `json:"i"`
	Mode   lock.Mode `json:"m"`
	Start  int64     `json:"s"`
	End    int64     `json:"e"`
	Worker int       `json:"w"`
	Busy   int       `json:"busy,omitempty"`
	Final  bool      `json:"final,omitempty"`
}

const (
	children        = 3
	childWorkers    = 2
	childDuration   = 1500 * time.Millisecond
	childMaxHold    = 4 * time.Millisecond
	childTimeoutArg = "-test.timeout=2m"
)

// runPattern is a -test.run pattern matching exactly the test named name.
func runPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}

// testMultiprocess re-executes the test binary as child processes that lock
// at random through their own backends (attached to this test's resources
// via Param) and log what they held; no two conflicting intervals may
// overlap.
func testMultiprocess(t *testing.T, newBackend func(*testing.T) lock.Backend) {
	b := newBackend(t) // creates the shared resources the children use
	t.Cleanup(func() { _ = b.Close() })
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	dir := t.TempDir()
	env := append(os.Environ(),
		envSeed+"="+strconv.FormatInt(seed, 10),
		envDuration+"="+childDuration.String())
	for k, v := range paramsOf(t) {
		env = append(env, envParam+k+"="+v)
	}
	outs := make([]string, children)
	logs := make([]bytes.Buffer, children)
	var wg sync.WaitGroup
	for i := range children {
		outs[i] = filepath.Join(dir, fmt.Sprintf("child%d.jsonl", i))
		cmd := exec.Command(os.Args[0], "-test.run="+runPattern(t.Name()), "-test.count=1", childTimeoutArg)
		cmd.Env = append(env, envChild+"="+strconv.Itoa(i), envOut+"="+outs[i])
		cmd.Stdout, cmd.Stderr = &logs[i], &logs[i]
		if err := cmd.Start(); err != nil {
			t.Fatalf("start child: %v", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := cmd.Wait(); err != nil {
				t.Errorf("child %d: %v\n%s", i, err, logs[i].String())
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	var all []interval
	busy := 0
	for i, path := range outs {
		ivs, n, err := readChild(path, i)
		if err != nil {
			t.Fatalf("child %d: %v\n%s", i, err, logs[i].String())
		}
		if len(ivs) == 0 {
			t.Errorf("child %d held nothing", i)
		}
		all, busy = append(all, ivs...), busy+n
	}
	t.Logf("%d processes: %d grants, %d refusals", children, len(all), busy)
	if busy == 0 {
		t.Errorf("no contention between the processes exercised")
	}
	checkIntervals(t, all)
	assertNoHolders(t, b)
}

func readChild(path string, child int) ([]interval, int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	var ivs []interval
	busy, final := 0, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, 0, fmt.Errorf("%s: %w", path, err)
		}
		if r.Final {
			busy, final = r.Busy, true
			continue
		}
		if r.Index < 0 || r.Index >= len(universe) {
			return nil, 0, fmt.Errorf("%s: bad index %d", path, r.Index)
		}
		ivs = append(ivs, interval{
			req:   withMode(universe[r.Index], r.Mode),
			start: time.Unix(0, r.Start), end: time.Unix(0, r.End),
			who: fmt.Sprintf("process %d worker %d", child, r.Worker),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, 0, err
	}
	if !final {
		return nil, 0, fmt.Errorf("%s: no final line", path)
	}
	return ivs, busy, nil
}

// childMain is the multi-process test inside a child.
func childMain(t *testing.T, newBackend func(*testing.T) lock.Backend) {
	b := newBackend(t)
	defer b.Close()
	id, _ := strconv.Atoi(os.Getenv(envChild))
	seed, err := strconv.ParseInt(os.Getenv(envSeed), 10, 64)
	if err != nil {
		t.Fatalf("%s: %v", envSeed, err)
	}
	dur, err := time.ParseDuration(os.Getenv(envDuration))
	if err != nil {
		t.Fatalf("%s: %v", envDuration, err)
	}
	deadline := time.Now().Add(dur)
	var (
		mu      sync.Mutex
		records []record
		busy    int
		wg      sync.WaitGroup
	)
	for w := range childWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(seed), uint64(100*id+w)))
			ivs, n, err := worker(b, r, "", deadline, childMaxHold)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			defer mu.Unlock()
			busy += n
			for _, iv := range ivs {
				records = append(records, record{
					Index: indexOf(iv.req), Mode: iv.req.Mode,
					Start: iv.start.UnixNano(), End: iv.end.UnixNano(), Worker: w,
				})
			}
		}()
	}
	wg.Wait()
	records = append(records, record{Final: true, Busy: busy})
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, r := range records {
		_ = enc.Encode(r)
	}
	if err := os.WriteFile(os.Getenv(envOut), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func indexOf(req lock.Request) int {
	for i, u := range universe {
		if u.ID() == req.ID() {
			return i
		}
	}
	return -1
}
