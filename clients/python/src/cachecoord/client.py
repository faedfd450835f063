"""The synchronous Client: one long-lived channel (and a second, on a connection of its own, for a lease holder's
fills and releases), the bearer token, an overall deadline per call, retries where they are safe
(cachecoord.retry), CacheError on failure, and the leased cache-aside loop (get_or_load)."""
from __future__ import annotations

import threading
import time
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import grpc

from cachecoord import _wire
from cachecoord.errors import CacheError, from_rpc_error
from cachecoord.retry import RetryPolicy, may_retry, retryable
from cachecoord.tls import TLSConfig, resolve
from cachecoord.types import Entry, Result, SetManyResult, Stats
from cachecoord.v1 import cache_service_pb2 as pb
from cachecoord.v1 import cache_service_pb2_grpc as pb_grpc

#: get_or_load's loader: the key -> its value, or None when the source has no such key.
LoadFn = Callable[[str], Optional[bytes]]
#: get_many_or_load's loader: the missing keys -> their values (a key left out, or None, does not exist).
BatchLoadFn = Callable[[List[str]], Mapping[str, Optional[bytes]]]


class Client:
    """A cachecoord client. Create one per process and share it (it is thread-safe); `close()` it at the end.
    It opens two connections: get_or_load's lease holder fills (and releases) over the second, so they never
    queue behind the Gets waiting for them.

    `target` is `host:port` (or `dns:///name:port` to spread calls over every replica); `token` the bearer token
    (sent as `authorization: Bearer <token>`); `tls` None (plaintext), True (system roots), a cachecoord.TLS
    (custom CA, mutual TLS) or grpc.ChannelCredentials; `timeout` the default deadline in seconds of every call,
    retries and backoff included (each method takes `timeout=` to override it); `retry` the backoff policy;
    `options` extra gRPC channel arguments; `interceptors` grpc.UnaryUnaryClientInterceptor objects that see every
    attempt (to count or trace them)."""

    def __init__(self, target: str, token: Optional[str] = None, tls: TLSConfig = None,
                 timeout: float = _wire.DEFAULT_TIMEOUT, *, retry: RetryPolicy = RetryPolicy(),
                 options: _wire.ChannelOptions = (),
                 interceptors: Sequence[grpc.UnaryUnaryClientInterceptor] = ()) -> None:
        credentials, tls_options = resolve(tls)
        channel_options = _wire.channel_options(target, tls_options, options)

        def open_channel(
                channel_options: Sequence[Tuple[str, object]]) -> Tuple[grpc.Channel, pb_grpc.CacheServiceStub]:
            if credentials is None:
                channel = grpc.insecure_channel(target, options=channel_options)
            else:
                channel = grpc.secure_channel(target, credentials, options=channel_options)
            intercepted = grpc.intercept_channel(channel, *interceptors) if interceptors else channel
            return channel, pb_grpc.CacheServiceStub(intercepted)

        self._channel, self._stub = open_channel(channel_options)
        # A lease holder's fills and releases go over a second connection: the Gets waiting for them may hold every
        # stream the server allows on the first (_wire.fill_channel_options).
        self._fill_channel, self._fill_stub = open_channel(_wire.fill_channel_options(channel_options))
        self._metadata = _wire.metadata(token)
        self._timeout = timeout
        self._retry = retry

    def close(self) -> None:
        self._channel.close()
        self._fill_channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plain calls ------------------------------------------------------------------------------------------

    def get(self, key: str, *, cache_only: bool = False, timeout: Optional[float] = None) -> Optional[Result]:
        """The key's value, or None on a miss (a miss is an answer, not an error)."""
        return _wire.result(self._call("Get", _wire.get_request(key, cache_only), timeout))

    def get_many(self, keys: Iterable[str], *, cache_only: bool = False,
                 timeout: Optional[float] = None) -> List[Optional[Result]]:
        """One Result or None per key, in request order (duplicates allowed)."""
        answer = self._call("BatchGet", _wire.batch_get_request(keys, cache_only), timeout)
        return [_wire.result(one) for one in answer.results]

    def set(self, key: str, value: bytes, ttl: Optional[float] = None, version: Optional[int] = None, *,
            lease_token: Optional[bytes] = None, timeout: Optional[float] = None) -> Optional[float]:
        """Writes the key; returns the TTL applied (seconds). `ttl` overrides the entity policy's; `version` makes
        the write conditional (CacheError FAILED_PRECONDITION / STALE_VERSION if a newer one was written);
        `lease_token` makes it the fill of a lease (FAILED_PRECONDITION / LEASE_LOST if it was voided)."""
        answer = self._call("Set", _wire.set_request(key, value, ttl, version, lease_token), timeout)
        return _wire.seconds(answer, "ttl")

    def set_many(self, entries: Iterable[Union[Entry, Tuple[str, bytes]]], *,
                 timeout: Optional[float] = None) -> SetManyResult:
        """Writes every entry (cachecoord.Entry or (key, value)); one bad entry rejects the batch."""
        return _wire.set_many_result(self._call("BatchSet", _wire.batch_set_request(entries), timeout))

    def invalidate(self, *keys: str, timeout: Optional[float] = None) -> int:
        """Deletes the keys (voiding their leases); returns how many existed."""
        return self._call("Invalidate", pb.InvalidateRequest(keys=list(keys)), timeout).deleted

    def invalidate_pattern(self, pattern: str, *, timeout: Optional[float] = None) -> int:
        """Deletes every key matching the glob (`*`, `?`; literal entity); returns how many."""
        return self._call("InvalidatePattern", pb.InvalidatePatternRequest(pattern=pattern), timeout).deleted

    def stats(self, *, timeout: Optional[float] = None) -> Stats:
        """The answering replica's counters per entity (and its Redis nodes)."""
        return _wire.stats(self._call("Stats", pb.StatsRequest(), timeout))

    # -- leases -----------------------------------------------------------------------------------------------

    def get_with_lease(self, key: str, *, cache_only: bool = False,
                       timeout: Optional[float] = None) -> Tuple[Optional[Result], Optional[bytes]]:
        """Get with `lease = true` (docs/leases.md): (result, token). A token with no result makes this caller
        the one to load the key and set(..., lease_token=token) it, or release_lease it. A token with a (STALE)
        result is the duty to refresh it. Neither: another caller holds the lease past our wait; load, don't set."""
        answer = self._call("Get", _wire.get_request(key, cache_only, lease=True), timeout)
        return _wire.result(answer), answer.lease_token or None

    def release_lease(self, key: str, lease_token: bytes, *, timeout: Optional[float] = None) -> bool:
        """Gives a lease back unfilled (the load failed); False when it no longer held."""
        request = pb.ReleaseLeaseRequest(key=key, lease_token=lease_token)
        return self._call("ReleaseLease", request, timeout).released

    def renew_lease(self, key: str, lease_token: bytes, *, timeout: Optional[float] = None) -> Optional[float]:
        """Extends a lease by the entity's lease TTL; returns it (seconds). CacheError LEASE_LOST when voided."""
        answer = self._call("RenewLease", pb.RenewLeaseRequest(key=key, lease_token=lease_token), timeout)
        return _wire.seconds(answer, "ttl")

    # -- the cache-aside loop ---------------------------------------------------------------------------------

    def get_or_load(self, key: str, load_fn: LoadFn, ttl: Optional[float] = None, *,
                    timeout: Optional[float] = None) -> Optional[bytes]:
        """The key's value: from the cache, or `load_fn(key)` run by exactly one caller across every replica and
        cached under its lease (the others wait for that fill). A fill refused because the key was written or
        invalidated meanwhile (LEASE_LOST) still returns the loaded value. If load_fn raises, the lease is
        released and the exception propagates. load_fn returning None means "no such key": nothing is cached.
        `timeout` bounds each call it makes (the leased Get waits at most the entity's lease wait for another
        caller's fill, 5 s by default, and at most this deadline)."""
        result, token = self.get_with_lease(key, timeout=timeout)
        if result is not None:
            if token:  # a stale value and the refresh is ours: in the background, the caller has its answer
                threading.Thread(target=self._refresh, args=(key, load_fn, token, ttl), daemon=True).start()
            return result.value
        try:
            value = load_fn(key)  # only the lease holder gets here, or a caller whose wait ran out (no token)
        except BaseException:
            if token:  # the next waiter takes over now rather than at the lease's expiry
                self._release_quietly(key, token)
            raise
        if token:  # no token: another caller holds the lease; answer without caching
            if value is None:
                self._release_quietly(key, token)
            else:
                self._fill(key, value, token, ttl, timeout)
        return value

    def get_many_or_load(self, keys: Iterable[str], load_fn: BatchLoadFn, ttl: Optional[float] = None, *,
                         timeout: Optional[float] = None) -> List[Optional[bytes]]:
        """get_or_load for many keys in one BatchGet: `load_fn(missing_keys)` (one call, each key once) returns a
        mapping key -> value for the keys it found; the leased ones are filled in one BatchSet. Values (None for
        keys nobody has) in request order."""
        keys = list(keys)
        answers = self._call("BatchGet", _wire.batch_get_request(keys, lease=True), timeout).results
        plan = _wire.BatchPlan(answers)
        if plan.stale:
            threading.Thread(target=self._refresh_many, args=(plan.stale, load_fn, ttl), daemon=True).start()
        if not plan.missing:
            return plan.values
        try:
            loaded = dict(load_fn(list(plan.missing)) or {})
        except BaseException:
            for key, token in plan.tokens.items():
                self._release_quietly(key, token)
            raise
        fills = plan.fills(loaded, ttl)
        for key in plan.unfilled(loaded):
            self._release_quietly(key, plan.tokens[key])
        if fills:  # voided leases come back in lease_lost_keys: not an error
            self._fill_many(fills, timeout)
        return plan.answer(loaded)

    # -- the lease holder's calls, on the fill channel -----------------------------------------------------------

    def _fill(self, key: str, value: bytes, token: bytes, ttl: Optional[float], timeout: Optional[float]) -> None:
        try:
            self._call("Set", _wire.set_request(key, value, ttl, None, token), timeout, self._fill_stub)
        except CacheError as error:
            # LEASE_LOST (STALE_VERSION only for versioned Sets): the row changed while we loaded. What we
            # loaded is still the caller's answer; it is just not cached.
            if error.code != grpc.StatusCode.FAILED_PRECONDITION:
                raise

    def _refresh(self, key: str, load_fn: LoadFn, token: bytes, ttl: Optional[float]) -> None:
        """The refresh duty of a stale answer: reload and fill under the token, or give the lease back."""
        try:
            value = load_fn(key)
        except Exception:
            value = None
        if value is None:
            self._release_quietly(key, token)
            return
        try:
            self._call("Set", _wire.set_request(key, value, ttl, None, token), None, self._fill_stub)
        except CacheError:
            pass  # best effort: a newer write came first, or the cache is unreachable and the lease runs out

    def _refresh_many(self, stale: Dict[str, bytes], load_fn: BatchLoadFn, ttl: Optional[float]) -> None:
        try:
            loaded = dict(load_fn(list(stale)) or {})
        except Exception:
            loaded = {}
        fills = _wire.lease_fills(stale, loaded, ttl)
        for key, token in stale.items():
            if loaded.get(key) is None:
                self._release_quietly(key, token)
        if fills:
            try:
                self._fill_many(fills, None)
            except CacheError:
                pass  # best effort, as in _refresh

    def _fill_many(self, fills: List[Entry], timeout: Optional[float]) -> SetManyResult:
        return _wire.set_many_result(self._call("BatchSet", _wire.batch_set_request(fills), timeout, self._fill_stub))

    def _release_quietly(self, key: str, token: bytes) -> None:
        try:
            self._call("ReleaseLease", pb.ReleaseLeaseRequest(key=key, lease_token=token), None, self._fill_stub)
        except CacheError:
            pass  # the lease runs out at its TTL anyway; the caller's own error matters more

    # -- one call, with retries -------------------------------------------------------------------------------

    def _call(self, method: str, request: object, timeout: Optional[float],  # type: ignore[no-untyped-def]
              stub: Optional[pb_grpc.CacheServiceStub] = None):
        """One call on the main channel, or on `stub` (the fill channel's)."""
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        rpc = getattr(stub or self._stub, method)
        safe = may_retry(method, request)
        attempt = 0
        while True:
            attempt += 1
            try:
                return rpc(request, timeout=max(deadline - time.monotonic(), 0.0), metadata=self._metadata)
            except grpc.RpcError as error:
                failure = from_rpc_error(error)
                if not (safe and retryable(failure.code, failure.reason) and attempt < self._retry.max_attempts):
                    raise failure from None
                pause = self._retry.backoff(attempt)
                if time.monotonic() + pause >= deadline:
                    raise failure from None
                time.sleep(pause)

