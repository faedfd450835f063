"""cachecoord.aio: the asyncio Client (grpc.aio), with the sync Client's methods and semantics, and an asyncio
serve_loader. Loader functions may be `async def` or plain functions (those run on the event loop: keep them
quick, or make them async)."""
from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Awaitable, Callable, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

import grpc
import grpc.aio

from cachecoord import _wire
from cachecoord.errors import CacheError, from_rpc_error
from cachecoord.loader import load_request
from cachecoord.retry import RetryPolicy, may_retry, retryable
from cachecoord.tls import TLSConfig, resolve
from cachecoord.types import Entry, LoadAnswer, LoadRequest, Result, SetManyResult, Stats
from cachecoord.v1 import cache_service_pb2 as pb
from cachecoord.v1 import cache_service_pb2_grpc as pb_grpc
from cachecoord.v1 import loader_service_pb2 as loader_pb
from cachecoord.v1 import loader_service_pb2_grpc as loader_grpc

__all__ = ["Client", "serve_loader"]

LoadFn = Callable[[str], Union[Optional[bytes], Awaitable[Optional[bytes]]]]
BatchLoadFn = Callable[[List[str]], Union[Mapping[str, Optional[bytes]], Awaitable[Mapping[str, Optional[bytes]]]]]


async def _run(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    return await result if inspect.isawaitable(result) else result


class Client:
    """The asyncio twin of cachecoord.Client (same arguments; `interceptors` are grpc.aio client interceptors; the
    same two connections). Create it inside the running event loop; `await client.close()` or use `async with`."""

    def __init__(self, target: str, token: Optional[str] = None, tls: TLSConfig = None,
                 timeout: float = _wire.DEFAULT_TIMEOUT, *, retry: RetryPolicy = RetryPolicy(),
                 options: _wire.ChannelOptions = (), interceptors: Sequence[grpc.aio.ClientInterceptor] = ()) -> None:
        credentials, tls_options = resolve(tls)
        channel_options = _wire.channel_options(target, tls_options, options)

        def open_channel(channel_options: Sequence[Tuple[str, Any]]) -> grpc.aio.Channel:
            if credentials is None:
                return grpc.aio.insecure_channel(target, options=channel_options,
                                                 interceptors=list(interceptors) or None)
            return grpc.aio.secure_channel(target, credentials, options=channel_options,
                                           interceptors=list(interceptors) or None)

        self._channel = open_channel(channel_options)
        self._stub = pb_grpc.CacheServiceStub(self._channel)
        # A lease holder's fills and releases go over a second connection: the Gets waiting for them may hold every
        # stream the server allows on the first (_wire.fill_channel_options).
        self._fill_channel = open_channel(_wire.fill_channel_options(channel_options))
        self._fill_stub = pb_grpc.CacheServiceStub(self._fill_channel)
        self._metadata = _wire.metadata(token)
        self._timeout = timeout
        self._retry = retry
        self._background: Set[asyncio.Task] = set()  # stale refreshes in flight (kept referenced until done)

    async def close(self) -> None:
        await self._channel.close()
        await self._fill_channel.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plain calls ------------------------------------------------------------------------------------------

    async def get(self, key: str, *, cache_only: bool = False, timeout: Optional[float] = None) -> Optional[Result]:
        return _wire.result(await self._call("Get", _wire.get_request(key, cache_only), timeout))

    async def get_many(self, keys: Iterable[str], *, cache_only: bool = False,
                       timeout: Optional[float] = None) -> List[Optional[Result]]:
        answer = await self._call("BatchGet", _wire.batch_get_request(keys, cache_only), timeout)
        return [_wire.result(one) for one in answer.results]

    async def set(self, key: str, value: bytes, ttl: Optional[float] = None, version: Optional[int] = None, *,
                  lease_token: Optional[bytes] = None, timeout: Optional[float] = None) -> Optional[float]:
        answer = await self._call("Set", _wire.set_request(key, value, ttl, version, lease_token), timeout)
        return _wire.seconds(answer, "ttl")

    async def set_many(self, entries: Iterable[Union[Entry, Tuple[str, bytes]]], *,
                       timeout: Optional[float] = None) -> SetManyResult:
        return _wire.set_many_result(await self._call("BatchSet", _wire.batch_set_request(entries), timeout))

    async def invalidate(self, *keys: str, timeout: Optional[float] = None) -> int:
        return (await self._call("Invalidate", pb.InvalidateRequest(keys=list(keys)), timeout)).deleted

    async def invalidate_pattern(self, pattern: str, *, timeout: Optional[float] = None) -> int:
        request = pb.InvalidatePatternRequest(pattern=pattern)
        return (await self._call("InvalidatePattern", request, timeout)).deleted

    async def stats(self, *, timeout: Optional[float] = None) -> Stats:
        return _wire.stats(await self._call("Stats", pb.StatsRequest(), timeout))

    # -- leases -----------------------------------------------------------------------------------------------

    async def get_with_lease(self, key: str, *, cache_only: bool = False,
                             timeout: Optional[float] = None) -> Tuple[Optional[Result], Optional[bytes]]:
        answer = await self._call("Get", _wire.get_request(key, cache_only, lease=True), timeout)
        return _wire.result(answer), answer.lease_token or None

    async def release_lease(self, key: str, lease_token: bytes, *, timeout: Optional[float] = None) -> bool:
        request = pb.ReleaseLeaseRequest(key=key, lease_token=lease_token)
        return (await self._call("ReleaseLease", request, timeout)).released

    async def renew_lease(self, key: str, lease_token: bytes, *, timeout: Optional[float] = None) -> Optional[float]:
        answer = await self._call("RenewLease", pb.RenewLeaseRequest(key=key, lease_token=lease_token), timeout)
        return _wire.seconds(answer, "ttl")

    # -- the cache-aside loop (as cachecoord.Client.get_or_load) ----------------------------------------------

    async def get_or_load(self, key: str, load_fn: LoadFn, ttl: Optional[float] = None, *,
                          timeout: Optional[float] = None) -> Optional[bytes]:
        result, token = await self.get_with_lease(key, timeout=timeout)
        if result is not None:
            if token:  # a stale value and the refresh is ours
                self._spawn(self._refresh(key, load_fn, token, ttl))
            return result.value
        try:
            value = await _run(load_fn, key)
        except BaseException:
            if token:
                await self._release_quietly(key, token)
            raise
        if token:
            if value is None:
                await self._release_quietly(key, token)
            else:
                await self._fill(key, value, token, ttl, timeout)
        return value

    async def get_many_or_load(self, keys: Iterable[str], load_fn: BatchLoadFn, ttl: Optional[float] = None, *,
                               timeout: Optional[float] = None) -> List[Optional[bytes]]:
        keys = list(keys)
        answers = (await self._call("BatchGet", _wire.batch_get_request(keys, lease=True), timeout)).results
        plan = _wire.BatchPlan(answers)
        if plan.stale:
            self._spawn(self._refresh_many(dict(plan.stale), load_fn, ttl))
        if not plan.missing:
            return plan.values
        try:
            loaded = dict(await _run(load_fn, list(plan.missing)) or {})
        except BaseException:
            for key, token in plan.tokens.items():
                await self._release_quietly(key, token)
            raise
        fills = plan.fills(loaded, ttl)
        for key in plan.unfilled(loaded):
            await self._release_quietly(key, plan.tokens[key])
        if fills:
            await self._fill_many(fills, timeout)
        return plan.answer(loaded)

    # -- the lease holder's calls, on the fill channel -----------------------------------------------------------

    async def _fill(self, key: str, value: bytes, token: bytes, ttl: Optional[float],
                    timeout: Optional[float]) -> None:
        try:
            await self._call("Set", _wire.set_request(key, value, ttl, None, token), timeout, self._fill_stub)
        except CacheError as error:
            if error.code != grpc.StatusCode.FAILED_PRECONDITION:  # LEASE_LOST: serve, don't cache
                raise

    async def _refresh(self, key: str, load_fn: LoadFn, token: bytes, ttl: Optional[float]) -> None:
        try:
            value = await _run(load_fn, key)
        except Exception:
            value = None
        if value is None:
            await self._release_quietly(key, token)
            return
        try:
            await self._call("Set", _wire.set_request(key, value, ttl, None, token), None, self._fill_stub)
        except CacheError:
            pass  # best effort

    async def _refresh_many(self, stale: Mapping[str, bytes], load_fn: BatchLoadFn, ttl: Optional[float]) -> None:
        try:
            loaded = dict(await _run(load_fn, list(stale)) or {})
        except Exception:
            loaded = {}
        fills = _wire.lease_fills(stale, loaded, ttl)
        for key, token in stale.items():
            if loaded.get(key) is None:
                await self._release_quietly(key, token)
        if fills:
            try:
                await self._fill_many(fills, None)
            except CacheError:
                pass

    async def _fill_many(self, fills: List[Entry], timeout: Optional[float]) -> SetManyResult:
        answer = await self._call("BatchSet", _wire.batch_set_request(fills), timeout, self._fill_stub)
        return _wire.set_many_result(answer)

    async def _release_quietly(self, key: str, token: bytes) -> None:
        request = pb.ReleaseLeaseRequest(key=key, lease_token=token)
        try:
            await self._call("ReleaseLease", request, None, self._fill_stub)
        except CacheError:
            pass

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- one call, with retries -------------------------------------------------------------------------------

    async def _call(self, method: str, request: object, timeout: Optional[float],
                    stub: Optional[pb_grpc.CacheServiceStub] = None) -> Any:
        """One call on the main channel, or on `stub` (the fill channel's)."""
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        rpc = getattr(stub or self._stub, method)
        safe = may_retry(method, request)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await rpc(request, timeout=max(deadline - time.monotonic(), 0.0), metadata=self._metadata)
            except grpc.RpcError as error:
                failure = from_rpc_error(error)
                if not (safe and retryable(failure.code, failure.reason) and attempt < self._retry.max_attempts):
                    raise failure from None
                pause = self._retry.backoff(attempt)
                if time.monotonic() + pause >= deadline:
                    raise failure from None
                await asyncio.sleep(pause)


# -- serve_loader -----------------------------------------------------------------------------------------------

LoaderFn = Callable[[LoadRequest], Union[LoadAnswer, Awaitable[LoadAnswer]]]
BatchLoaderFn = Callable[[Sequence[LoadRequest]], Union[Mapping[str, LoadAnswer], Awaitable[Mapping[str, LoadAnswer]]]]


class _Loader(loader_grpc.LoaderServiceServicer):
    def __init__(self, fn: LoaderFn, batch_fn: Optional[BatchLoaderFn]) -> None:
        self._fn = fn
        self._batch_fn = batch_fn

    async def Load(self, request, context):  # noqa: N802 (gRPC's method name)
        try:
            return _wire.load_response(await _run(self._fn, load_request(request)))
        except Exception as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"loader failed: {error!r}")

    async def BatchLoad(self, request, context):  # noqa: N802
        requests = [load_request(one) for one in request.requests]
        try:
            if self._batch_fn is not None:
                answers = await _run(self._batch_fn, requests)
            else:
                values = await asyncio.gather(*(_run(self._fn, one) for one in requests))
                answers = {one.key: value for one, value in zip(requests, values)}
            results = [_wire.batch_load_result(key, answer) for key, answer in answers.items()]
        except Exception as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"loader failed: {error!r}")
        return loader_pb.BatchLoadResponse(results=results)


async def serve_loader(fn: LoaderFn, address: str, *, batch_fn: Optional[BatchLoaderFn] = None,
                       credentials: Optional[grpc.ServerCredentials] = None) -> grpc.aio.Server:
    """As cachecoord.serve_loader, on grpc.aio: returns the started server (`await server.wait_for_termination()`,
    `await server.stop(grace)`); the bound port is `server.cachecoord_port`."""
    server = grpc.aio.server()
    loader_grpc.add_LoaderServiceServicer_to_server(_Loader(fn, batch_fn), server)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    await server.start()
    server.cachecoord_port = port  # type: ignore[attr-defined]
    return server
