-- After a group pattern's deletes. KEYS: index, legacy index, epoch. ARGV: fresh epoch.
--
-- A group whose index is gone (evicted, or every member expired) while its epoch lives may hold values no index
-- names: a new epoch drops them all, more than asked, never less. Answers 1 when it did.
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0
    and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('SET', KEYS[3], ARGV[1], 'KEEPTTL')
  return 1
end
return 0
