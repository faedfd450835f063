-- Take a lease (after helpers.lua). KEYS: lease, lease set. ARGV: token, ttl ms, member.
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('SADD', KEYS[2], ARGV[3])
extend(KEYS[2], tonumber(ARGV[2]))
return 1
