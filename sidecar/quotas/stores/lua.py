"""Lua scripts of the Redis quota store: one round trip per admission, settlement or renewal.

KEYS[1] is the subject's bucket hash (fields r, m, d: levels; tr, tm, td: when each
was computed, so an admission that checks only some buckets never moves the others'
clocks; `t`, one time for all, is read from hashes written before), KEYS[2] its lease
ZSET (member: lease id, score: expiry). Both share a `{hash tag}`, so a cluster keeps a
subject on one slot. Time is Redis' own (TIME), never a replica's clock; ARGV[1] is an
offset in seconds added to it (0 in production; tests use it to roll windows without
sleeping). A limit of 0 is off.
"""

from __future__ import annotations

from typing import Final

# Shared prelude: read and refill the buckets to `now`.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
local lim = {r = tonumber(ARGV[2]), m = tonumber(ARGV[3]), d = tonumber(ARGV[4])}
local per = {r = 60, m = 60, d = 86400}
local order = {'r', 'm', 'd'}
local s = redis.call('HMGET', KEYS[1], 'r', 'm', 'd', 'tr', 'tm', 'td', 't')
local stored = {r = s[1], m = s[2], d = s[3]}
local at = {r = s[4] or s[7], m = s[5] or s[7], d = s[6] or s[7]}
local lvl = {}
for _, b in ipairs(order) do
  if lim[b] > 0 then
    local v = lim[b]
    if stored[b] then
      local elapsed = 0
      if at[b] then elapsed = math.max(0, now - tonumber(at[b])) end
      v = math.min(lim[b], tonumber(stored[b]) + elapsed * lim[b] / per[b])
    end
    lvl[b] = v
  end
end
local function save(lease_exp)
  local ttl = 1
  local args = {}
  for _, b in ipairs(order) do
    if lvl[b] then
      table.insert(args, b)
      table.insert(args, string.format('%.17g', lvl[b]))
      table.insert(args, 't' .. b)
      table.insert(args, string.format('%.17g', now))
      ttl = math.max(ttl, (lim[b] - lvl[b]) * per[b] / lim[b])
    end
  end
  if #args > 0 then
    redis.call('HSET', KEYS[1], unpack(args))
    -- Never shorter than it was: the buckets this call did not check still need theirs.
    local ms = math.max(math.ceil(ttl * 1000) + 1000, redis.call('PTTL', KEYS[1]))
    redis.call('PEXPIRE', KEYS[1], ms)
  end
  if lease_exp then
    -- Never shorter than it was: a lease opened under a longer lease_seconds (before a
    -- reload shortened it) lives on in this set and must not lapse with the set.
    local ms = math.max(math.ceil((lease_exp - now) * 1000) + 1000, redis.call('PTTL', KEYS[2]))
    redis.call('PEXPIRE', KEYS[2], ms)
  end
end
local function windows(out)
  for _, b in ipairs(order) do
    if lvl[b] then
      table.insert(out, math.max(0, math.floor(lvl[b])))
      table.insert(out, math.floor((now + math.max(0, (lim[b] - lvl[b]) * per[b] / lim[b])) * 1000))
    else
      table.insert(out, -1)
      table.insert(out, -1)
    end
  end
  return out
end
"""

# ARGV: offset, rpm, tpm, tpd, slots, tokens, lease id, lease seconds, check tokens ('0':
# the token buckets are reported, neither checked nor taken: `Limits.checks_tokens`).
# Returns {verdict, wait ms, now ms, r left, r reset ms, m left, m reset ms, d left, d reset ms};
# verdict 0 admitted, 1 requests, 2 tokens/minute, 3 tokens/day, 4 concurrency, 5 too large.
ADMIT: Final = (
    _PRELUDE
    + """
local slots, tokens, lease, lease_s = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
local verdict, wait = 0, 0
local code = {r = 1, m = 2, d = 3}
local check = ARGV[9] ~= '0'
for _, b in ipairs(order) do
  if lvl[b] and (check or b == 'r') then
    local cost = 1
    if b ~= 'r' then cost = tokens end
    if b ~= 'r' and cost > lim[b] then
      return windows({5, 0, math.floor(now * 1000)})
    end
    if lvl[b] < cost and (cost - lvl[b]) * per[b] / lim[b] > wait then
      verdict, wait = code[b], (cost - lvl[b]) * per[b] / lim[b]
    end
  end
end
if slots > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= slots and 1 > wait then
    verdict, wait = 4, 1
  end
end
if verdict ~= 0 then
  return windows({verdict, math.ceil(wait * 1000), math.floor(now * 1000)})
end
for _, b in ipairs(order) do
  if lvl[b] and (check or b == 'r') then
    if b == 'r' then lvl[b] = lvl[b] - 1 else lvl[b] = lvl[b] - tokens end
  end
end
local lease_exp = nil
if slots > 0 then
  lease_exp = now + lease_s
  redis.call('ZADD', KEYS[2], lease_exp, lease)
end
save(lease_exp)
return windows({0, 0, math.floor(now * 1000)})
"""
)

# ARGV: offset, rpm, tpm, tpd, lease id, refund (reserved - used; negative charges more),
# again.
# Frees the lease and adds the refund to each token bucket's level as stored, at its stamp
# (`memory.settled_level`): no refill or cap at the limits the call was admitted under,
# which a reload may have raised since; the next admission refills and caps at the limit
# in force then. A charge on a bucket full by now starts from full, now. again ('1': a
# settlement sent again after one that failed, which may have run) settles only a lease
# still held, so a settlement is never counted twice. Returns 1 if settled.
SETTLE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
local refund = tonumber(ARGV[6])
if redis.call('ZREM', KEYS[2], ARGV[5]) == 0 and ARGV[7] == '1' then
  return 0
end
if refund == 0 then return 1 end
local lim = {m = tonumber(ARGV[3]), d = tonumber(ARGV[4])}
local per = {m = 60, d = 86400}
local s = redis.call('HMGET', KEYS[1], 'm', 'd', 'tm', 'td', 't')
local stored = {m = s[1], d = s[2]}
local at = {m = s[3] or s[5], d = s[4] or s[5]}
local args = {}
local ttl = 1
for _, b in ipairs({'m', 'd'}) do
  if lim[b] > 0 and (stored[b] or refund < 0) then
    local level, stamp = lim[b], now
    if stored[b] then
      level = tonumber(stored[b])
      if at[b] then stamp = tonumber(at[b]) end
      if refund < 0 and level + math.max(0, now - stamp) * lim[b] / per[b] >= lim[b] then
        level, stamp = lim[b], now
      end
    end
    level = level + refund
    table.insert(args, b)
    table.insert(args, string.format('%.17g', level))
    table.insert(args, 't' .. b)
    table.insert(args, string.format('%.17g', stamp))
    ttl = math.max(ttl, stamp - now + (lim[b] - level) * per[b] / lim[b])
  end
end
if #args > 0 then
  redis.call('HSET', KEYS[1], unpack(args))
  local ms = math.max(math.ceil(ttl * 1000) + 1000, redis.call('PTTL', KEYS[1]))
  redis.call('PEXPIRE', KEYS[1], ms)
end
return 1
"""

# KEYS[1]: the lease ZSET. ARGV: offset, lease id, lease seconds. Returns 1 if renewed.
RENEW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
local exp = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not exp or tonumber(exp) <= now then
  redis.call('ZREM', KEYS[1], ARGV[2])
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
-- Never shorter than it was: the set holds other leases, some may be longer.
local ms = math.max(math.ceil(tonumber(ARGV[3]) * 1000) + 1000, redis.call('PTTL', KEYS[1]))
redis.call('PEXPIRE', KEYS[1], ms)
return 1
"""
