package redislock

import (
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

func TestKeys(t *testing.T) {
	b := New(nil, Options{})
	g, _ := name.ParseGroup(name.MustNamespace("a/b"), "vm/100")
	rg, _ := name.ParseGroup(name.Root, "ct/my-ct")
	s := name.NewSnapshot(g, time.Date(2022, 5, 2, 8, 11, 33, 0, time.UTC))
	for _, tc := range []struct {
		req  lock.Request
		want string
	}{
		{lock.NamespaceRequest("main", name.MustNamespace("a/b"), lock.Shared), "pbsq:lock:main:namespace:a/b"},
		{lock.GroupRequest("main", g), "pbsq:lock:main:group:a/b/vm/100"},
		{lock.GroupRequest("main", rg), "pbsq:lock:main:group:ct/my-ct"},
		{lock.SnapshotRequest("st2", s, lock.Exclusive), "pbsq:lock:st2:snapshot:a/b/vm/100/2022-05-02T08:11:33Z"},
	} {
		key := b.Key(tc.req)
		if key != tc.want {
			t.Errorf("Key(%s) = %q, want %q", tc.req, key, tc.want)
		}
		back, ok := b.decodeKey(key)
		if !ok || back.ID() != tc.req.ID() || back.Kind != tc.req.Kind {
			t.Errorf("decodeKey(%q) = %s, %v", key, back, ok)
		}
	}
	for _, k := range []string{"other:main:namespace:a", "pbsq:lock:main:namespace:", "pbsq:lock:main:group:vm", "pbsq:lock:main:bogus:a"} {
		if r, ok := b.decodeKey(k); ok {
			t.Errorf("decodeKey(%q) = %s, want rejected", k, r)
		}
	}
}

func TestParseMember(t *testing.T) {
	mode, h, since, ok := parseMember(`X|abc|{"h":"host1","p":123,"t":"9f2|x","s":1700000000000}`)
	if !ok || mode != lock.Exclusive || h != (lock.Holder{Host: "host1", PID: 123, TaskID: "9f2|x"}) || since.UnixMilli() != 1700000000000 {
		t.Errorf("parseMember: %v %+v %v %v", mode, h, since, ok)
	}
	for _, m := range []string{"", "X|abc", `Q|a|{}`, `S|a|nojson`} {
		if _, _, _, ok := parseMember(m); ok {
			t.Errorf("parseMember(%q) accepted", m)
		}
	}
}

func TestTiming(t *testing.T) {
	b := New(nil, Options{})
	if b.lease != DefaultLease || b.every != 10*time.Second || b.margin != 5*time.Second {
		t.Errorf("lease %s, refresh every %s, margin %s", b.lease, b.every, b.margin)
	}
	if b := New(nil, Options{Lease: time.Millisecond}); b.lease != MinLease {
		t.Errorf("tiny lease not raised to %s: %s", MinLease, b.lease)
	}
}
