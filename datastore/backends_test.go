package datastore

import (
	"testing"

	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
)

// eachBackend runs fn on a filesystem store and on stores on gofakes3 and
// versitygw (a real S3 server; not in -short mode). newEnv builds a fresh
// store of the subtest's kind per call (NewTestEnv with opts). It lives in
// a test file, unlike the fixtures of testing.go, so that the production
// binary does not link the S3 test servers; it cannot be named
// TestBackends there, as go test would take it for a test.
func eachBackend(t *testing.T, fn func(t *testing.T, newEnv func(t testing.TB, opts ...TestStoreOption) *TestEnv)) {
	t.Run("fs", func(t *testing.T) {
		fn(t, func(t testing.TB, opts ...TestStoreOption) *TestEnv { return NewTestEnv(t, opts...) })
	})
	s3 := func(kind string, srv *s3test.Server) func(t testing.TB, opts ...TestStoreOption) *TestEnv {
		return func(t testing.TB, opts ...TestStoreOption) *TestEnv {
			t.Helper()
			return NewTestEnv(t, append(opts, TestOn(kind, srv.New(t, srv.UniquePrefix("store"))))...)
		}
	}
	t.Run("gofakes3", func(t *testing.T) { fn(t, s3("gofakes3", s3test.StartFake(t))) })
	t.Run("versitygw", func(t *testing.T) {
		if testing.Short() {
			t.Skip("versitygw in -short mode")
		}
		fn(t, s3("versitygw", s3test.StartVersity(t)))
	})
}
