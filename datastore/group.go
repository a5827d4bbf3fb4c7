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

// GroupOwner returns the auth id in the group's owner file.
func (s *Store) GroupOwner(ctx context.Context, g name.Group) (string, error) {
	data, err := s.b.ReadFile(ctx, backend.Join(g.Path(), "owner"))
	if err != nil {
		return "", fmt.Errorf("owner of group %s in namespace %q: %w", g, g.NS, err)
	}
	return strings.TrimRight(string(data), "\n"), nil
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
	data, err := s.b.ReadFile(ctx, backend.Join(g.Path(), "notes"))
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
