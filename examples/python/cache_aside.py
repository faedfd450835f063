"""The cache-aside loop with leases: one database call per key however many callers miss at once, on every
replica, and never an old row cached after an update.

    python3 examples/python/cache_aside.py [127.0.0.1:50051] [key]

It runs 50 threads through `cached_get` on one cold key with a 200 ms "database" (one call), then races a slow
read against an update (the late fill is refused, LEASE_LOST, and the cache keeps nothing old). Exits non-zero if
either does not hold.
"""
import sys
import threading
import time

import grpc

from cachecoord_client import connect, pb


def refresh(cache, key, load, token):
    """Reloads `key` and caches it under `token`, or gives the lease back: the refresh duty of a stale answer."""
    try:
        value = load(key)
    except Exception:
        cache.ReleaseLease(pb.ReleaseLeaseRequest(key=key, lease_token=token))
        return
    try:
        cache.Set(pb.SetRequest(key=key, value=value, lease_token=token))
    except grpc.RpcError:
        pass  # LEASE_LOST: a newer write came first. A refresh is best effort.


def cached_get(cache, key, load):
    """The value of `key`: from the cache, or loaded by `load(key)` and cached under a lease."""
    reply = cache.Get(pb.GetRequest(key=key, lease=True), timeout=10)
    if reply.found:
        if reply.lease_token:  # a stale value (stale_while_revalidate), and the refresh is ours: in the background
            threading.Thread(target=refresh, args=(cache, key, load, reply.lease_token), daemon=True).start()
        return reply.value  # a hit, or another caller's fill we waited for (SOURCE_COALESCED)
    try:
        value = load(key)  # only the lease holder gets here, or a caller whose wait ran out
    except Exception:
        if reply.lease_token:  # let the next waiter take over now rather than at the lease's expiry
            cache.ReleaseLease(pb.ReleaseLeaseRequest(key=key, lease_token=reply.lease_token))
        raise
    if reply.lease_token:  # no token: another caller holds the lease; return the value without caching it
        try:
            cache.Set(pb.SetRequest(key=key, value=value, lease_token=reply.lease_token))
        except grpc.RpcError as error:
            # FAILED_PRECONDITION (reason LEASE_LOST; STALE_VERSION only for a versioned Set): the row was updated
            # and the key invalidated while we loaded. What we loaded is still our answer; it is just not cached.
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            Database.lease_lost += 1
    return value


def update(cache, db, key, value):
    """The writer's side: update the row, then invalidate the key (this voids any lease out for it)."""
    db.rows[key] = value
    cache.Invalidate(pb.InvalidateRequest(keys=[key]))


class Database:
    """Stands in for the service's own database: counts queries, and each takes `delay` seconds."""
    lease_lost = 0

    def __init__(self, delay):
        self.rows, self.calls, self.delay = {}, 0, delay
        self.lock = threading.Lock()

    def load(self, key):
        with self.lock:
            self.calls += 1
        row = self.rows.get(key)
        time.sleep(self.delay)
        return row


def main():
    cache = connect(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051")
    key = sys.argv[2] if len(sys.argv) > 2 else "product:42"
    cache.Invalidate(pb.InvalidateRequest(keys=[key]))

    # 1. The stampede: 50 callers miss at once; one database call.
    db = Database(delay=0.2)
    db.rows[key] = b'{"price": 42}'
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(cached_get(cache, key, db.load))) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"stampede: {len(answers)} callers, {db.calls} database call(s)")
    assert db.calls == 1 and answers == [b'{"price": 42}'] * 50, (db.calls, set(answers))

    # 2. The race: a slow read of the old row, an update landing during it. The late fill is refused.
    cache.Invalidate(pb.InvalidateRequest(keys=[key]))
    db.delay = 0.3
    reader = threading.Thread(target=lambda: cached_get(cache, key, db.load))
    reader.start()
    while db.calls < 2:  # the reader's query has read the old row
        time.sleep(0.005)
    update(cache, db, key, b'{"price": 43}')
    reader.join()
    left = cache.Get(pb.GetRequest(key=key, cache_only=True))
    print(f"race: fills refused LEASE_LOST: {Database.lease_lost}; cached afterwards: "
          f"{left.value.decode() if left.found else 'nothing'}")
    # Nothing old is cached. (The fill is refused, unless the update was so slow that it came after the fill: its
    # Invalidate then deleted the old value.)
    assert not left.found, (Database.lease_lost, left)
    assert cached_get(cache, key, db.load) == b'{"price": 43}'
    print("ok")


if __name__ == "__main__":
    main()
