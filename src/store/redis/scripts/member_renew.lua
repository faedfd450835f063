-- Join (ARGV[3] = '1') or renew near-cache membership. KEYS: members (sorted set: replica id -> lease end, in
-- this node's milliseconds). ARGV: member, lease ms, join. A renewal of a member that is gone (lapsed, or revoked
-- by a writer) answers 0 and changes nothing: the member must flush and join again.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[3] ~= '1' then
  local ends = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if not ends or tonumber(ends) <= now then
    redis.call('ZREM', KEYS[1], ARGV[1])
    return 0
  end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
