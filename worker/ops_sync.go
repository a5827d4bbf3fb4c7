package worker

import (
	"context"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/tasks"
)

// runSync opens both datastores and runs datastore.Sync.
func runSync(ctx context.Context, open opener, p *tasks.Sync, progress datastore.ProgressFunc) (Outcome, error) {
	req, err := syncRequest(p)
	if err != nil {
		return nil, err
	}
	src, err := open(p.SourceStore)
	if err != nil {
		return nil, err
	}
	dst, err := open(p.Store)
	if err != nil {
		return nil, err
	}
	req.Share = shareFrom(ctx)
	return outcome(datastore.Sync(ctx, src, dst, req, progress))
}

// syncRequest maps the payload (already validated) to the operation's
// request, with the payload's defaults: all depths, all snapshots.
func syncRequest(p *tasks.Sync) (datastore.SyncRequest, error) {
	srcNS, err := name.ParseNamespace(p.SourceNS)
	if err != nil {
		return datastore.SyncRequest{}, err
	}
	ns, err := name.ParseNamespace(p.NS)
	if err != nil {
		return datastore.SyncRequest{}, err
	}
	req := datastore.SyncRequest{
		SourceNS:       srcNS,
		NS:             ns,
		MaxDepth:       depth(p.MaxDepth),
		RemoveVanished: p.RemoveVanished,
		ResyncCorrupt:  p.ResyncCorrupt,
		Owner:          p.Owner,
		Rate:           p.Rate,
	}
	if p.TransferLast != nil {
		req.TransferLast = *p.TransferLast
	}
	if req.Owner == "" {
		req.Owner = datastore.DefaultSyncOwner
	}
	if p.Shard != nil {
		if req.Groups, err = shardGroups(p.Shard); err != nil {
			return datastore.SyncRequest{}, err
		}
	}
	for _, f := range p.GroupFilter {
		gf, err := name.ParseGroupFilter(f)
		if err != nil {
			return datastore.SyncRequest{}, err
		}
		req.Filters = append(req.Filters, gf)
	}
	return req, nil
}
