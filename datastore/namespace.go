package datastore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sort"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

// namespaceMarker keeps an empty namespace visible on object storage.
const namespaceMarker = ".namespace"

// NamespaceExists reports whether ns exists (root always does).
func (s *Store) NamespaceExists(ctx context.Context, ns name.Namespace) (bool, error) {
	if ns.IsRoot() {
		return true, nil
	}
	fi, err := s.b.Stat(ctx, ns.Path())
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("namespace %q: %w", ns, err)
	}
	return fi.Dir, nil
}

// requireNamespace returns ErrNotFound naming ns when it does not exist.
func (s *Store) requireNamespace(ctx context.Context, ns name.Namespace) error {
	ok, err := s.NamespaceExists(ctx, ns)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("namespace %q on store %q: %w (create it with `pbsq ns create`)", ns, s.name, ErrNotFound)
	}
	return nil
}

// CreateNamespace creates ns and its missing parents, like mkdir -p.
func (s *Store) CreateNamespace(ctx context.Context, ns name.Namespace) error {
	chain := append(ns.Ancestors(), ns)
	for _, n := range chain {
		if n.IsRoot() {
			continue
		}
		if err := s.b.Mkdir(ctx, n.Path()); err != nil {
			return fmt.Errorf("create namespace %q: %w", n, err)
		}
		if s.b.Features().ImplicitDirs {
			if _, err := s.createNamespaceMarker(ctx, n); err != nil {
				return err
			}
		}
	}
	return nil
}

// createNamespaceMarker writes ns's marker (object storage) unless it is
// there, and reports whether it wrote it.
func (s *Store) createNamespaceMarker(ctx context.Context, ns name.Namespace) (bool, error) {
	created, err := s.b.CreateFile(ctx, backend.Join(ns.Path(), namespaceMarker), nil)
	if err != nil {
		return false, fmt.Errorf("create namespace %q: %w", ns, err)
	}
	return created, nil
}

// childNamespaces lists the direct children of ns.
func (s *Store) childNamespaces(ctx context.Context, ns name.Namespace) ([]name.Namespace, error) {
	ents, err := s.b.List(ctx, backend.Join(ns.Path(), "ns"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list namespace %q: %w", ns, err)
	}
	var out []name.Namespace
	for _, e := range ents {
		if !e.Dir {
			continue
		}
		child, err := ns.Child(e.Name)
		if err != nil {
			s.log.Warn("ignoring invalid namespace directory", "parent", ns.String(), "name", e.Name)
			continue
		}
		out = append(out, child)
	}
	return out, nil
}

// ListNamespaces returns ns and the namespaces below it down to maxDepth
// levels below ns (maxDepth < 0: no limit), parents before children, sorted.
func (s *Store) ListNamespaces(ctx context.Context, ns name.Namespace, maxDepth int) ([]name.Namespace, error) {
	if err := s.requireNamespace(ctx, ns); err != nil {
		return nil, err
	}
	return s.namespacesBelow(ctx, ns, maxDepth)
}

// namespacesBelow is ListNamespaces of a namespace known to exist.
func (s *Store) namespacesBelow(ctx context.Context, ns name.Namespace, maxDepth int) ([]name.Namespace, error) {
	out := []name.Namespace{ns}
	var walk func(n name.Namespace, depth int) error
	walk = func(n name.Namespace, depth int) error {
		if maxDepth >= 0 && depth >= maxDepth {
			return nil
		}
		kids, err := s.childNamespaces(ctx, n)
		if err != nil {
			return err
		}
		for _, k := range kids {
			out = append(out, k)
			if err := walk(k, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(ns, 0); err != nil {
		return nil, err
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out, nil
}

// RemoveNamespace deletes an empty namespace (no groups, no children).
func (s *Store) RemoveNamespace(ctx context.Context, ns name.Namespace) error {
	if ns.IsRoot() {
		return invalidf("the root namespace cannot be removed")
	}
	if err := s.requireNamespace(ctx, ns); err != nil {
		return err
	}
	kids, err := s.childNamespaces(ctx, ns)
	if err != nil {
		return err
	}
	if len(kids) > 0 {
		return fmt.Errorf("namespace %q has child namespaces (%s first): %w", ns, kids[0], backend.ErrNotEmpty)
	}
	groups, err := s.ListGroups(ctx, ns)
	if err != nil {
		return err
	}
	if len(groups) > 0 {
		return fmt.Errorf("namespace %q still has %d group(s) (%s first): %w", ns, len(groups), groups[0], backend.ErrNotEmpty)
	}
	return s.removeEmptyNamespaceDir(ctx, ns)
}

// removeEmptyNamespaceDir removes the directory skeleton of a namespace that
// holds no groups or children: empty type and "ns" directories, the marker.
func (s *Store) removeEmptyNamespaceDir(ctx context.Context, ns name.Namespace) error {
	for _, sub := range []string{"ns", "vm", "ct", "host"} {
		if err := s.b.RemoveDir(ctx, backend.Join(ns.Path(), sub)); err != nil {
			return fmt.Errorf("remove namespace %q: %w", ns, err)
		}
	}
	if err := s.b.Remove(ctx, backend.Join(ns.Path(), namespaceMarker)); err != nil {
		return fmt.Errorf("remove namespace %q: %w", ns, err)
	}
	if err := s.b.RemoveDir(ctx, ns.Path()); err != nil {
		return fmt.Errorf("remove namespace %q: %w", ns, err)
	}
	return nil
}

// RemoveNamespaceLocked removes an empty namespace under an exclusive lock
// on it (which also excludes all work below it).
func (s *Store) RemoveNamespaceLocked(ctx context.Context, ns name.Namespace) error {
	if ns.IsRoot() {
		return invalidf("the root namespace cannot be removed")
	}
	ctx, release, err := hold(ctx, s.on(s.nsRequest(ns, lock.Exclusive))...)
	if err != nil {
		return err
	}
	defer release()
	return s.RemoveNamespace(ctx, ns)
}
