package flock

import (
	"bufio"
	"bytes"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// fileID identifies an inode the way /proc/locks prints it.
type fileID struct {
	major, minor uint32
	ino          uint64
}

func statID(st *unix.Stat_t) fileID {
	return fileID{major: unix.Major(st.Dev), minor: unix.Minor(st.Dev), ino: st.Ino}
}

// procLock is one granted flock from /proc/locks.
type procLock struct {
	pid   int
	write bool
}

// readProcLocks reads the granted flock(2) locks of the host from
// /proc/locks. That is the only way to learn who holds a flock without
// taking it: the lock files stay empty, as PBS keeps them.
func readProcLocks() (map[fileID][]procLock, error) {
	data, err := os.ReadFile("/proc/locks")
	if err != nil {
		return nil, err
	}
	return parseProcLocks(data), nil
}

// parseProcLocks parses lines like
//
//	1: FLOCK  ADVISORY  WRITE 1397 00:19:2453 0 EOF
//	1: -> FLOCK  ADVISORY  WRITE 1398 00:19:2453 0 EOF   (a blocked waiter)
//
// where the device numbers are hex and the inode decimal.
func parseProcLocks(data []byte) map[fileID][]procLock {
	out := make(map[fileID][]procLock)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[1] != "FLOCK" {
			continue // waiters ("->") and POSIX/OFD record locks
		}
		pid, err := strconv.Atoi(f[4])
		if err != nil {
			continue
		}
		dev := strings.Split(f[5], ":")
		if len(dev) != 3 {
			continue
		}
		maj, err1 := strconv.ParseUint(dev[0], 16, 32)
		min, err2 := strconv.ParseUint(dev[1], 16, 32)
		ino, err3 := strconv.ParseUint(dev[2], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			continue
		}
		id := fileID{major: uint32(maj), minor: uint32(min), ino: ino}
		pl := procLock{pid: pid, write: f[3] == "WRITE"}
		// The kernel can list one process's lock on a file twice (seen with
		// a forked test helper); for "who holds what" one entry is the truth.
		if !slices.Contains(out[id], pl) {
			out[id] = append(out[id], pl)
		}
	}
	return out
}
