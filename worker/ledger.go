package worker

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/internal/tick"
)

// The chunk ledger of a sharded job (docs/DESIGN.md §13): one Redis hash
// per job, field = a chunk's 32-byte binary digest, value = a claim
// ("c" + the claiming shard's task id) or a verdict ("v" + code, decoded
// size, time, reason). A claim holds while its shard's heartbeat key
// lives; a shard that died leaves claims anybody may take over once its
// heartbeat expired, and its own re-run (same task id) takes them back at
// once. Entries are capped (Options.LedgerCap): beyond the cap a shard
// checks chunks on its own, as an unsharded task does. The ledger is
// deleted when the job ends; its TTL, renewed by every claim, is the
// backstop.

const (
	// DefaultLedgerCap bounds one job's ledger: about 100 bytes of Redis
	// memory an entry, so about 100 MiB, for 4 TiB of 4 MiB chunks.
	DefaultLedgerCap = 1 << 20
	// ledgerTTL is the backstop for a ledger left behind.
	ledgerTTL = 48 * time.Hour
	// heartbeatTTL is how long a dead shard's claims block others.
	heartbeatTTL = 15 * time.Second
	// claimBatch bounds the digests of one script call.
	claimBatch = 512
)

func ledgerKey(job string) string        { return "pbsq:job:" + job + ":chunks" }
func heartbeatPrefix(job string) string  { return "pbsq:job:" + job + ":hb:" }
func heartbeatKey(job, id string) string { return heartbeatPrefix(job) + id }

// ledgerClaim: see ChunkShare.Claim. KEYS: ledger. ARGV: owner, heartbeat
// prefix, cap, ttl ms, digests. Answers: "M" mine, "P" pending, "F" the
// ledger is full (check it alone), or the verdict.
var ledgerClaim = redis.NewScript(`
local out = {}
local n = redis.call("HLEN", KEYS[1])
local cap = tonumber(ARGV[3])
for i = 5, #ARGV do
  local d = ARGV[i]
  local v = redis.call("HGET", KEYS[1], d)
  if not v then
    if n >= cap then
      out[#out+1] = "F"
    else
      redis.call("HSET", KEYS[1], d, "c" .. ARGV[1])
      n = n + 1
      out[#out+1] = "M"
    end
  elseif string.sub(v, 1, 1) == "c" then
    local o = string.sub(v, 2)
    if o == ARGV[1] then
      out[#out+1] = "M"
    elseif redis.call("EXISTS", ARGV[2] .. o) == 0 then
      redis.call("HSET", KEYS[1], d, "c" .. ARGV[1])
      out[#out+1] = "M"
    else
      out[#out+1] = "P"
    end
  else
    out[#out+1] = v
  end
end
redis.call("PEXPIRE", KEYS[1], ARGV[4])
return out`)

// ledgerPublish stores verdicts of claimed chunks (a chunk beyond the cap
// has no entry and gets none); an empty verdict hands the claim back.
// KEYS: ledger, job. ARGV: pairs of digest and verdict. It counts the
// verdicts in the job's "reads".
var ledgerPublish = redis.NewScript(`
local reads = 0
for i = 1, #ARGV, 2 do
  if ARGV[i+1] == "" then
    redis.call("HDEL", KEYS[1], ARGV[i])
  else
    reads = reads + 1
    if redis.call("HEXISTS", KEYS[1], ARGV[i]) == 1 then
      redis.call("HSET", KEYS[1], ARGV[i], ARGV[i+1])
    end
  end
end
if reads > 0 then redis.call("HINCRBY", KEYS[2], "reads", reads) end
return reads`)

// ledger is a shard's datastore.ChunkShare.
type ledger struct {
	rdb   redis.UniversalClient
	job   string
	owner string // the shard's task id
	cap   int
}

var _ datastore.ChunkShare = (*ledger)(nil)

func (l *ledger) Claim(ctx context.Context, ds []datastore.Digest) ([]datastore.ShareClaim, error) {
	out := make([]datastore.ShareClaim, 0, len(ds))
	for len(ds) > 0 {
		batch := ds[:min(len(ds), claimBatch)]
		ds = ds[len(batch):]
		args := []any{l.owner, heartbeatPrefix(l.job), l.cap, ledgerTTL.Milliseconds()}
		for _, d := range batch {
			args = append(args, d[:])
		}
		res, err := ledgerClaim.Run(ctx, l.rdb, []string{ledgerKey(l.job)}, args...).StringSlice()
		if err != nil {
			return nil, err
		}
		if len(res) != len(batch) {
			return nil, fmt.Errorf("ledger: %d answers for %d chunks", len(res), len(batch))
		}
		for i, v := range res {
			switch {
			case v == "M" || v == "F":
				out = append(out, datastore.ShareClaim{Mine: true})
			case v == "P":
				out = append(out, datastore.ShareClaim{})
			default:
				vd, err := decodeVerdict(v)
				if err != nil {
					return nil, err
				}
				vd.Digest = batch[i]
				out = append(out, datastore.ShareClaim{Done: true, Verdict: vd})
			}
		}
	}
	return out, nil
}

func (l *ledger) Publish(ctx context.Context, vs []datastore.SharedVerdict) error {
	if crashAt == "shard-stall" {
		<-ctx.Done() // test hook: a shard that runs until cancelled
		return ctx.Err()
	}
	for len(vs) > 0 {
		batch := vs[:min(len(vs), claimBatch)]
		vs = vs[len(batch):]
		args := make([]any, 0, 2*len(batch))
		for _, v := range batch {
			args = append(args, v.Digest[:], encodeVerdict(v))
		}
		if err := ledgerPublish.Run(ctx, l.rdb, []string{ledgerKey(l.job), jobKey(l.job)}, args...).Err(); err != nil {
			return err
		}
	}
	if crashAt == "shard-publish" {
		// Test hook: die with verdicts published, verify_state unrecorded.
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
	return nil
}

// encodeVerdict: "v", code, size (4 bytes), time (8 bytes), reason; a
// code 0 (claim handed back) is empty.
func encodeVerdict(v datastore.SharedVerdict) string {
	if v.Code == 0 {
		return ""
	}
	b := make([]byte, 14, 14+len(v.Reason))
	b[0], b[1] = 'v', v.Code
	binary.BigEndian.PutUint32(b[2:], v.Size)
	binary.BigEndian.PutUint64(b[6:], uint64(v.At))
	return string(append(b, v.Reason...))
}

func decodeVerdict(s string) (datastore.SharedVerdict, error) {
	if len(s) < 14 || s[0] != 'v' {
		return datastore.SharedVerdict{}, fmt.Errorf("ledger: malformed entry (%d bytes)", len(s))
	}
	return datastore.SharedVerdict{
		Code:   s[1],
		Size:   binary.BigEndian.Uint32([]byte(s[2:6])),
		At:     int64(binary.BigEndian.Uint64([]byte(s[6:14]))),
		Reason: s[14:],
	}, nil
}

// heartbeat keeps a shard's claims alive until stop.
func heartbeat(ctx context.Context, rdb redis.UniversalClient, job, id string) (stop func()) {
	key := heartbeatKey(job, id)
	beat := func() {
		bctx, cancel := bookkeeping(ctx)
		defer cancel()
		_ = rdb.Set(bctx, key, 1, heartbeatTTL).Err()
	}
	beat()
	stopBeat := tick.Start(context.WithoutCancel(ctx), heartbeatTTL/3, func() bool {
		beat()
		return true
	})
	return func() {
		stopBeat()
		bctx, c2 := bookkeeping(context.Background())
		defer c2()
		_ = rdb.Del(bctx, key).Err()
	}
}
