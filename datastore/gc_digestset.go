package datastore

import (
	"cmp"
	"encoding/binary"
	"slices"
)

// ---- the set of marked digests ----

// digestSet is a compact set of chunk digests: 65536 shards by the first
// two bytes, each a sorted slice of the next 16. About 24 bytes a digest
// (a map[Digest]struct{} takes about 84), so a million referenced chunks
// cost some 25 MiB. Leaving out the last 14 bytes can only make two
// digests look the same (odds about n²/2^129): GC would then keep an
// unreferenced chunk or skip one touch, never lose a referenced chunk.
type digestSet struct {
	shards [1 << 16][]digestKey
	n      int
}

type digestKey struct{ hi, lo uint64 }

func newDigestSet() *digestSet { return new(digestSet) }

func digestShard(d *Digest) (int, digestKey) {
	return int(d[0])<<8 | int(d[1]), digestKey{binary.BigEndian.Uint64(d[2:10]), binary.BigEndian.Uint64(d[10:18])}
}

func compareDigestKey(a, b digestKey) int {
	if c := cmp.Compare(a.hi, b.hi); c != 0 {
		return c
	}
	return cmp.Compare(a.lo, b.lo)
}

// add inserts d and reports whether it was new.
func (s *digestSet) add(d Digest) bool {
	i, k := digestShard(&d)
	sh := s.shards[i]
	j, found := slices.BinarySearchFunc(sh, k, compareDigestKey)
	if found {
		return false
	}
	s.shards[i] = slices.Insert(sh, j, k)
	s.n++
	return true
}

func (s *digestSet) has(d Digest) bool {
	i, k := digestShard(&d)
	_, found := slices.BinarySearchFunc(s.shards[i], k, compareDigestKey)
	return found
}

func (s *digestSet) len() int { return s.n }
