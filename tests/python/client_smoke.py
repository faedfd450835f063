"""A Python client generated from proto/ by grpcio-tools drives every data RPC with the documented field names.

Run by tests/python_client.rs:  python3 tests/python/client_smoke.py <addr> <unique-id>
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python"))
from cachecoord_client import connect, pb  # noqa: E402

import grpc  # noqa: E402

addr, uid = sys.argv[1], sys.argv[2]
cache = connect(addr)
key = f"user:{uid}"

cache.Set(pb.SetRequest(key=key, value=b'{"name":"Ada"}'))
got = cache.Get(pb.GetRequest(key=key))
assert got.found and got.value == b'{"name":"Ada"}', got
assert got.source == pb.SOURCE_HIT, got
assert 3000 < got.ttl_remaining.seconds <= 3960, got.ttl_remaining

entries = [pb.SetRequest(key=f"user:{uid}:posts:{i}", value=str(i).encode()) for i in range(20)]
written = cache.BatchSet(pb.BatchSetRequest(entries=entries)).written
assert written == 20, written

keys = [e.key for e in entries] + [f"user:{uid}:nothing", key]
results = cache.BatchGet(pb.BatchGetRequest(keys=keys)).results
assert [r.key for r in results] == keys
assert all(r.found for r in results[:20]) and not results[20].found and results[21].found
assert results[20].source == pb.SOURCE_MISS

deleted = cache.Invalidate(pb.InvalidateRequest(keys=[key])).deleted
assert deleted == 1, deleted
assert not cache.Get(pb.GetRequest(key=key)).found

deleted = cache.InvalidatePattern(pb.InvalidatePatternRequest(pattern=f"user:{uid}:posts:*")).deleted
assert deleted == 20, deleted

try:
    cache.Get(pb.GetRequest(key="not a key"))
    raise AssertionError("a bad key was accepted")
except grpc.RpcError as error:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error

print("python client ok")
