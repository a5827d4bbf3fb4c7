package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
	"github.com/pbsq/pbsq/datastore/format"
)

// Peak memory of the real binary on hostile datastore contents. Each test
// runs `pbsq run …` as a child process and reads its maximum RSS from the
// kernel (getrusage of the child): a memory bound, not a timing.

const maxRSS = 300 << 20

// rssRun runs pbsq and returns stdout+stderr, the exit code and the
// child's peak RSS in bytes.
func (e *env) rssRun(args ...string) (string, int, int64) {
	e.t.Helper()
	c := e.cmd(args...)
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	code := runExit(e.t, c.Run())
	ru, ok := c.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		e.t.Fatal("no rusage")
	}
	rss := ru.Maxrss << 10 // KiB on Linux
	e.t.Logf("pbsq %s: exit %d, peak RSS %.1f MiB", strings.Join(args, " "), code, float64(rss)/(1<<20))
	return out.String(), code, rss
}

// writeConfig replaces the env's config with its locks and metrics plus
// the given datastores section.
func (e *env) writeConfig(datastores string) {
	e.t.Helper()
	cfg := fmt.Sprintf("locks:\n  dir: %s\n  wait: 1s\nmetrics:\n  listen: 127.0.0.1:0\n", filepath.Join(e.dir, "locks"))
	if e.redis != nil {
		cfg += "redis:\n  addr: " + e.redis.Addr() + "\n"
	}
	must(e.t, os.WriteFile(e.config, []byte(cfg+"datastores:\n"+datastores), 0o644))
}

func fsStoreYAML(name, dir string) string {
	return fmt.Sprintf("  %s:\n    path: %s\n", name, dir)
}

func s3StoreYAML(name string, srv *s3test.Server, prefix string) string {
	return fmt.Sprintf("  %s:\n    s3:\n      endpoint: %s\n      bucket: %s\n      prefix: %s\n      path-style: true\n",
		name, srv.Endpoint(), srv.Bucket(), prefix)
}

// rleZstd is a zstd frame (1 MiB window, no declared size, so nothing
// tells the decoded size up front): the raw prefix, then blocks of 128 KiB
// of fill as RLE blocks (4 bytes each), then the raw suffix.
func rleZstd(prefix []byte, blocks int, fill byte, suffix []byte) []byte {
	f := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 10 << 3}
	block := func(typ uint32, size int, last bool, content []byte) {
		h := uint32(size)<<3 | typ<<1
		if last {
			h |= 1
		}
		f = append(f, byte(h), byte(h>>8), byte(h>>16))
		f = append(f, content...)
	}
	if len(prefix) > 0 {
		block(0, len(prefix), false, prefix)
	}
	for i := 0; i < blocks; i++ {
		block(1, 128<<10, i == blocks-1 && len(suffix) == 0, []byte{fill})
	}
	if len(suffix) > 0 {
		block(0, len(suffix), true, suffix)
	}
	return f
}

// compressedBlob wraps a zstd payload as a compressed blob with a good CRC.
func compressedBlob(payload []byte) []byte {
	b := []byte{0x31, 0xb9, 0x58, 0x42, 0x6f, 0xb6, 0xa3, 0x7f, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(b[8:], crc32.ChecksumIEEE(payload))
	return append(b, payload...)
}

const bombSnap = "vm/100/2024-03-01T10:00:00Z"

// bombStore makes e.dir/<name> a datastore with one real snapshot
// (vm/100) to which an index of n chunks of 4 MiB is added
// (bomb.img.fidx, in the manifest), each chunk file being chunk(i).
func (e *env) bombStore(name string, n int, chunk func(i int) []byte) string {
	e.t.Helper()
	dir := filepath.Join(e.dir, name)
	must(e.t, os.MkdirAll(filepath.Join(dir, ".chunks"), 0o755))
	e.writeConfig(fsStoreYAML(name, dir))
	img := filepath.Join(e.dir, "small.img")
	must(e.t, os.WriteFile(img, bytes.Repeat([]byte("pbsq "), 1000), 0o644))
	e.mustRun("backup", "--store", name, "--type", "vm", "--id", "100", "--time", "2024-03-01T10:00:00Z", img)

	snap := filepath.Join(dir, bombSnap)
	idx := &format.FixedIndex{Size: uint64(n) << 22, ChunkSize: 4 << 20}
	for i := 0; i < n; i++ {
		var d [32]byte
		_, _ = rand.Read(d[:])
		idx.Digests = append(idx.Digests, d)
		h := hex.EncodeToString(d[:])
		must(e.t, os.MkdirAll(filepath.Join(dir, ".chunks", h[:4]), 0o755))
		must(e.t, os.WriteFile(filepath.Join(dir, ".chunks", h[:4], h), chunk(i), 0o644))
	}
	must(e.t, os.WriteFile(filepath.Join(snap, "bomb.img.fidx"), idx.Marshal(), 0o644))
	raw, err := os.ReadFile(filepath.Join(snap, "index.json.blob"))
	must(e.t, err)
	m, err := format.ParseManifest(raw)
	must(e.t, err)
	m.Files = append(m.Files, format.FileInfo{Filename: "bomb.img.fidx", CryptMode: m.Files[0].CryptMode, Size: idx.Size, Csum: idx.Checksum()})
	raw, err = m.Marshal()
	must(e.t, err)
	must(e.t, os.WriteFile(filepath.Join(snap, "index.json.blob"), raw, 0o644))
	return dir
}

// chunkBomb is a 4 KB chunk decoding to 127 MiB (under the blob maximum).
func chunkBomb(int) []byte { return compressedBlob(rleZstd(nil, 1016, 0, nil)) }

// uploadStore copies an fs datastore's files into an S3 datastore.
func uploadStore(t *testing.T, srv *s3test.Server, prefix, dir string) {
	b := srv.New(t, prefix)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return b.WriteFile(context.Background(), filepath.ToSlash(rel), data)
	})
	must(t, err)
}

// TestSyncZstdBombBoundedFS: 32 chunks of 4 KB that each decode to
// 127 MiB, listed as 4 MiB chunks, cost sync fs→fs no more than 300 MiB
// (it decodes no further than the index says), and fail the snapshot as
// corrupt.
func TestSyncZstdBombBoundedFS(t *testing.T) {
	e := newEnv(t, false)
	src := e.bombStore("src", 32, chunkBomb)
	dst := filepath.Join(e.dir, "dst")
	must(t, os.MkdirAll(filepath.Join(dst, ".chunks"), 0o755))
	e.writeConfig(fsStoreYAML("src", src) + fsStoreYAML("dst", dst))
	out, code, rss := e.rssRun("run", "sync", "--source-store", "src", "--store", "dst")
	if code == 0 || !strings.Contains(out, "corrupt") {
		t.Errorf("sync of bombs: exit %d, want the snapshot failed as corrupt:\n%s", code, out)
	}
	if rss >= maxRSS {
		t.Errorf("sync fs→fs of 32 zstd bombs peaked at %d MiB RSS, want < %d", rss>>20, maxRSS>>20)
	}
}

// TestSyncZstdBombBoundedS3: the same bombs synced fs→S3 (real versitygw)
// and S3→fs.
func TestSyncZstdBombBoundedS3(t *testing.T) {
	srv := s3test.StartVersity(t)
	e := newEnv(t, false)
	src := e.bombStore("src", 32, chunkBomb)
	uploadStore(t, srv, "bombs", src)
	dst := filepath.Join(e.dir, "dst")
	must(t, os.MkdirAll(filepath.Join(dst, ".chunks"), 0o755))
	e.writeConfig(fsStoreYAML("src", src) + s3StoreYAML("s3dst", srv, "target") + s3StoreYAML("s3src", srv, "bombs") + fsStoreYAML("dst", dst))
	for _, pair := range [][2]string{{"src", "s3dst"}, {"s3src", "dst"}} {
		out, code, rss := e.rssRun("run", "sync", "--source-store", pair[0], "--store", pair[1])
		if code == 0 || !strings.Contains(out, "corrupt") {
			t.Errorf("sync %s→%s of bombs: exit %d, want the snapshot failed as corrupt:\n%s", pair[0], pair[1], code, out)
		}
		if rss >= maxRSS {
			t.Errorf("sync %s→%s of 32 zstd bombs peaked at %d MiB RSS, want < %d", pair[0], pair[1], rss>>20, maxRSS>>20)
		}
	}
}

// TestSyncHugeS3ObjectRefused: a chunk object larger than any chunk can
// be (here 20 MiB; the bound is 16 MiB plus a header) is refused by its
// Content-Length before it is read, and fails the snapshot.
func TestSyncHugeS3ObjectRefused(t *testing.T) {
	srv := s3test.StartVersity(t)
	e := newEnv(t, false)
	const huge = 20 << 20
	src := e.bombStore("src", 1, func(int) []byte {
		b := make([]byte, huge)
		copy(b, []byte{0x42, 0xab, 0x38, 0x07, 0xbe, 0x83, 0x70, 0xa1})
		return b
	})
	uploadStore(t, srv, "huge", src)
	dst := filepath.Join(e.dir, "dst")
	must(t, os.MkdirAll(filepath.Join(dst, ".chunks"), 0o755))
	e.writeConfig(s3StoreYAML("s3src", srv, "huge") + fsStoreYAML("dst", dst))
	out, code, _ := e.rssRun("run", "sync", "--source-store", "s3src", "--store", "dst")
	if code == 0 || !strings.Contains(out, fmt.Sprintf("of %d bytes: larger than any chunk", huge)) {
		t.Errorf("sync of a %d-byte chunk object: exit %d, want it refused by its size:\n%s", huge, code, out)
	}
}

// TestGCSparseHugeIndexBounded: a sparse 1.5 GiB index (nothing on disk)
// and a 640 MiB sparse one with a valid-looking header cost gc --dry-run
// no more than 300 MiB: indexes are streamed. GC then refuses to sweep.
func TestGCSparseHugeIndexBounded(t *testing.T) {
	e := newEnv(t, false)
	dir := e.bombStore("demo2", 1, func(int) []byte { return compressedBlob(rleZstd(nil, 1, 0, nil)) })
	snap := filepath.Join(dir, bombSnap)
	zeros := filepath.Join(snap, "zeros.img.fidx")
	must(t, exec.Command("truncate", "-s", "1536M", zeros).Run())

	out, code, rss := e.rssRun("run", "gc", "--store", "demo2", "--dry-run")
	if code == 0 || !strings.Contains(out, "unreadable") {
		t.Errorf("gc over a sparse zero index: exit %d:\n%s", code, out)
	}
	if rss >= maxRSS {
		t.Errorf("gc --dry-run over a sparse 1.5 GiB index peaked at %d MiB RSS", rss>>20)
	}
	must(t, os.Remove(zeros))

	// A header that promises exactly what the sparse file holds: read to
	// the end (640 MiB hashed in pieces), then refused by its checksum.
	const size = 640 << 20
	// Marshalled without digests: the header's checksum is the empty
	// area's, which the zero digests do not match.
	hdr := (&format.FixedIndex{Size: (size - format.IndexHeaderSize) / 32 << 22, ChunkSize: 4 << 20}).Marshal()
	crafted := filepath.Join(snap, "crafted.img.fidx")
	must(t, os.WriteFile(crafted, hdr, 0o644))
	must(t, os.Truncate(crafted, size))
	out, code, rss = e.rssRun("run", "gc", "--store", "demo2", "--dry-run")
	if code == 0 || !strings.Contains(out, "checksum") {
		t.Errorf("gc over a crafted sparse index: exit %d:\n%s", code, out)
	}
	if rss >= maxRSS {
		t.Errorf("gc --dry-run over a crafted sparse 640 MiB index peaked at %d MiB RSS", rss>>20)
	}

	// verify streams the indexes the manifest lists too.
	must(t, os.Remove(crafted))
	listed := filepath.Join(snap, "bomb.img.fidx")
	must(t, os.Truncate(listed, 0))
	must(t, os.Truncate(listed, 1536<<20))
	out, code, rss = e.rssRun("run", "verify", "--store", "demo2")
	if code == 0 || !strings.Contains(out, "bomb.img.fidx") {
		t.Errorf("verify over a sparse listed index: exit %d:\n%s", code, out)
	}
	if rss >= maxRSS {
		t.Errorf("verify over a sparse 1.5 GiB index peaked at %d MiB RSS", rss>>20)
	}
}

// TestVerifyManifestBombBounded: a ~3 KB manifest that decodes to 100 MiB
// of valid-looking JSON (a huge notes string) costs verify no more than
// 300 MiB and fails that snapshot as too large.
func TestVerifyManifestBombBounded(t *testing.T) {
	e := newEnv(t, false)
	dir := e.bombStore("demo2", 1, func(int) []byte { return compressedBlob(rleZstd(nil, 1, 0, nil)) })
	raw, err := os.ReadFile(filepath.Join(dir, bombSnap, "index.json.blob"))
	must(t, err)
	m, err := format.ParseManifest(raw)
	must(t, err)
	js, err := m.JSON()
	must(t, err)
	// {... ,"unprotected":{"notes":"xxxx…"}}
	prefix := append(bytes.TrimSuffix(js, []byte("}")), []byte(`,"zzz":{"notes":"`)...)
	bomb := compressedBlob(rleZstd(prefix, 800, 'x', []byte(`"}}`)))
	if len(bomb) > 22<<10 {
		t.Fatalf("bomb of %d bytes", len(bomb))
	}
	must(t, os.WriteFile(filepath.Join(dir, bombSnap, "index.json.blob"), bomb, 0o644))
	out, code, rss := e.rssRun("run", "verify", "--store", "demo2")
	if code == 0 || !strings.Contains(out, "too large") {
		t.Errorf("verify of a manifest bomb: exit %d, want the snapshot failed as too large:\n%s", code, out)
	}
	if rss >= maxRSS {
		t.Errorf("verify of a 100 MiB manifest bomb peaked at %d MiB RSS", rss>>20)
	}
}

// addToManifest lists fi in the manifest of snapshot directory snap.
func addToManifest(t *testing.T, snap string, fi format.FileInfo) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(snap, "index.json.blob"))
	must(t, err)
	m, err := format.ParseManifest(raw)
	must(t, err)
	fi.CryptMode = m.Files[0].CryptMode
	m.Files = append(m.Files, fi)
	raw, err = m.Marshal()
	must(t, err)
	must(t, os.WriteFile(filepath.Join(snap, "index.json.blob"), raw, 0o644))
}

// sparse makes path a sparse file of size bytes beginning with head.
func sparse(t *testing.T, path string, head []byte, size int64) {
	t.Helper()
	must(t, os.WriteFile(path, head, 0o644))
	must(t, os.Truncate(path, size))
}

// hugeValidIndex writes a fixed index of n entries that all name digest d
// (chunks of 4 MiB), with a correct checksum, without holding it, and
// returns its manifest entry.
func hugeValidIndex(t *testing.T, path string, n int, d [32]byte) format.FileInfo {
	t.Helper()
	entries := bytes.Repeat(d[:], 1<<15)
	h := sha256.New()
	for left := n; left > 0; left -= 1 << 15 {
		h.Write(entries[:32*min(left, 1<<15)])
	}
	csum := [32]byte(h.Sum(nil))
	x := &format.FixedIndex{Size: uint64(n) << 22, ChunkSize: 4 << 20}
	hdr := x.Marshal()
	// index_csum follows magic, uuid and ctime (PBS's layout).
	const offCsum = 32
	if empty := x.Checksum(); !bytes.Equal(hdr[offCsum:offCsum+32], empty[:]) {
		t.Fatal("index_csum is not where the test expects it")
	}
	copy(hdr[offCsum:], csum[:])
	f, err := os.Create(path)
	must(t, err)
	w := bufio.NewWriterSize(f, 1<<20)
	_, err = w.Write(hdr)
	must(t, err)
	for left := n; left > 0; left -= 1 << 15 {
		_, err = w.Write(entries[:32*min(left, 1<<15)])
		must(t, err)
	}
	must(t, w.Flush())
	must(t, f.Close())
	return format.FileInfo{Filename: filepath.Base(path), Size: x.Size, Csum: csum}
}

// TestSyncSparseHugeFilesBounded: snapshot files are streamed by sync,
// never held whole. In one source snapshot, a listed 1.5 GiB sparse index,
// a crafted sparse 640 MiB index with a good-looking header, a 1.5 GiB
// sparse blob and a 120 MiB sparse one fail that snapshot; another holds a
// valid 320 MiB index (10 Mi entries of one real 4 MiB chunk), which is
// synced whole. Peak RSS of sync fs→fs stays under 300 MiB.
func TestSyncSparseHugeFilesBounded(t *testing.T) {
	e := newEnv(t, false)
	src := e.bombStore("src", 1, func(int) []byte { return compressedBlob(rleZstd(nil, 1, 0, nil)) })
	bad := filepath.Join(src, bombSnap)
	must(t, os.Truncate(filepath.Join(bad, "bomb.img.fidx"), 1536<<20))
	const craftedSize = 640 << 20
	hdr := (&format.FixedIndex{Size: (craftedSize - format.IndexHeaderSize) / 32 << 22, ChunkSize: 4 << 20}).Marshal()
	sparse(t, filepath.Join(bad, "crafted.img.fidx"), hdr, craftedSize)
	addToManifest(t, bad, format.FileInfo{Filename: "crafted.img.fidx", Size: (craftedSize - format.IndexHeaderSize) / 32 << 22})
	blobHead := []byte{0x42, 0xab, 0x38, 0x07, 0xbe, 0x83, 0x70, 0xa1, 0, 0, 0, 0}
	sparse(t, filepath.Join(bad, "huge.conf.blob"), blobHead, 1536<<20)
	addToManifest(t, bad, format.FileInfo{Filename: "huge.conf.blob", Size: 1536 << 20})
	sparse(t, filepath.Join(bad, "big.conf.blob"), blobHead, 120<<20)
	addToManifest(t, bad, format.FileInfo{Filename: "big.conf.blob", Size: 120 << 20})

	// The good snapshot: one real chunk of 4 MiB of zeros.
	img := filepath.Join(e.dir, "small.img")
	e.mustRun("backup", "--store", "src", "--type", "vm", "--id", "200", "--time", "2024-03-01T10:00:00Z", img)
	good := filepath.Join(src, "vm/200/2024-03-01T10:00:00Z")
	d := sha256.Sum256(make([]byte, 4<<20))
	h := hex.EncodeToString(d[:])
	must(t, os.MkdirAll(filepath.Join(src, ".chunks", h[:4]), 0o755))
	must(t, os.WriteFile(filepath.Join(src, ".chunks", h[:4], h), compressedBlob(rleZstd(nil, 32, 0, nil)), 0o644))
	const entries = 10 << 20
	addToManifest(t, good, hugeValidIndex(t, filepath.Join(good, "huge.img.fidx"), entries, d))

	dst := filepath.Join(e.dir, "dst")
	must(t, os.MkdirAll(filepath.Join(dst, ".chunks"), 0o755))
	e.writeConfig(fsStoreYAML("src", src) + fsStoreYAML("dst", dst))
	out, code, rss := e.rssRun("run", "sync", "--source-store", "src", "--store", "dst")
	if code == 0 {
		t.Errorf("sync of hostile files: exit 0, want the snapshot failed:\n%s", out)
	}
	for _, want := range []string{"bomb.img.fidx", "crafted.img.fidx", "huge.conf.blob", "big.conf.blob"} {
		if !strings.Contains(out, want) {
			t.Errorf("sync output does not name %s as a problem:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dst, bombSnap)); err == nil {
		t.Errorf("the failed snapshot was synced")
	}
	fi, err := os.Stat(filepath.Join(dst, "vm/200/2024-03-01T10:00:00Z", "huge.img.fidx"))
	if err != nil || fi.Size() != format.IndexHeaderSize+32*entries {
		t.Errorf("the valid 320 MiB index was not synced whole: %v, %v", fi, err)
	}
	if _, err := os.Stat(filepath.Join(dst, "vm/200/2024-03-01T10:00:00Z", "index.json.blob")); err != nil {
		t.Errorf("the good snapshot has no manifest: %v", err)
	}
	if rss >= maxRSS {
		t.Errorf("sync of sparse huge files and a 320 MiB index peaked at %d MiB RSS, want < %d", rss>>20, maxRSS>>20)
	}
}
