package datastore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/name"
)

// ListGroups returns the groups directly inside ns, sorted by type and id.
func (s *Store) ListGroups(ctx context.Context, ns name.Namespace) ([]name.Group, error) {
	var out []name.Group
	for _, t := range name.Types {
		ents, err := s.b.List(ctx, backend.Join(ns.Path(), string(t)))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list groups of namespace %q: %w", ns, err)
		}
		for _, e := range ents {
			if !e.Dir {
				continue
			}
			g, err := name.NewGroup(ns, string(t), e.Name)
			if err != nil {
				s.log.Warn("ignoring invalid group directory", "ns", ns.String(), "type", t, "name", e.Name)
				continue
			}
			out = append(out, g)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out, nil
}

// GroupExists reports whether the group directory exists.
func (s *Store) GroupExists(ctx context.Context, g name.Group) (bool, error) {
	fi, err := s.b.Stat(ctx, g.Path())
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("group %s in namespace %q: %w", g, g.NS, err)
	}
	return fi.Dir, nil
}

// Bounds of the small files of a group: anything larger is not one pbsq
// or PBS wrote, and is refused before it is read whole.
const (
	maxOwnerFile = 4 << 10
	maxNotesFile = 1 << 20
)

// ErrBadOwnerFile: a group's owner file does not hold an auth id. Its
// content is never shown: the file may be a hard link to anything.
var ErrBadOwnerFile = errors.New("owner file does not hold an auth id")

// GroupOwner returns the auth id in the group's owner file. A file that
// holds no plausible auth id (PBS's: name@realm[!token], printable, no
// spaces) is an error that names the file, never its content.
func (s *Store) GroupOwner(ctx context.Context, g name.Group) (string, error) {
	data, err := backend.ReadFileMax(ctx, s.b, backend.Join(g.Path(), "owner"), maxOwnerFile)
	if err != nil {
		return "", fmt.Errorf("owner of group %s in namespace %q: %w", g, g.NS, err)
	}
	owner := strings.TrimRight(string(data), "\n")
	if !plausibleAuthID(owner) {
		return "", fmt.Errorf("owner of group %s in namespace %q: %w (%d bytes)", g, g.NS, ErrBadOwnerFile, len(data))
	}
	return owner, nil
}

// plausibleAuthID accepts what PBS's Authid allows (user@realm, optionally
// !tokenname; at most 64+1+64 characters) and nothing that could carry a
// secret or a terminal escape into a message.
func plausibleAuthID(s string) bool {
	if s == "" || len(s) > 129 || !strings.Contains(s, "@") {
		return false
	}
	for _, r := range s {
		if r <= ' ' || r == 0x7f || r > 0x7e {
			return false
		}
	}
	return true
}

// ValidateOwner checks an auth id such as root@pam or user@pbs!token.
func ValidateOwner(owner string) error {
	if owner == "" || len(owner) > 64 || strings.ContainsAny(owner, "\n\r\x00/ ") || !strings.Contains(owner, "@") {
		return invalidf("owner %q: must be an auth id like root@pam or user@pbs!token", owner)
	}
	return nil
}

// SetGroupOwner writes the owner file (one line).
func (s *Store) SetGroupOwner(ctx context.Context, g name.Group, owner string) error {
	if err := ValidateOwner(owner); err != nil {
		return err
	}
	if err := s.b.WriteFile(ctx, backend.Join(g.Path(), "owner"), []byte(owner+"\n")); err != nil {
		return fmt.Errorf("set owner of group %s in namespace %q: %w", g, g.NS, err)
	}
	return nil
}

// GroupNotes returns the group's notes ("" when there are none).
func (s *Store) GroupNotes(ctx context.Context, g name.Group) (string, error) {
	data, err := backend.ReadFileMax(ctx, s.b, backend.Join(g.Path(), "notes"), maxNotesFile)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("notes of group %s in namespace %q: %w", g, g.NS, err)
	}
	return string(data), nil
}

// SetGroupNotes writes the notes file.
func (s *Store) SetGroupNotes(ctx context.Context, g name.Group, notes string) error {
	if err := s.b.WriteFile(ctx, backend.Join(g.Path(), "notes"), []byte(notes)); err != nil {
		return fmt.Errorf("set notes of group %s in namespace %q: %w", g, g.NS, err)
	}
	return nil
}
