-- Fill (after helpers.lua): write only while ARGV[1] holds the lease, then release it. KEYS: value, lease,
-- index, lease set, epoch. ARGV: token, payload, ttl ms, member, fresh epoch, header.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
-- A lease missing from the group's lease set (evicted) could not have been voided by a pattern: refuse.
if redis.call('SISMEMBER', KEYS[4], ARGV[4]) == 0 then return 0 end
store(KEYS, ARGV[4], ARGV[6], ARGV[2], tonumber(ARGV[3]), ARGV[5])
return 1
