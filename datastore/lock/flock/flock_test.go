package flock_test

import (
	"testing"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/lock/flock"
	"github.com/pbsq/pbsq/datastore/lock/locktest"
)

func newBackend(t *testing.T) lock.Backend {
	dir := locktest.Param(t, "dir", t.TempDir)
	b, err := flock.New(flock.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConformance(t *testing.T) { locktest.Run(t, newBackend) }
