package main

import (
	"context"
	"fmt"
	"time"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/backend/local"
	s3backend "github.com/pbsq/pbsq/datastore/backend/s3"
	"github.com/pbsq/pbsq/datastore/name"
)

// openBackend opens the storage of a configured datastore (opts apply to
// an S3 one).
func (a *app) openBackend(ctx context.Context, store string, ds DatastoreConfig, opts ...s3backend.Option) (backend.Backend, error) {
	if ds.S3 != nil {
		cfg := s3Config(ds.S3)
		budget, err := a.s3Budget(store, ds.S3)
		if err != nil {
			return nil, err
		}
		cfg.Budget = budget
		return s3backend.New(ctx, cfg, opts...)
	}
	return local.New(ds.Path)
}

func s3Config(c *S3Config) s3backend.Config {
	return s3backend.Config{
		Endpoint:  c.Endpoint,
		Region:    c.Region,
		Bucket:    c.Bucket,
		Prefix:    c.Prefix,
		PathStyle: c.PathStyle,
	}
}

// storeConfig finds a datastore in the config; an unknown one is bad input.
func (a *app) storeConfig(store string) (DatastoreConfig, error) {
	if store == "" {
		return DatastoreConfig{}, usagef("--store is required (configured: %s)", a.cfg.storeNames())
	}
	if err := name.ValidateStore(store); err != nil {
		return DatastoreConfig{}, err
	}
	ds, ok := a.cfg.Datastores[store]
	if !ok {
		return DatastoreConfig{}, usagef("unknown datastore %q in %s (configured: %s); register it with `pbsq datastore create` or `pbsq datastore add`", store, a.configPath, a.cfg.storeNames())
	}
	return ds, nil
}

// openStore opens a configured datastore with the configured locker.
func (a *app) openStore(ctx context.Context, store string, lockWait *time.Duration) (*datastore.Store, error) {
	ds, err := a.storeConfig(store)
	if err != nil {
		return nil, err
	}
	b, err := a.openBackend(ctx, store, ds)
	if err != nil {
		return nil, fmt.Errorf("datastore %q: %w", store, err)
	}
	locker, err := a.locker(ctx, lockWait)
	if err != nil {
		return nil, err
	}
	opts := a.storeOptions(ds)
	opts.Locker = locker
	return datastore.Open(store, b, opts)
}

// storeOptions are the datastore options the config gives beside the
// locker: with the flock backend its dir (manifest locks, PBS's move
// journal), and an S3 datastore's .in-use override.
func (a *app) storeOptions(ds DatastoreConfig) datastore.Options {
	o := datastore.Options{Logger: a.log}
	if a.cfg.Locks.Backend != "redis" {
		o.LocksDir = a.cfg.Locks.Dir
	}
	if ds.S3 != nil {
		o.PBSInUseOverride = ds.S3.PBSInUseOverride
	}
	return o
}
