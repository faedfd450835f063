#!lua flags=allow-oom
-- An invalidation's fence write (see fence.rs): gives the WAIT that follows a write of its own to count, behind
-- every earlier write of the node in the replication stream. Allowed when the node is out of memory (it answers
-- OOM to other writes under noeviction), since the deletes it fences were applied: a full node must still be
-- able to acknowledge them. KEYS: the fence key. ARGV: its TTL in ms.
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return 1
