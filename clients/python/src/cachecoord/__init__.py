"""cachecoord: the Python client of cachecoord, a gRPC cache-coordination service.

    from cachecoord import Client
    cache = Client("127.0.0.1:50051", token=None)
    value = cache.get_or_load("user:123", lambda key: db.fetch(key))

Client (sync) and cachecoord.aio.Client (asyncio) have the same methods; serve_loader serves a LoaderService from
a plain function. The cachecoord.v1 stubs are generated from proto/ when the package is built.
"""
from cachecoord.client import BatchLoadFn, Client, LoadFn
from cachecoord.errors import CacheError
from cachecoord.loader import serve_loader
from cachecoord.retry import NO_RETRY, RetryPolicy
from cachecoord.tls import TLS
from cachecoord.types import Entry, EntityStats, Loaded, LoadRequest, RedisNode, Result, SetManyResult, Stats

__all__ = [
    "BatchLoadFn", "CacheError", "Client", "Entry", "EntityStats", "Loaded", "LoadFn", "LoadRequest", "NO_RETRY",
    "RedisNode", "Result", "RetryPolicy", "SetManyResult", "Stats", "TLS", "serve_loader",
]
