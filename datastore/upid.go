package datastore

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// UPID builds a PBS task id for verify_state. PBS parses the upid of a
// manifest's verify_state, so it must have PBS's shape:
// UPID:node:pid:pstart:task_id:starttime:type:worker_id:auth_id:
// The pbsq task id travels in worker_id (systemd-escaped, as PBS does).
func UPID(workerType, store, taskID string, start time.Time) string {
	host, _ := os.Hostname()
	worker := escapeWorkerID(store + ":" + taskID)
	return fmt.Sprintf("UPID:%s:%08X:%08X:%08X:%08X:%s:%s:root@pam:",
		upidNode(host), os.Getpid(), 0, 0, start.Unix(), workerType, worker)
}

// upidNode is the node part of a UPID for a host name: as PBS's nodename,
// the host name up to the first dot, made to match PBS's node pattern
// [a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])? (other bytes become '-', leading
// and trailing '-' go); "localhost" if nothing is left.
func upidNode(host string) string {
	if i := strings.IndexByte(host, '.'); i >= 0 {
		host = host[:i]
	}
	host = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, host)
	host = strings.Trim(host, "-")
	if host == "" {
		return "localhost"
	}
	return host
}

// escapeWorkerID escapes like systemd-escape, which PBS uses for worker ids.
func escapeWorkerID(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '.' && i > 0:
			b.WriteByte(c)
		case c == '/':
			b.WriteByte('-')
		default:
			fmt.Fprintf(&b, `\x%02x`, c)
		}
	}
	return b.String()
}

// upidStart extracts the start time of a PBS UPID; ok is false when the
// string is not one.
func upidStart(upid string) (time.Time, bool) {
	parts := strings.Split(upid, ":")
	if len(parts) < 9 || parts[0] != "UPID" {
		return time.Time{}, false
	}
	n, err := strconv.ParseInt(parts[5], 16, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(n, 0), true
}
