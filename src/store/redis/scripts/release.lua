-- Release a lease still held by ARGV[1]. KEYS: lease, lease set. ARGV: token, member.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
return 1
