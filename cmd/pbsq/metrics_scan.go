package main

import (
	"context"
	"maps"
	"slices"

	"github.com/pbsq/pbsq/datastore/backend"
	s3backend "github.com/pbsq/pbsq/datastore/backend/s3"
	"github.com/pbsq/pbsq/worker"
)

// openBackend opens a worker's backend; S3 requests are counted.
func (s *workerStores) openBackend(ctx context.Context, store string, ds DatastoreConfig) (backend.Backend, error) {
	if ds.S3 != nil && s.s3Request != nil {
		hook := s.s3Request
		return s.a.openBackend(ctx, store, ds, s3backend.WithRequestHook(func(op, code string) { hook(store, op, code) }))
	}
	return s.a.openBackend(ctx, store, ds)
}

// scanOptions are the store scan's settings from the config; the
// scheduled (store, type) pairs are the jobs expected to succeed.
func (a *app) scanOptions() *worker.ScanOptions {
	o := &worker.ScanOptions{
		Stores:      slices.Sorted(maps.Keys(a.cfg.Datastores)),
		Interval:    a.cfg.Metrics.ScanInterval,
		GroupSeries: a.cfg.Metrics.GroupSeries == nil || *a.cfg.Metrics.GroupSeries,
	}
	for _, sc := range a.cfg.schedules() {
		for _, st := range sc.Payload.Stores() {
			k := worker.JobKey{Store: st, Type: sc.Payload.TaskType()}
			if !slices.Contains(o.Jobs, k) {
				o.Jobs = append(o.Jobs, k)
			}
		}
	}
	return o
}
