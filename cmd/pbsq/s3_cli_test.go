package main

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
)

// s3Keys lists every object key under prefix with a raw SDK client.
func s3Keys(t *testing.T, srv *s3test.Server, prefix string) []string {
	t.Helper()
	var keys []string
	p := awss3.NewListObjectsV2Paginator(srv.Client(), &awss3.ListObjectsV2Input{Bucket: aws.String(srv.Bucket()), Prefix: aws.String(prefix + "/")})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range page.Contents {
			keys = append(keys, *o.Key)
		}
	}
	sort.Strings(keys)
	return keys
}

// TestS3Store: a store on a real S3 server (versitygw) has PBS's key
// layout, refuses bad buckets and credentials clearly, and moves and
// verifies there.
func TestS3Store(t *testing.T) {
	srv := s3test.StartVersity(t)
	e := newFTEnv(t)
	s3args := func(name string, extra ...string) []string {
		return append([]string{"datastore", "create", name, "--s3-endpoint", srv.Endpoint(), "--s3-bucket", srv.Bucket(), "--s3-path-style"}, extra...)
	}
	if _, stderr, code := e.run(s3args("offsite")...); code != 0 {
		t.Fatalf("create: %d %s", code, stderr)
	}
	// A missing bucket, wrong credentials and a prefix holding another
	// store are refused with clear messages and nothing is registered.
	cfgBefore, _ := os.ReadFile(e.config)
	_, stderr, code := e.run("datastore", "create", "nobucket", "--s3-endpoint", srv.Endpoint(), "--s3-bucket", "no-such-bucket", "--s3-path-style")
	if code == 0 || !strings.Contains(stderr, "no-such-bucket") {
		t.Errorf("missing bucket: exit %d: %s", code, stderr)
	}
	_, stderr, code = e.run(s3args("other", "--s3-prefix", "offsite")...)
	if code != 2 || !strings.Contains(stderr, "offsite") {
		t.Errorf("prefix of another store: exit %d: %s", code, stderr)
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
	_, stderr, code = e.run(s3args("badcreds")...)
	if code == 0 || strings.Contains(stderr, "wrong-secret-value") || strings.Contains(stderr, s3test.SecretKey) {
		t.Errorf("bad credentials: exit %d: %s", code, stderr)
	}
	if !strings.Contains(strings.ToLower(stderr), "credential") && !strings.Contains(strings.ToLower(stderr), "access") {
		t.Errorf("bad credentials message does not say what to check: %s", stderr)
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", s3test.SecretKey)
	if cfgAfter, _ := os.ReadFile(e.config); string(cfgAfter) != string(cfgBefore) {
		t.Error("a refused create changed the config")
	}

	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	_ = os.WriteFile(img, []byte(strings.Repeat("pbsq s3 data\n", 50000)), 0o644)
	for _, args := range [][]string{
		{"ns", "create", "--store", "offsite", "--ns", "a"},
		{"ns", "create", "--store", "offsite", "--ns", "b"},
		{"backup", "--store", "offsite", "--ns", "a", "--type", "vm", "--id", "10", "--time", "2024-03-01T10:00:00Z", img},
		{"backup", "--store", "offsite", "--ns", "a", "--type", "vm", "--id", "100", "--time", "2024-03-01T11:00:00Z", img},
	} {
		if _, stderr, code := e.run(args...); code != 0 {
			t.Fatalf("%v: %d %s", args, code, stderr)
		}
	}
	keys := strings.Join(s3Keys(t, srv, "offsite"), "\n")
	for _, want := range []string{
		"offsite/.cnt/ns/a/.namespace",
		"offsite/.cnt/ns/a/vm/100/owner",
		"offsite/.cnt/ns/a/vm/10/2024-03-01T10:00:00Z/index.json.blob",
		"offsite/.cnt/ns/a/vm/10/2024-03-01T10:00:00Z/disk.img.fidx",
		"offsite/.chunks/",
	} {
		if !strings.Contains(keys, want) {
			t.Errorf("key %s missing; keys:\n%s", want, keys)
		}
	}
	for _, k := range strings.Split(keys, "\n") {
		if rest, ok := strings.CutPrefix(k, "offsite/.chunks/"); ok {
			parts := strings.Split(rest, "/")
			if len(parts) != 2 || len(parts[0]) != 4 || len(parts[1]) != 64 || !strings.HasPrefix(parts[1], parts[0]) {
				t.Errorf("chunk key %s is not .chunks/<4hex>/<digest>", k)
			}
		}
	}
	// move-group of vm/10 leaves vm/100 untouched.
	before100 := s3Keys(t, srv, "offsite/.cnt/ns/a/vm/100")
	if _, stderr, code := e.run("run", "move-group", "--store", "offsite", "--ns", "a", "--backup-type", "vm", "--backup-id", "10", "--target-ns", "b"); code != 0 {
		t.Fatalf("move-group: %d %s", code, stderr)
	}
	if after := s3Keys(t, srv, "offsite/.cnt/ns/a/vm/100"); strings.Join(after, ",") != strings.Join(before100, ",") {
		t.Errorf("vm/100 changed:\n%v\n%v", before100, after)
	}
	if left := s3Keys(t, srv, "offsite/.cnt/ns/a/vm/10"); len(left) != 0 {
		t.Errorf("source group left behind: %v", left)
	}
	if moved := s3Keys(t, srv, "offsite/.cnt/ns/b/vm/10"); len(moved) < 3 {
		t.Errorf("target group incomplete: %v", moved)
	}
	if out, stderr, code := e.run("run", "verify", "--store", "offsite", "--json"); code != 0 || !strings.Contains(out, `"ok":2`) {
		t.Fatalf("verify on S3: %d %s %s", code, out, stderr)
	}
}
