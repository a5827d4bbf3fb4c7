package main

import (
	"strings"
	"testing"
)

// TestRunFailurePrintsNoResult: an operation that fails before it has a
// result prints only the error (it printed "null" on stdout first).
func TestRunFailurePrintsNoResult(t *testing.T) {
	e := newEnv(t, false)
	for _, op := range [][]string{
		{"run", "verify", "--store", "demo", "--ns", "missing"},
		{"run", "prune", "--store", "demo", "--ns", "missing", "--keep-last", "1"},
		{"run", "verify", "--store", "demo", "--ns", "missing", "--json"},
	} {
		out, errs := e.expect(exitInvalid, op...)
		if out != "" || !strings.Contains(errs, `"missing"`) {
			t.Errorf("pbsq %s: stdout %q, stderr %q; want no stdout and an error naming the namespace", strings.Join(op, " "), out, errs)
		}
	}
}
