package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/name"
)

// parseBackupTime accepts the snapshot format, RFC 3339 or epoch seconds.
func parseBackupTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := name.ParseTime(s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.UTC(), nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil && n > 0 {
		return time.Unix(n, 0).UTC(), nil
	}
	return time.Time{}, fmt.Errorf("%w backup time %q: use 2024-03-01T10:00:00Z, RFC 3339 or epoch seconds", name.ErrInvalid, s)
}

func (a *app) backupCmd() *cobra.Command {
	var store, nsFlag, typ, id, at, owner string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "backup --store S [--ns N] --type T --id ID [--time T] FILE...",
		Short: "Write a real PBS-format snapshot of files",
		Long: `Write a snapshot: *.img files become fixed indexes (4 MiB chunks), small
*.conf/*.json files become blobs, everything else a dynamic index with
content-defined chunking (1/4/16 MiB min/avg/max).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, err := name.ParseNamespace(nsFlag)
			if err != nil {
				return err
			}
			g, err := name.NewGroup(ns, typ, id)
			if err != nil {
				return err
			}
			t, err := parseBackupTime(at)
			if err != nil {
				return err
			}
			req := datastore.BackupRequest{Group: g, Time: t, Owner: owner}
			for _, f := range args {
				req.Sources = append(req.Sources, datastore.BackupSource{Path: f})
			}
			s, err := a.openStore(cmd.Context(), store, nil)
			if err != nil {
				return err
			}
			bar := newProgressPrinter(os.Stderr, "backup", !asJSON)
			res, err := s.Backup(cmd.Context(), req, bar.update)
			bar.done()
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(os.Stdout).Encode(res)
			}
			fmt.Printf("snapshot %s in namespace %q: %d file(s), %.1f MiB, %d chunks (%d new), %.1f MiB/s\n",
				res.Snapshot, res.NS, len(res.Files), float64(res.Bytes)/(1<<20), res.Chunks, res.NewChunks, res.MiBPerSecond)
			return nil
		},
	}
	cmd.Flags().StringVar(&store, "store", "", "datastore")
	cmd.Flags().StringVar(&nsFlag, "ns", "", "namespace")
	cmd.Flags().StringVar(&typ, "type", "", "backup type: vm, ct or host")
	cmd.Flags().StringVar(&id, "id", "", "backup id")
	cmd.Flags().StringVar(&at, "time", "", "snapshot time (default now)")
	cmd.Flags().StringVar(&owner, "owner", "root@pam", "owner auth id of a new group")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}
