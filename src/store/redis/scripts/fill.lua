-- Fill (after helpers.lua): write only while ARGV[1] holds the lease, then release it. KEYS: value, lease,
-- index, lease set, epoch, version floor. ARGV: token, payload, ttl ms, member, fresh epoch, header, versioned
-- ("1"/"0"), version retention ms.
--
-- A versioned fill (the loader reported the row's version) below the key's version floor read an older row
-- than one already written: refused (answers 2), and the lease is released.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
-- A lease missing from the group's lease set (evicted) could not have been voided by a pattern: refuse.
if redis.call('SISMEMBER', KEYS[4], ARGV[4]) == 0 then return 0 end
local version = nil
if ARGV[7] == '1' then
  version = string.sub(ARGV[6], 2)
  if version_floor_above(KEYS, version) then
    redis.call('DEL', KEYS[2])
    redis.call('SREM', KEYS[4], ARGV[4])
    return 2
  end
end
store(KEYS, ARGV[4], ARGV[6], ARGV[2], tonumber(ARGV[3]), ARGV[5], version, tonumber(ARGV[8]))
return 1
