"""The values the Client returns and takes, free of generated proto types."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Union

from cachecoord.v1 import cache_service_pb2 as pb


@dataclass(frozen=True)
class Result:
    """A found value. `source` is the proto's Source name without its prefix: HIT, LOADED, COALESCED, STALE,
    FALLBACK, NEAR_HIT (MISS and NEGATIVE answers are None). `ttl_remaining` is in seconds, None if unknown."""

    value: bytes
    source: str
    ttl_remaining: Optional[float]


@dataclass(frozen=True)
class Entry:
    """One write of set_many. `ttl` in seconds; `version` makes it conditional; `lease_token` makes it a fill."""

    key: str
    value: bytes
    ttl: Optional[float] = None
    version: Optional[int] = None
    lease_token: Optional[bytes] = None


@dataclass(frozen=True)
class SetManyResult:
    """What set_many wrote: `stale_keys` were refused by a newer version, `lease_lost_keys` by a voided lease."""

    written: int
    stale_keys: List[str] = field(default_factory=list)
    lease_lost_keys: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class EntityStats:
    """One entity's answers by source on the answering replica (StatsResponse.entities)."""

    entity: str
    hits: int
    near_hits: int
    negative_hits: int
    stale: int
    misses: int
    loads: int
    coalesced: int
    fallbacks: int
    hit_ratio: float


@dataclass(frozen=True)
class RedisNode:
    """One Redis node as the answering replica last read it (StatsResponse.redis_nodes)."""

    node: str
    role: str
    used_memory_bytes: int
    maxmemory_bytes: int
    maxmemory_policy: str
    evicted_keys: int
    replication_lag_bytes: Optional[int]
    oom_refusals: int
    busy_refusals: int


@dataclass(frozen=True)
class Stats:
    entities: List[EntityStats]
    redis_nodes: List[RedisNode]


@dataclass(frozen=True)
class LoadRequest:
    """What a loader function receives (LoaderService.Load): the key and its parts; `namespace` is the calling
    token's namespace when auth is on, else empty."""

    key: str
    entity: str
    id: str
    field: str
    namespace: str


@dataclass(frozen=True)
class Loaded:
    """A loader function's answer with options: `ttl` in seconds overrides the policy, `version` is the row's."""

    value: bytes
    ttl: Optional[float] = None
    version: Optional[int] = None


#: What a loader function may return: the value, a Loaded, or None when the key does not exist.
LoadAnswer = Union[bytes, Loaded, None]


def source_name(source: int) -> str:
    """SOURCE_HIT -> HIT."""
    return pb.Source.Name(source)[len("SOURCE_"):]
