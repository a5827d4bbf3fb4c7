package flock

import (
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

const (
	nsLockName = ".ns-lock"
	hashedDir  = "hashed"
	// maxName is the file name length from which PBS switches to the
	// hashed form (NAME_MAX is 255).
	maxName = 255
)

// RelPath is the lock file of req relative to the locks dir, laid out as
// PBS does (pbs-datastore backup_info.rs, lock_file_path_helper):
//
//	namespace  <store>/<ns components joined by ':'>/.ns-lock
//	group      <store>/<ns dir>/<escaped "vm/100">                 e.g. vm-100
//	snapshot   <store>/<ns dir>/<escaped "vm/100/2022-05-02T08:11:33Z">
//	           e.g. vm-100-2022\x2d05\x2d02T08\x3a11\x3a33Z
//
// where the ns dir is left out for the root namespace. An escaped name of
// 255 bytes or more is replaced, exactly as PBS 3.3+ does, by
// <ns dir>/hashed/<first 80 bytes>...<last 80 bytes>-<hex SHA-256 of the
// unescaped relative path>, 228 bytes long.
func RelPath(req lock.Request) string {
	req = req.Normalize()
	nsDir := strings.Join(req.NS.Components(), ":")
	switch req.Kind {
	case lock.Group:
		return filepath.Join(req.Store, nsDir, objectName(req.Group.RelPath()))
	case lock.Snapshot:
		return filepath.Join(req.Store, nsDir, objectName(req.Snapshot.RelPath()))
	default:
		return filepath.Join(req.Store, nsDir, nsLockName)
	}
}

func objectName(rel string) string {
	enc := escapePath(rel)
	if len(enc) < maxName {
		return enc
	}
	sum := sha256.Sum256([]byte(rel))
	return hashedDir + "/" + enc[:80] + "..." + enc[len(enc)-80:] + "-" + hex.EncodeToString(sum[:])
}

var hashedName = regexp.MustCompile(`^.{80}\.\.\..{80}-[0-9a-f]{64}$`)

// decode maps a lock file back to its lock (Mode unknown). parts is the
// path below the locks dir, store first. Hashed names cannot be fully
// reversed: their group ID is the escaped prefix's ID followed by "…".
func decode(parts []string) (lock.Request, bool) {
	if len(parts) < 2 || name.ValidateStore(parts[0]) != nil {
		return lock.Request{}, false
	}
	store, rest := parts[0], parts[1:]
	ns := name.Root
	var file, nsDir string
	hashed := false
	switch len(rest) {
	case 1: // <store>/<file>: root namespace
		file = rest[0]
	case 2: // <store>/<ns dir>/<file>, or <store>/hashed/<hashed name> for root
		if rest[0] == hashedDir && hashedName.MatchString(rest[1]) {
			hashed, file = true, rest[1]
		} else {
			nsDir, file = rest[0], rest[1]
		}
	case 3: // <store>/<ns dir>/hashed/<hashed name>
		if rest[1] != hashedDir {
			return lock.Request{}, false
		}
		nsDir, hashed, file = rest[0], true, rest[2]
	default:
		return lock.Request{}, false
	}
	if nsDir != "" {
		n, err := name.ParseNamespace(strings.ReplaceAll(nsDir, ":", "/"))
		if err != nil || n.IsRoot() {
			return lock.Request{}, false
		}
		ns = n
	}
	if file == nsLockName && !hashed {
		return lock.Request{Kind: lock.Namespace, Store: store, NS: ns}, true
	}
	if hashed {
		return decodeHashed(store, ns, file)
	}
	rel, err := unescapePath(file)
	if err != nil {
		return lock.Request{}, false
	}
	if strings.Count(rel, "/") == 2 {
		s, err := name.ParseSnapshot(ns, rel)
		if err != nil {
			return lock.Request{}, false
		}
		return lock.Request{Kind: lock.Snapshot, Store: store, Snapshot: s}.Normalize(), true
	}
	g, err := name.ParseGroup(ns, rel)
	if err != nil {
		return lock.Request{}, false
	}
	return lock.Request{Kind: lock.Group, Store: store, Group: g}.Normalize(), true
}

func decodeHashed(store string, ns name.Namespace, file string) (lock.Request, bool) {
	if !hashedName.MatchString(file) {
		return lock.Request{}, false
	}
	// Snapshot times contain ':', which group IDs cannot, and the time is
	// within the kept last 80 bytes.
	kind := lock.Group
	if strings.Contains(file[83:163], `\x3a`) {
		kind = lock.Snapshot
	}
	prefix := file[:80]
	if i := strings.LastIndexByte(prefix, '\\'); i > len(prefix)-4 {
		prefix = prefix[:i] // cut before a partial escape
	}
	rel, err := unescapePath(prefix)
	typ, id, ok := strings.Cut(rel, "/")
	if err != nil || !ok {
		return lock.Request{}, false
	}
	g := name.Group{NS: ns, Type: name.BackupType(typ), ID: id + "…"}
	if kind == lock.Snapshot {
		return lock.Request{Kind: kind, Store: store, Snapshot: name.Snapshot{Group: g}}.Normalize(), true
	}
	return lock.Request{Kind: kind, Store: store, Group: g}.Normalize(), true
}
