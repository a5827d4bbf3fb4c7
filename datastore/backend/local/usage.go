package local

import (
	"fmt"
	"syscall"
)

// Usage reports the filesystem holding the store (statfs): its size, the
// bytes in use and the bytes available to unprivileged writers.
func (f *FS) Usage() (size, used, avail uint64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(f.base, &st); err != nil {
		return 0, 0, 0, fmt.Errorf("statfs %s: %w", f.base, err)
	}
	bs := uint64(st.Bsize)
	return st.Blocks * bs, (st.Blocks - st.Bfree) * bs, st.Bavail * bs, nil
}
