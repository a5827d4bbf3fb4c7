package datastore

import (
	"context"
	"fmt"

	"github.com/pbsq/pbsq/datastore/name"
)

// Scope selects what an operation works on: a namespace (recursive down to
// MaxDepth levels, < 0 for all), or one group, or one snapshot in it.
type Scope struct {
	NS       name.Namespace
	MaxDepth int
	// Group, when set, limits the scope to that group in NS.
	Group *name.Group
	// Snapshot, when set, limits the scope to that snapshot (Group too).
	Snapshot *name.Snapshot
	// Groups, when set, limits the scope to these groups below NS (one
	// shard of a sharded job); missing ones are left out.
	Groups []name.Group
}

// String describes the scope for messages.
func (sc Scope) String() string {
	ns := fmt.Sprintf("namespace %q", sc.NS)
	switch {
	case sc.Snapshot != nil:
		return fmt.Sprintf("snapshot %s in %s", sc.Snapshot, ns)
	case sc.Group != nil:
		return fmt.Sprintf("group %s in %s", sc.Group, ns)
	case sc.MaxDepth < 0:
		return ns + " and everything below"
	default:
		return fmt.Sprintf("%s down to depth %d", ns, sc.MaxDepth)
	}
}

// validate checks that Group and Snapshot lie in NS.
func (sc Scope) validate() error {
	if sc.Group != nil && sc.Group.NS != sc.NS {
		return invalidf("group %s is not in namespace %q", sc.Group, sc.NS)
	}
	if sc.Snapshot != nil && sc.Snapshot.NS != sc.NS {
		return invalidf("snapshot %s is not in namespace %q", sc.Snapshot, sc.NS)
	}
	if sc.NS.Depth()+max(sc.MaxDepth, 0) > name.MaxNamespaceDepth && sc.MaxDepth >= 0 {
		return invalidf("max-depth %d below namespace %q exceeds the limit of %d levels", sc.MaxDepth, sc.NS, name.MaxNamespaceDepth)
	}
	return nil
}

// groups lists the groups in scope, namespace by namespace.
func (s *Store) scopeGroups(ctx context.Context, sc Scope) ([]name.Group, error) {
	if err := sc.validate(); err != nil {
		return nil, err
	}
	if err := s.requireNamespace(ctx, sc.NS); err != nil {
		return nil, err
	}
	if sc.Snapshot != nil {
		return []name.Group{sc.Snapshot.Group}, nil
	}
	if len(sc.Groups) > 0 {
		return sc.Groups, nil
	}
	if sc.Group != nil {
		ok, err := s.GroupExists(ctx, *sc.Group)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("group %s in namespace %q on store %q: %w", sc.Group, sc.NS, s.name, ErrNotFound)
		}
		return []name.Group{*sc.Group}, nil
	}
	nss, err := s.ListNamespaces(ctx, sc.NS, sc.MaxDepth)
	if err != nil {
		return nil, err
	}
	var out []name.Group
	for _, ns := range nss {
		gs, err := s.ListGroups(ctx, ns)
		if err != nil {
			return nil, err
		}
		out = append(out, gs...)
	}
	return out, nil
}

// Skipped is an item set aside, typically because it stayed locked.
type Skipped struct {
	Item   string `json:"item"`
	Reason string `json:"reason"`
}
