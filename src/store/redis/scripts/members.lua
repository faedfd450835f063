-- The near-cache members whose lease has not lapsed, and the revoked members whose lease still runs with the
-- milliseconds it still runs; drops the lapsed from both. KEYS: members, revoked.
-- Answers { {member, ...}, {revoked member, ms left, ...} }.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local revoked = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
local left = {}
for i = 1, #revoked, 2 do
  left[#left + 1] = revoked[i]
  left[#left + 1] = tostring(math.floor(tonumber(revoked[i + 1]) - now))
end
return { redis.call('ZRANGE', KEYS[1], 0, -1), left }
