-- The members a group pattern must consider, read in one atomic step. KEYS: index, legacy index, lease set.
--
-- One step matters: a fill moves its member from the lease set to the index atomically, so reading the sets one
-- after another could miss a member that moved in between (read the index before, the lease set after).
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, set in ipairs({KEYS[2], KEYS[3]}) do
  for _, member in ipairs(redis.call('SMEMBERS', set)) do
    members[#members + 1] = member
  end
end
return members
