-- Invalidate the keys of one group matching a pattern. KEYS: index, lease set, epoch, legacy index. ARGV: glob over members
-- (`*` and `?` only), prefix of the group's value keys, prefix of its lease keys, fresh epoch. A member's value
-- and lease live at prefix .. member; the prefixes come from the key layout (layout.rs), never from here.
--
-- Voids matching leases first, then deletes matching values. Members come from the index and, while it exists,
-- the legacy index older releases write (a fleet mid-upgrade). If both are gone (evicted, or every member
-- expired) while the epoch lives, the whole group is dropped by a new epoch: more than asked, never less.
-- Version floors are kept (see helpers.lua). Cost: the group's live members (the index drops expired ones on
-- every write), whatever the size of the keyspace.

-- A linear-time port of `keys::glob_match`; never Lua's backtracking patterns.
local function glob(p, s)
  local pi, si, star, mark = 1, 1, 0, 0
  while si <= #s do
    local c = string.sub(p, pi, pi)
    if c == '*' then
      star, mark, pi = pi, si, pi + 1
    elseif pi <= #p and (c == '?' or c == string.sub(s, si, si)) then
      pi, si = pi + 1, si + 1
    elseif star > 0 then
      mark = mark + 1
      pi, si = star + 1, mark
    else
      return false
    end
  end
  while string.sub(p, pi, pi) == '*' do pi = pi + 1 end
  return pi > #p
end

local pattern, value_prefix, lease_prefix = ARGV[1], ARGV[2], ARGV[3]
for _, member in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if glob(pattern, member) then
    redis.call('DEL', lease_prefix .. member)
    redis.call('SREM', KEYS[2], member)
  end
end
local has_index, has_legacy = redis.call('EXISTS', KEYS[1]) == 1, redis.call('EXISTS', KEYS[4]) == 1
if not has_index and not has_legacy then
  if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('SET', KEYS[3], ARGV[4], 'KEEPTTL') end
  return 0
end
local n = 0
local function delete_matching(members)
  for _, member in ipairs(members) do
    if glob(pattern, member) then
      n = n + redis.call('UNLINK', value_prefix .. member)
      redis.call('ZREM', KEYS[1], member)
      redis.call('SREM', KEYS[4], member)
    end
  end
end
if has_index then delete_matching(redis.call('ZRANGE', KEYS[1], 0, -1)) end
if has_legacy then delete_matching(redis.call('SMEMBERS', KEYS[4])) end
return n
