package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/name"
)

// lsEntry is one snapshot in `ls --json` (docs/DESIGN.md §7).
type lsEntry struct {
	NS          string  `json:"ns"`
	BackupType  string  `json:"backup-type"`
	BackupID    string  `json:"backup-id"`
	BackupTime  int64   `json:"backup-time"`
	Time        string  `json:"time"`
	Finished    bool    `json:"finished"`
	Protected   bool    `json:"protected"`
	VerifyState *string `json:"verify-state"`
}

func (a *app) lsCmd() *cobra.Command {
	var store, nsFlag string
	var recursive, asJSON bool
	cmd := &cobra.Command{
		Use:   "ls --store S [--ns N] [-r] [--json]",
		Short: "List namespaces, groups and snapshots",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, err := name.ParseNamespace(nsFlag)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			s, err := a.openStore(ctx, store, nil)
			if err != nil {
				return err
			}
			depth := 0
			if recursive {
				depth = -1
			}
			nss, err := s.ListNamespaces(ctx, ns, depth)
			if err != nil {
				return err
			}
			entries := []lsEntry{}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			for _, n := range nss {
				groups, err := s.ListGroups(ctx, n)
				if err != nil {
					return err
				}
				if !asJSON {
					label := n.String()
					if n.IsRoot() {
						label = "/ (root)"
					}
					fmt.Fprintf(tw, "namespace %s\t%d group(s)\n", label, len(groups))
				}
				for _, g := range groups {
					snaps, err := s.ListSnapshots(ctx, g)
					if err != nil {
						return err
					}
					for _, sn := range snaps {
						e := lsEntry{
							NS: n.String(), BackupType: string(g.Type), BackupID: g.ID,
							BackupTime: sn.Time.Unix(), Time: sn.Time.UTC().Format(time.RFC3339),
							Finished: sn.Finished, Protected: sn.Protected,
						}
						if sn.Finished {
							e.VerifyState = verifyState(ctx, s, sn)
						}
						entries = append(entries, e)
						if !asJSON {
							state := "unfinished"
							if sn.Finished {
								state = "finished"
							}
							if e.VerifyState != nil {
								state += ", verify " + *e.VerifyState
							}
							if sn.Protected {
								state += ", protected"
							}
							fmt.Fprintf(tw, "  %s\t%s\n", sn.Snapshot.String(), state)
						}
					}
				}
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(entries)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&store, "store", "", "datastore")
	cmd.Flags().StringVar(&nsFlag, "ns", "", "namespace ('' or absent: root)")
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "include all namespaces below")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array of snapshots")
	return cmd
}

// verifyState reads the manifest's verify state; an unreadable manifest
// reports "failed" rather than hiding the snapshot.
func verifyState(ctx context.Context, s *datastore.Store, sn datastore.SnapshotInfo) *string {
	m, err := s.ReadManifest(ctx, sn.Snapshot)
	if err != nil {
		st := "failed"
		return &st
	}
	if vs := m.VerifyState(); vs != nil && vs.State != "" {
		st := vs.State
		return &st
	}
	return nil
}
