-- Remove a member that did not acknowledge a strict notice, so it cannot renew; keep it as revoked until its
-- lease ends (other writers must wait that out: it may serve until then); answer the milliseconds its lease still
-- runs (0 when lapsed or gone). KEYS: members, revoked. ARGV: member.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ends = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
if not ends or tonumber(ends) <= now then return 0 end
redis.call('ZADD', KEYS[2], 'GT', ends, ARGV[1])
return tonumber(ends) - now
