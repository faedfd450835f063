-- Renew a lease still held by ARGV[1] (after helpers.lua). KEYS: lease, lease set. ARGV: token, ttl ms.
-- The lease set outlives the lease, so a pattern invalidation still finds the key while the renewed lease holds.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
extend(KEYS[2], tonumber(ARGV[2]))
return 1
