"""Conversions between the Client's Python values and the generated cachecoord.v1 messages, shared by the sync
and asyncio clients, plus the channel settings both use."""
from __future__ import annotations

import json
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from google.protobuf import duration_pb2

from cachecoord.types import Entry, EntityStats, Loaded, LoadAnswer, RedisNode, Result, SetManyResult, Stats, \
    source_name
from cachecoord.v1 import cache_service_pb2 as pb
from cachecoord.v1 import loader_service_pb2 as loader_pb

ChannelOptions = Sequence[Tuple[str, Union[str, int]]]

DEFAULT_TIMEOUT = 5.0

# For dns: targets (a headless Service): one connection per address, calls spread round robin, and a replica that
# reports NOT_SERVING (draining) gets no calls (docs/load-balancing.md).
_BALANCED_SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": "cachecoord.v1.CacheService"},
}

# gRPC's default reconnect backoff starts at 1 s and grows to 120 s; while it runs every call fails UNAVAILABLE at
# once. A cache is called on the request path, so a restarted replica should be used again within a second or two.
_DEFAULT_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 2000,
}


def channel_options(target: str, tls_options: ChannelOptions, options: ChannelOptions) -> List[Tuple[str, object]]:
    merged: dict = dict(_DEFAULT_OPTIONS)
    if target.startswith("dns:"):
        merged["grpc.service_config"] = json.dumps(_BALANCED_SERVICE_CONFIG)
    merged.update(dict(tls_options))
    merged.update(dict(options))  # the caller's options win
    return list(merged.items())


# grpc-core shares a subchannel (one TCP connection) between channels whose target and arguments are equal, through
# a process-wide pool: a channel of its own pool really opens a connection of its own.
_OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)


def fill_channel_options(channel_options: Sequence[Tuple[str, object]]) -> List[Tuple[str, object]]:
    """The options of a client's fill channel: its main channel's, on a connection of its own.

    Why a second connection: a server allows `limits.max_concurrent_streams` streams per HTTP/2 connection, and
    leased Gets that wait for a holder's fill keep theirs open until the fill lands (or their lease wait runs out).
    With that many waiters on one connection, the holder's Set (or ReleaseLease) would queue behind them and every
    waiter would time out and load the key itself. The fill channel carries only those calls of the holder."""
    return [option for option in channel_options if option[0] != _OWN_CONNECTION[0]] + [_OWN_CONNECTION]


def metadata(token: Optional[str]) -> Tuple[Tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def duration(seconds: Optional[float]) -> Optional[duration_pb2.Duration]:
    if seconds is None:
        return None
    if seconds < 0:
        raise ValueError(f"a TTL cannot be negative: {seconds}")
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int(round((seconds - whole) * 1e9)))


def seconds(message: object, field: str) -> Optional[float]:
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    value = getattr(message, field)
    return value.seconds + value.nanos / 1e9


def result(answer: Union[pb.GetResponse, pb.BatchGetResult]) -> Optional[Result]:
    if not answer.found:
        return None
    return Result(value=answer.value, source=source_name(answer.source),
                  ttl_remaining=seconds(answer, "ttl_remaining"))


def get_request(key: str, cache_only: bool = False, lease: bool = False) -> pb.GetRequest:
    return pb.GetRequest(key=key, cache_only=cache_only, lease=lease)


def batch_get_request(keys: Iterable[str], cache_only: bool = False, lease: bool = False) -> pb.BatchGetRequest:
    return pb.BatchGetRequest(keys=list(keys), cache_only=cache_only, lease=lease)


def set_request(key: str, value: bytes, ttl: Optional[float] = None, version: Optional[int] = None,
                lease_token: Optional[bytes] = None) -> pb.SetRequest:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"value must be bytes, not {type(value).__name__} (encode text yourself)")
    request = pb.SetRequest(key=key, value=bytes(value), ttl=duration(ttl), lease_token=lease_token or b"")
    if version is not None:
        request.version = version
    return request


def batch_set_request(entries: Iterable[Union[Entry, Tuple[str, bytes]]]) -> pb.BatchSetRequest:
    requests = []
    for entry in entries:
        if not isinstance(entry, Entry):
            entry = Entry(*entry)
        requests.append(set_request(entry.key, entry.value, entry.ttl, entry.version, entry.lease_token))
    return pb.BatchSetRequest(entries=requests)


def set_many_result(answer: pb.BatchSetResponse) -> SetManyResult:
    return SetManyResult(written=answer.written, stale_keys=list(answer.stale_keys),
                         lease_lost_keys=list(answer.lease_lost_keys))


def stats(answer: pb.StatsResponse) -> Stats:
    entities = [
        EntityStats(entity=e.entity, hits=e.hits, near_hits=e.near_hits, negative_hits=e.negative_hits,
                    stale=e.stale, misses=e.misses, loads=e.loads, coalesced=e.coalesced, fallbacks=e.fallbacks,
                    hit_ratio=e.hit_ratio)
        for e in answer.entities
    ]
    nodes = [
        RedisNode(node=n.node, role=n.role, used_memory_bytes=n.used_memory_bytes,
                  maxmemory_bytes=n.maxmemory_bytes, maxmemory_policy=n.maxmemory_policy,
                  evicted_keys=n.evicted_keys,
                  replication_lag_bytes=n.replication_lag_bytes if n.HasField("replication_lag_bytes") else None,
                  oom_refusals=n.oom_refusals, busy_refusals=n.busy_refusals)
        for n in answer.redis_nodes
    ]
    return Stats(entities=entities, redis_nodes=nodes)


def loaded(answer: LoadAnswer) -> Tuple[bool, bytes, Optional[float], Optional[int]]:
    """(found, value, ttl, version) of what a loader function returned."""
    if answer is None:
        return False, b"", None, None
    if isinstance(answer, Loaded):
        return True, bytes(answer.value), answer.ttl, answer.version
    if isinstance(answer, (bytes, bytearray, memoryview)):
        return True, bytes(answer), None, None
    raise TypeError(f"a loader returns bytes, cachecoord.Loaded or None, not {type(answer).__name__}")


def load_response(answer: LoadAnswer) -> loader_pb.LoadResponse:
    found, value, ttl, version = loaded(answer)
    response = loader_pb.LoadResponse(found=found, value=value, ttl=duration(ttl))
    if version is not None:
        response.version = version
    return response


def batch_load_result(key: str, answer: LoadAnswer) -> loader_pb.BatchLoadResult:
    found, value, ttl, version = loaded(answer)
    result_ = loader_pb.BatchLoadResult(key=key, found=found, value=value, ttl=duration(ttl))
    if version is not None:
        result_.version = version
    return result_


class BatchPlan:
    """What a leased BatchGet asks of the caller: the keys to load, the leases to fill or release, and the stale
    keys to refresh. Shared by the sync and asyncio clients."""

    def __init__(self, answers: Sequence[pb.BatchGetResult]) -> None:
        self.keys = [answer.key for answer in answers]
        self.values: List[Optional[bytes]] = [answer.value if answer.found else None for answer in answers]
        self.missing: Dict[str, None] = {}  # insertion-ordered set: each missing key loaded once
        self.tokens: Dict[str, bytes] = {}  # missing key -> its lease
        self.stale: Dict[str, bytes] = {}  # stale key -> the lease to refresh it
        for answer in answers:
            if answer.found:
                if answer.lease_token:
                    self.stale.setdefault(answer.key, answer.lease_token)
            else:
                self.missing[answer.key] = None
                if answer.lease_token:
                    self.tokens.setdefault(answer.key, answer.lease_token)

    def fills(self, loaded: Mapping[str, Optional[bytes]], ttl: Optional[float]) -> List[Entry]:
        return lease_fills(self.tokens, loaded, ttl)

    def unfilled(self, loaded: Mapping[str, Optional[bytes]]) -> List[str]:
        """Leased keys load_fn did not find: their leases go back."""
        return [key for key in self.tokens if loaded.get(key) is None]

    def answer(self, loaded: Mapping[str, Optional[bytes]]) -> List[Optional[bytes]]:
        return [value if value is not None else loaded.get(key) for key, value in zip(self.keys, self.values)]


def lease_fills(tokens: Mapping[str, bytes], loaded: Mapping[str, Optional[bytes]],
                ttl: Optional[float]) -> List[Entry]:
    """The BatchSet entries that fill the leases in `tokens` with what load_fn found."""
    fills = []
    for key, token in tokens.items():
        value = loaded.get(key)
        if value is not None:
            fills.append(Entry(key, value, ttl, lease_token=token))
    return fills
