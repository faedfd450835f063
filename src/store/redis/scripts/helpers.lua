-- Shared by the write scripts and prepended to them when they are loaded (see scripts.rs).
--
-- `extend` lengthens a bookkeeping key's TTL to cover a new member.
local function extend(key, ttl)
  local left = redis.call('PTTL', key)
  if left == -1 or left < ttl then redis.call('PEXPIRE', key, ttl) end
end

-- `now_ms` is the server's clock, the one its key expiry runs on.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A group's index is a sorted set of members scored by when their value expires. Members whose value expired
-- more than INDEX_GRACE_MS ago leave it on the next write to the group, so the index holds the live members
-- (plus at most a grace period of expired ones) however many short-lived keys came and went. The grace covers
-- the few milliseconds between this clock and the one the value's own expiry was computed with.
local INDEX_GRACE_MS = 2000

-- `epoch_for` answers the group epoch a write must carry, starting a new one (`fresh`) when the epoch or the
-- index is missing, since a missing index may have forgotten live values.
local function epoch_for(epoch_key, index_key, fresh, ttl)
  local epoch = redis.call('GET', epoch_key)
  if not epoch or redis.call('EXISTS', index_key) == 0 then
    epoch = fresh
    redis.call('SET', epoch_key, epoch, 'PX', ttl + INDEX_GRACE_MS)
  else
    extend(epoch_key, ttl + INDEX_GRACE_MS)
  end
  return epoch
end

-- `higher(a, b)`: whether big-endian version bytes `a` exceed `b` (same length). Byte by byte, because Lua's
-- string `<` follows the server's collation locale.
local function higher(a, b)
  for i = 1, #a do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return false
end

-- `version_floor_above(k, version)`: whether the key's version floor (the highest version ever written to it,
-- kept for the retention window apart from the value, so deletes and expiry do not reset it) exceeds `version`.
local function version_floor_above(k, version)
  local floor = redis.call('GET', k[6])
  return floor ~= false and #floor == #version and higher(floor, version)
end

-- `store` writes a record (epoch, then the store's header, then the payload), indexes its member, voids its
-- lease and, for a versioned write, raises the version floor. `k` holds the seven keys of a write: value, lease,
-- index, lease set, epoch, version floor, legacy index (the plain set older releases index with: kept in step
-- while it exists, so their pattern invalidations see this member too). `version` is the header's version
-- bytes, or nil when unversioned.
local function store(k, member, header, payload, ttl, fresh, version, retention)
  local epoch = epoch_for(k[5], k[3], fresh, ttl)
  redis.call('SET', k[1], epoch .. header .. payload, 'PX', ttl)
  local now = now_ms()
  redis.call('ZADD', k[3], now + ttl, member)
  redis.call('ZREMRANGEBYSCORE', k[3], '-inf', '(' .. (now - INDEX_GRACE_MS))
  extend(k[3], ttl + INDEX_GRACE_MS)
  if redis.call('EXISTS', k[7]) == 1 then
    redis.call('SADD', k[7], member)
    extend(k[7], ttl)
  end
  redis.call('DEL', k[2])
  redis.call('SREM', k[4], member)
  if version then redis.call('SET', k[6], version, 'PX', retention) end
end
