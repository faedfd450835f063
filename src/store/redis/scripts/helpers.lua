-- Shared by the write scripts and prepended to them when they are loaded (see scripts.rs).
--
-- `extend` lengthens a bookkeeping key's TTL to cover a new member.
local function extend(key, ttl)
  local left = redis.call('PTTL', key)
  if left == -1 or left < ttl then redis.call('PEXPIRE', key, ttl) end
end

-- `epoch_for` answers the group epoch a write must carry, starting a new one (`fresh`) when the epoch or the
-- index is missing, since a missing index may have forgotten live values.
local function epoch_for(epoch_key, index_key, fresh, ttl)
  local epoch = redis.call('GET', epoch_key)
  if not epoch or redis.call('EXISTS', index_key) == 0 then
    epoch = fresh
    redis.call('SET', epoch_key, epoch, 'PX', ttl)
  else
    extend(epoch_key, ttl)
  end
  return epoch
end

-- `store` writes a record (epoch, then the store's header, then the payload), indexes its member and voids its
-- lease. `k` holds the five keys of a write: value, lease, index, lease set, epoch.
local function store(k, member, header, payload, ttl, fresh)
  local epoch = epoch_for(k[5], k[3], fresh, ttl)
  redis.call('SET', k[1], epoch .. header .. payload, 'PX', ttl)
  redis.call('SADD', k[3], member)
  extend(k[3], ttl)
  redis.call('DEL', k[2])
  redis.call('SREM', k[4], member)
end
