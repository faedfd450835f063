"""A first call: Set a key, Get it back.  python3 examples/python/first_call.py [127.0.0.1:50051]"""
import sys

from cachecoord_client import connect, pb

cache = connect(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051")
cache.Set(pb.SetRequest(key="user:123", value=b'{"name": "Ada"}'))
reply = cache.Get(pb.GetRequest(key="user:123"))
print(f"found={reply.found} value={reply.value.decode()} source={pb.Source.Name(reply.source)} "
      f"ttl_remaining={reply.ttl_remaining.seconds}s")
