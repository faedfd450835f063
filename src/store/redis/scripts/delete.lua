-- Invalidate keys of one slot. KEYS: per key, value, lease, index, lease set, legacy index. ARGV: per key, its member. Each
-- lease is voided before its value is deleted, in one atomic step, so no fill can land in between. Version
-- floors are kept: a deleted key still refuses versioned writes older than what it held. Answers how many
-- values existed.
local n = 0
for i = 1, #ARGV do
  local b = (i - 1) * 5
  redis.call('DEL', KEYS[b + 2])
  redis.call('SREM', KEYS[b + 4], ARGV[i])
  n = n + redis.call('UNLINK', KEYS[b + 1])
  redis.call('ZREM', KEYS[b + 3], ARGV[i])
  redis.call('SREM', KEYS[b + 5], ARGV[i])
end
return n
