package redislock

import "github.com/redis/go-redis/v9"

// Every lock key is a sorted set of its holders, scored by expiry (Unix ms,
// Redis server clock). A member is "<S|X>|<token>|<holder json>".
// Invariant kept by acquireScript: an X member is the only member, so the
// lowest-scored member tells whether a key is free, shared or exclusive.
// Keys get PEXPIREAT of their latest member, so abandoned keys vanish.
//
// The scripts read the server's TIME, so client clock skew does not
// matter; TIME in scripts needs effects replication, the default since
// Redis 7 and switched on by replicate_commands on 5 and 6.
const scriptPrelude = `
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local id = ARGV[2]
local modes = ARGV[3]
local function member(i) return string.sub(modes, i, i) .. '|' .. id end
local function expire(key)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', key, last[2]) end
end
`

// acquireScript takes every key in KEYS in the mode at the same position of
// ARGV[3] ("S"/"X"), or none. Returns {1, expiry, now} or, refused,
// {0, index of the busy key, a blocking member}.
var acquireScript = redis.NewScript(scriptPrelude + `
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local first = redis.call('ZRANGE', key, 0, 0)
  if first[1] and (string.sub(modes, i, i) == 'X' or string.sub(first[1], 1, 1) == 'X') then
    return {0, i, first[1]}
  end
end
local exp = now + lease
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, exp, member(i))
  expire(key)
end
return {1, exp, now}
`)

// refreshScript extends all members of a lease, if all are still there
// and unexpired. Returns {1, expiry, now} or {0, index of the lost key}.
var refreshScript = redis.NewScript(scriptPrelude + `
for i, key in ipairs(KEYS) do
  local s = redis.call('ZSCORE', key, member(i))
  if not s or tonumber(s) <= now then return {0, i} end
end
local exp = now + lease
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', exp, member(i))
  expire(key)
end
return {1, exp, now}
`)

// releaseScript removes the lease's own members (matched by token) and
// nothing else. Returns how many it removed.
var releaseScript = redis.NewScript(`
local n = 0
for i, key in ipairs(KEYS) do
  n = n + redis.call('ZREM', key, string.sub(ARGV[3], i, i) .. '|' .. ARGV[2])
end
return n
`)
