package main

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/user"
	"sort"
	"strconv"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/backend/local"
	s3backend "github.com/pbsq/pbsq/datastore/backend/s3"
	"github.com/pbsq/pbsq/datastore/name"
)

func (a *app) datastoreCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "datastore", Short: "Create, register and list datastores"}
	var path string
	var s3c S3Config
	create := &cobra.Command{
		Use:   "create NAME (--path DIR | --s3-endpoint URL --s3-bucket B)",
		Short: "Create a new datastore and register it in the config",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			store := args[0]
			if err := name.ValidateStore(store); err != nil {
				return err
			}
			if _, ok := a.cfg.Datastores[store]; ok {
				return usagef("datastore %q is already registered in %s", store, a.configPath)
			}
			ds, err := datastoreFlags(path, s3c, store)
			if err != nil {
				return err
			}
			if ds.S3 != nil {
				// Checked before anything is written to the bucket.
				probe := &Config{Datastores: maps.Clone(a.cfg.Datastores)}
				probe.Datastores[store] = ds
				if err := probe.checkS3Overlap(); err != nil {
					return usageError{err}
				}
			}
			ctx := cmd.Context()
			if ds.S3 == nil {
				created, err := prepareEmptyDir(ds.Path)
				if err != nil {
					return err
				}
				// As PBS does: a store is backup's, so that PBS (and pbsq
				// running as backup) can use it. Only the directory made
				// here is given away; an existing one keeps its owner, and
				// the backend then creates everything as that owner.
				if created && os.Geteuid() == 0 {
					if err := giveToBackupUser(ds.Path); err != nil {
						return err
					}
				}
			}
			b, err := a.openBackend(ctx, store, ds)
			if err != nil {
				return err
			}
			defer b.Close()
			if s3b, ok := b.(*s3backend.S3); ok {
				if err := s3b.CheckBucket(ctx); err != nil {
					return err
				}
			}
			if _, err := datastore.Create(ctx, store, b, a.storeOptions(ds)); err != nil {
				return err
			}
			if err := addDatastore(a.configPath, store, ds); err != nil {
				return err
			}
			fmt.Printf("created datastore %s at %s (registered in %s)\n", store, b, a.configPath)
			return nil
		},
	}
	create.Flags().StringVar(&path, "path", "", "directory of a filesystem datastore (created; must be empty)")
	create.Flags().StringVar(&s3c.Endpoint, "s3-endpoint", "", "S3 endpoint URL")
	create.Flags().StringVar(&s3c.Bucket, "s3-bucket", "", "S3 bucket")
	create.Flags().StringVar(&s3c.Region, "s3-region", "us-east-1", "S3 region")
	create.Flags().StringVar(&s3c.Prefix, "s3-prefix", "", "key prefix (default: the datastore name)")
	create.Flags().BoolVar(&s3c.PathStyle, "s3-path-style", false, "path-style bucket addressing")

	var addPath string
	add := &cobra.Command{
		Use:   "add NAME --path DIR",
		Short: "Register an existing (e.g. PBS) datastore without changing it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			store := args[0]
			if err := name.ValidateStore(store); err != nil {
				return err
			}
			if addPath == "" {
				return usagef("--path is required")
			}
			if _, ok := a.cfg.Datastores[store]; ok {
				return usagef("datastore %q is already registered in %s", store, a.configPath)
			}
			b, err := local.New(addPath)
			if err != nil {
				return usageError{err}
			}
			ok, err := datastore.IsDatastore(cmd.Context(), b)
			if err != nil {
				return err
			}
			if !ok {
				return usagef("%s is not a datastore (no .chunks directory); use `pbsq datastore create`", addPath)
			}
			if err := addDatastore(a.configPath, store, DatastoreConfig{Path: b.Base()}); err != nil {
				return err
			}
			fmt.Printf("registered datastore %s at %s in %s\n", store, b.Base(), a.configPath)
			return nil
		},
	}
	add.Flags().StringVar(&addPath, "path", "", "directory of the existing datastore")

	ls := &cobra.Command{
		Use:   "ls",
		Short: "List the configured datastores",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var names []string
			for n := range a.cfg.Datastores {
				names = append(names, n)
			}
			sort.Strings(names)
			for _, n := range names {
				ds := a.cfg.Datastores[n]
				if ds.S3 != nil {
					fmt.Printf("%s\ts3 %s bucket=%s prefix=%s\n", n, ds.S3.Endpoint, ds.S3.Bucket, ds.S3.Prefix)
				} else {
					fmt.Printf("%s\t%s\n", n, ds.Path)
				}
			}
			return nil
		},
	}
	cmd.AddCommand(create, add, ls)
	return cmd
}

func datastoreFlags(path string, s3c S3Config, store string) (DatastoreConfig, error) {
	switch {
	case path != "" && s3c.Endpoint != "":
		return DatastoreConfig{}, usagef("--path and --s3-endpoint are exclusive")
	case path != "":
		return DatastoreConfig{Path: path}, nil
	case s3c.Endpoint != "":
		if s3c.Bucket == "" {
			return DatastoreConfig{}, usagef("--s3-bucket is required with --s3-endpoint")
		}
		if s3c.Prefix == "" {
			s3c.Prefix = store
		}
		ds := DatastoreConfig{S3: &s3c}
		if err := ds.validate(store); err != nil {
			return ds, usageError{err}
		}
		return ds, nil
	}
	return DatastoreConfig{}, usagef("give --path DIR or --s3-endpoint URL --s3-bucket B")
}

// prepareEmptyDir creates dir or accepts an existing empty one; created
// tells which.
func prepareEmptyDir(dir string) (created bool, err error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return false, fmt.Errorf("create datastore directory %q: %w", dir, err)
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("datastore directory %q: %w", dir, err)
	}
	if len(ents) > 0 {
		return false, usagef("datastore directory %q is not empty; to register an existing datastore use `pbsq datastore add`", dir)
	}
	return false, nil
}

// backupUser is PBS's service user, which owns its datastores.
const backupUser = "backup"

// giveToBackupUser chowns dir, which this call created, to user backup
// when that user exists (PBS's ChunkStore::create does the same).
func giveToBackupUser(dir string) error {
	u, err := user.Lookup(backupUser)
	var unknown user.UnknownUserError
	if errors.As(err, &unknown) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up user %s: %w", backupUser, err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("user %s has a non-numeric uid %q or gid %q", backupUser, u.Uid, u.Gid)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	if err := unix.Fchown(fd, uid, gid); err != nil {
		return &os.PathError{Op: "chown", Path: dir, Err: err}
	}
	return nil
}
