// Package name holds the identifiers of a PBS-format datastore — datastore
// names, namespaces, backup groups and snapshots — with their validation and
// relative paths. It is pure so that every other package can import it.
package name

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrInvalid is wrapped by every validation error of this package.
var ErrInvalid = errors.New("invalid")

const (
	// MaxNamespaceDepth is the deepest a namespace may be below root.
	MaxNamespaceDepth = 7
	// MaxNamespaceLen bounds the namespace string, as PBS does.
	MaxNamespaceLen = 256
	// maxIDLen bounds a backup id or namespace component; PBS's safe-id limit.
	maxIDLen = 128
	// TimeLayout is the snapshot directory name format (UTC, seconds).
	TimeLayout = "2006-01-02T15:04:05Z"
)

func invalid(kind, value, why string) error {
	return fmt.Errorf("%w %s %q: %s", ErrInvalid, kind, value, why)
}

// safeID reports why s is not a PBS safe id (`[A-Za-z0-9_][A-Za-z0-9._\-]*`),
// or "" when it is one.
func safeID(s string) string {
	if s == "" {
		return "must not be empty"
	}
	if len(s) > maxIDLen {
		return fmt.Sprintf("longer than %d characters", maxIDLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '_':
		case (c == '.' || c == '-') && i > 0:
		default:
			return fmt.Sprintf("character %q at position %d not allowed (use A-Z a-z 0-9 _ and, after the first, . -)", c, i)
		}
	}
	return ""
}

// ValidateStore checks a datastore name: a safe id of 3 to 32 characters.
func ValidateStore(s string) error {
	if why := safeID(s); why != "" {
		return invalid("datastore name", s, why)
	}
	if len(s) < 3 || len(s) > 32 {
		return invalid("datastore name", s, "must be 3 to 32 characters long")
	}
	return nil
}

// ValidateID checks a backup id.
func ValidateID(s string) error {
	if why := safeID(s); why != "" {
		return invalid("backup id", s, why)
	}
	return nil
}

// BackupType is vm, ct or host.
type BackupType string

// The backup types PBS knows.
const (
	TypeVM   BackupType = "vm"
	TypeCT   BackupType = "ct"
	TypeHost BackupType = "host"
)

// Types lists the backup types in PBS's listing order.
var Types = []BackupType{TypeCT, TypeHost, TypeVM}

// ParseType validates a backup type.
func ParseType(s string) (BackupType, error) {
	switch t := BackupType(s); t {
	case TypeVM, TypeCT, TypeHost:
		return t, nil
	}
	return "", invalid("backup type", s, "must be vm, ct or host")
}

// Namespace is a validated namespace; the zero value is the root.
type Namespace struct{ s string }

// Root is the root namespace.
var Root = Namespace{}

// ParseNamespace validates a namespace given as components joined by '/'.
// The empty string is the root.
func ParseNamespace(s string) (Namespace, error) {
	if s == "" {
		return Root, nil
	}
	if len(s) > MaxNamespaceLen {
		return Root, invalid("namespace", s, fmt.Sprintf("longer than %d characters", MaxNamespaceLen))
	}
	comps := strings.Split(s, "/")
	if len(comps) > MaxNamespaceDepth {
		return Root, invalid("namespace", s, fmt.Sprintf("deeper than %d levels", MaxNamespaceDepth))
	}
	for _, c := range comps {
		if why := safeID(c); why != "" {
			return Root, invalid("namespace", s, fmt.Sprintf("component %q: %s", c, why))
		}
	}
	return Namespace{s}, nil
}

// MustNamespace is ParseNamespace for constants in tests and examples.
func MustNamespace(s string) Namespace {
	ns, err := ParseNamespace(s)
	if err != nil {
		panic(err)
	}
	return ns
}

// String returns the namespace as components joined by '/'; "" for root.
func (n Namespace) String() string { return n.s }

// IsRoot reports whether n is the root namespace.
func (n Namespace) IsRoot() bool { return n.s == "" }

// Components returns the path components; none for root.
func (n Namespace) Components() []string {
	if n.s == "" {
		return nil
	}
	return strings.Split(n.s, "/")
}

// Depth is the number of components: 0 for root.
func (n Namespace) Depth() int {
	if n.s == "" {
		return 0
	}
	return strings.Count(n.s, "/") + 1
}

// Parent returns the parent namespace; root's parent is root.
func (n Namespace) Parent() Namespace {
	i := strings.LastIndexByte(n.s, '/')
	if i < 0 {
		return Root
	}
	return Namespace{n.s[:i]}
}

// Name is the last component; "" for root.
func (n Namespace) Name() string {
	return n.s[strings.LastIndexByte(n.s, '/')+1:]
}

// Child returns n/c after validating the result.
func (n Namespace) Child(c string) (Namespace, error) {
	if n.s == "" {
		return ParseNamespace(c)
	}
	return ParseNamespace(n.s + "/" + c)
}

// Ancestors returns the proper ancestors of n, nearest-root first, without
// root itself: for a/b/c it returns a, a/b.
func (n Namespace) Ancestors() []Namespace {
	var out []Namespace
	for i := 0; i < len(n.s); i++ {
		if n.s[i] == '/' {
			out = append(out, Namespace{n.s[:i]})
		}
	}
	return out
}

// Contains reports whether other is n or lies below n.
func (n Namespace) Contains(other Namespace) bool {
	if n.s == "" || n.s == other.s {
		return true
	}
	return strings.HasPrefix(other.s, n.s+"/")
}

// Rebase maps other, which must lie inside from, to the same place below to.
func Rebase(other, from, to Namespace) (Namespace, error) {
	if !from.Contains(other) {
		return Root, fmt.Errorf("%w namespace %q: not inside %q", ErrInvalid, other.s, from.s)
	}
	rest := strings.TrimPrefix(strings.TrimPrefix(other.s, from.s), "/")
	switch {
	case rest == "":
		return to, nil
	case to.IsRoot():
		return ParseNamespace(rest)
	default:
		return ParseNamespace(to.s + "/" + rest)
	}
}

// Path is the directory of n relative to the datastore base: "" for root,
// "ns/a/ns/b" for a/b.
func (n Namespace) Path() string {
	if n.s == "" {
		return ""
	}
	return "ns/" + strings.ReplaceAll(n.s, "/", "/ns/")
}

// join joins a namespace directory with a relative path.
func join(dir, rel string) string {
	if dir == "" {
		return rel
	}
	return dir + "/" + rel
}

// MarshalText lets namespaces appear as plain strings in JSON.
func (n Namespace) MarshalText() ([]byte, error) { return []byte(n.s), nil }

// UnmarshalText validates while decoding.
func (n *Namespace) UnmarshalText(b []byte) error {
	ns, err := ParseNamespace(string(b))
	if err != nil {
		return err
	}
	*n = ns
	return nil
}

// Group is a backup group: type and id inside a namespace.
type Group struct {
	NS   Namespace
	Type BackupType
	ID   string
}

// NewGroup validates and builds a group.
func NewGroup(ns Namespace, typ, id string) (Group, error) {
	t, err := ParseType(typ)
	if err != nil {
		return Group{}, err
	}
	if err := ValidateID(id); err != nil {
		return Group{}, err
	}
	return Group{NS: ns, Type: t, ID: id}, nil
}

// ParseGroup parses "<type>/<id>" inside ns.
func ParseGroup(ns Namespace, s string) (Group, error) {
	typ, id, ok := strings.Cut(s, "/")
	if !ok {
		return Group{}, invalid("group", s, "must be <type>/<id>, e.g. vm/100")
	}
	return NewGroup(ns, typ, id)
}

// String is "<type>/<id>" (without the namespace, as PBS prints groups).
func (g Group) String() string { return string(g.Type) + "/" + g.ID }

// RelPath is the group directory relative to its namespace directory.
func (g Group) RelPath() string { return string(g.Type) + "/" + g.ID }

// Path is the group directory relative to the datastore base.
func (g Group) Path() string { return join(g.NS.Path(), g.RelPath()) }

// InNS returns the same group in another namespace.
func (g Group) InNS(ns Namespace) Group { g.NS = ns; return g }

// Snapshot is one backup of a group at a time (UTC, whole seconds).
type Snapshot struct {
	Group
	Time time.Time
}

// ParseTime parses a snapshot time `YYYY-MM-DDTHH:MM:SSZ`.
func ParseTime(s string) (time.Time, error) {
	t, err := time.Parse(TimeLayout, s)
	if err != nil || t.Format(TimeLayout) != s {
		return time.Time{}, invalid("snapshot time", s, "must be UTC to the second, like 2024-03-01T10:00:00Z")
	}
	return t, nil
}

// NewSnapshot builds a snapshot, truncating t to UTC seconds.
func NewSnapshot(g Group, t time.Time) Snapshot {
	return Snapshot{Group: g, Time: t.UTC().Truncate(time.Second)}
}

// ParseSnapshot parses "<type>/<id>/<time>" inside ns.
func ParseSnapshot(ns Namespace, s string) (Snapshot, error) {
	i := strings.LastIndexByte(s, '/')
	if i < 0 {
		return Snapshot{}, invalid("snapshot", s, "must be <type>/<id>/<time>, e.g. vm/100/2024-03-01T10:00:00Z")
	}
	g, err := ParseGroup(ns, s[:i])
	if err != nil {
		return Snapshot{}, err
	}
	t, err := ParseTime(s[i+1:])
	if err != nil {
		return Snapshot{}, err
	}
	return Snapshot{Group: g, Time: t}, nil
}

// TimeString is the snapshot's directory name.
func (s Snapshot) TimeString() string { return s.Time.UTC().Format(TimeLayout) }

// String is "<type>/<id>/<time>".
func (s Snapshot) String() string { return s.Group.String() + "/" + s.TimeString() }

// RelPath is the snapshot directory relative to its namespace directory.
func (s Snapshot) RelPath() string { return s.Group.RelPath() + "/" + s.TimeString() }

// Path is the snapshot directory relative to the datastore base.
func (s Snapshot) Path() string { return join(s.NS.Path(), s.RelPath()) }

// File is the path of a file of the snapshot relative to the datastore base.
func (s Snapshot) File(name string) string { return s.Path() + "/" + name }

// InNS returns the same snapshot in another namespace.
func (s Snapshot) InNS(ns Namespace) Snapshot { s.NS = ns; return s }

// ValidateFileName checks a file name inside a snapshot directory.
func ValidateFileName(s string) error {
	switch {
	case s == "" || s == "." || s == "..":
		return invalid("file name", s, "must be a plain name")
	case strings.ContainsAny(s, "/\x00"):
		return invalid("file name", s, "must not contain '/' or NUL")
	case len(s) > 255:
		return invalid("file name", s, "longer than 255 bytes")
	}
	return nil
}
