package datastore

import (
	"context"
	"errors"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/datastore/prune"
)

func TestParseInUseMarker(t *testing.T) {
	for in, want := range map[string]string{
		`{"hostname":"pbs1"}`:                 "pbs1",
		`{"hostname":"pbs1.example.com"}`:     "pbs1.example.com",
		`{}`:                                  "",
		`not json`:                            "",
		`{"hostname":"evil\nhost; rm -rf /"}`: "",
		`{"hostname":"` + strings.Repeat("a", 300) + `"}`: "",
	} {
		if got := ParseInUseMarker([]byte(in)).Hostname; got != want {
			t.Errorf("ParseInUseMarker(%q) = %q, want %q", in, got, want)
		}
	}
	for v, ok := range map[string]bool{"": true, "*": true, "pbs1": true, "pbs1.example.com": true, "bad host": false, "-x": false, "a/b": false} {
		if err := ValidateInUseOverride(v); (err == nil) != ok || (err != nil && !errors.Is(err, name.ErrInvalid)) {
			t.Errorf("ValidateInUseOverride(%q) = %v", v, err)
		}
	}
}

// FuzzParseInUseMarker: the marker is written by whoever can write the
// bucket; decoding never panics and yields a valid host name or none.
func FuzzParseInUseMarker(f *testing.F) {
	f.Add([]byte(`{"hostname":"pbs1"}`))
	f.Add([]byte(`{"hostname":null}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m := ParseInUseMarker(data)
		if m.Hostname != "" && !validHostname(m.Hostname) {
			t.Fatalf("invalid host name %q accepted", m.Hostname)
		}
	})
}

// piObjects lists every object below prefix with its ETag and time.
func piObjects(t *testing.T, srv *s3test.Server, prefix string) []string {
	t.Helper()
	c := srv.Client()
	var out []string
	var token *string
	for {
		page, err := c.ListObjectsV2(context.Background(), &awss3.ListObjectsV2Input{Bucket: aws.String(srv.Bucket()), Prefix: aws.String(prefix + "/"), ContinuationToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range page.Contents {
			out = append(out, aws.ToString(o.Key)+" "+aws.ToString(o.ETag)+" "+o.LastModified.String())
		}
		if !aws.ToBool(page.IsTruncated) {
			break
		}
		token = page.NextContinuationToken
	}
	sort.Strings(out)
	return out
}

// TestPBSInUseRefusesWrites: on a real S3 server (versitygw), a prefix with
// PBS's .in-use marker refuses every writing operation (busy, naming the
// PBS host and what to do) and nothing is written; reading works; the
// override lets pbsq write only when it names the marker's host.
func TestPBSInUseRefusesWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("versitygw in -short mode")
	}
	ctx := context.Background()
	srv := s3test.StartVersity(t)
	prefix := srv.UniquePrefix("inuse")
	lockDir := filepath.Join(t.TempDir(), "locks")
	open := func(override string) *Store {
		s, err := Open("test", srv.New(t, prefix), Options{Locker: TestFlockLocker(t, lockDir, -1), LocksDir: lockDir, PBSInUseOverride: override})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := TestStore(t, TestOn("versitygw", srv.New(t, prefix)), TestFlockAt(lockDir, -1))
	TestBackup(t, s, "", "vm/100", gtT0, TestFile(t, "a.img", 100<<10, 0))
	if err := s.CreateNamespace(ctx, name.MustNamespace("other")); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Client().PutObject(ctx, &awss3.PutObjectInput{Bucket: aws.String(srv.Bucket()),
		Key: aws.String(prefix + "/.in-use"), Body: strings.NewReader(`{"hostname":"pbs1"}`)}); err != nil {
		t.Fatal(err)
	}
	before := piObjects(t, srv, prefix)
	src := TestStore(t, TestName("src"), TestFlock(-1))
	TestBackup(t, src, "", "vm/200", gtT0, TestFile(t, "b.img", 10<<10, 0))

	g, _ := name.NewGroup(name.Root, "vm", "100")
	refused := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, ErrPBSInUse) || !errors.Is(err, lock.ErrBusy) {
			t.Errorf("%s on a store PBS uses: %v; want a busy in-use refusal", what, err)
			return
		}
		for _, w := range []string{"host pbs1", "maintenance mode", "s3-refresh", "pbs-in-use-override"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v; want it to mention %q", what, err, w)
			}
		}
	}
	for _, override := range []string{"", "otherhost"} {
		s := open(override)
		_, err := s.Backup(ctx, BackupRequest{Group: g, Time: gtT0.Add(1e9), Owner: "root@pam", Sources: []BackupSource{{Path: TestFile(t, "c.img", 1000, 0)}}}, nil)
		refused("backup", err)
		_, err = Sync(ctx, src, s, SyncRequest{MaxDepth: -1}, nil)
		refused("sync", err)
		_, err = s.MoveGroup(ctx, MoveGroupRequest{Group: g, TargetNS: name.MustNamespace("other")}, nil)
		refused("move-group", err)
		_, err = s.MoveNamespace(ctx, MoveNamespaceRequest{NS: name.MustNamespace("other"), TargetNS: name.MustNamespace("x"), MaxDepth: -1}, nil)
		refused("move-namespace", err)
		_, err = s.Prune(ctx, PruneRequest{Scope: Scope{MaxDepth: -1}, Keep: prune.Options{KeepLast: 1}}, nil)
		refused("prune", err)
		_, err = s.Verify(ctx, VerifyRequest{Scope: Scope{MaxDepth: -1}}, nil)
		refused("verify", err)
		_, err = s.GC(ctx, GCRequest{}, nil)
		refused("gc", err)
		refused("namespace create", s.CheckWritable(ctx))
		_, err = Create(ctx, "test", s.Backend(), Options{})
		refused("datastore create", err)
	}

	// Reading works.
	s = open("")
	if snaps := allSnapshots(t, s); len(snaps) != 1 {
		t.Errorf("listing: %d snapshots", len(snaps))
	}
	vres, err := s.Verify(ctx, VerifyRequest{Scope: Scope{MaxDepth: -1}, ReadOnly: true}, nil)
	if err != nil || vres.OK != 1 {
		t.Errorf("read-only verify: %v %+v", err, vres)
	}
	if _, err := s.Prune(ctx, PruneRequest{Scope: Scope{MaxDepth: -1}, Keep: prune.Options{KeepLast: 1}, DryRun: true}, nil); err != nil {
		t.Errorf("prune dry run: %v", err)
	}
	if after := piObjects(t, srv, prefix); strings.Join(after, "\n") != strings.Join(before, "\n") {
		t.Errorf("objects changed while PBS uses the prefix:\n%s\n→\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
	}

	// Taken out of PBS's hands, naming the PBS host: writes work.
	s = open("pbs1")
	if _, err := s.Backup(ctx, BackupRequest{Group: g, Time: gtT0.Add(1e9), Owner: "root@pam", Sources: []BackupSource{{Path: TestFile(t, "c.img", 1000, 0)}}}, nil); err != nil {
		t.Errorf("backup with the override: %v", err)
	}
}
