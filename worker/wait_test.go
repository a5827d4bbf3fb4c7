package worker

import (
	"testing"
	"time"
)

// waitLimit bounds a wait for a condition that must come true. It is a
// guard against a hang, not a speed requirement: tests wait on real
// conditions, and a loaded CI machine may be slow to meet them.
const waitLimit = 30 * time.Second

// waitUntil polls cond until it holds, failing the test after waitLimit.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s", what, waitLimit)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
