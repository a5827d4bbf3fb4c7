package datastore

import (
	"testing"
	"time"
)

// FuzzUPIDStart: verify_state upids come from manifests, which PBS or
// anyone may have written: parsing never panics, and pbsq's own upids
// give back their start time.
func FuzzUPIDStart(f *testing.F) {
	f.Add(UPID("verify", "main", "task-1", time.Unix(1700000000, 0)))
	f.Add("UPID:pbs:000004D2:0000162E:00000001:65537A00:verificationjob:main\\x3av\\x2d1:root@pam:")
	f.Add("UPID:::::::::")
	f.Add("UPID:a:b:c:d:zz:e:f:g:")
	f.Fuzz(func(t *testing.T, upid string) {
		_, _ = upidStart(upid)
	})
	at := time.Unix(1700000000, 0)
	if got, ok := upidStart(UPID("verify", "main", "x:y/z", at)); !ok || !got.Equal(at) {
		f.Fatalf("upidStart of pbsq's own upid = %v, %v", got, ok)
	}
}
