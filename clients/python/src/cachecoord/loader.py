"""serve_loader: a cachecoord.v1.LoaderService from a plain function, so a team writes only its query."""
from __future__ import annotations

from concurrent import futures
from typing import Callable, Mapping, Optional, Sequence

import grpc

from cachecoord import _wire
from cachecoord.types import LoadAnswer, LoadRequest
from cachecoord.v1 import loader_service_pb2 as loader_pb
from cachecoord.v1 import loader_service_pb2_grpc as loader_grpc

#: The function behind Load: a LoadRequest (key, entity, id, field, namespace) -> bytes, Loaded, or None (no
#: such key; cachecoord caches the absence for the entity's negative TTL).
LoaderFn = Callable[[LoadRequest], LoadAnswer]
#: Optional function behind BatchLoad: the requests (all of one entity) -> key -> answer (missing = not found).
BatchLoaderFn = Callable[[Sequence[LoadRequest]], Mapping[str, LoadAnswer]]


def load_request(request: loader_pb.LoadRequest) -> LoadRequest:
    return LoadRequest(key=request.key, entity=request.entity, id=request.id, field=request.field,
                       namespace=request.namespace)


class _Loader(loader_grpc.LoaderServiceServicer):
    def __init__(self, fn: LoaderFn, batch_fn: Optional[BatchLoaderFn]) -> None:
        self._fn = fn
        self._batch_fn = batch_fn

    def Load(self, request, context):  # noqa: N802 (gRPC's method name)
        try:
            return _wire.load_response(self._fn(load_request(request)))
        except Exception as error:  # the source failed: cachecoord answers LOADER_FAILED (or serves stale)
            context.abort(grpc.StatusCode.UNAVAILABLE, f"loader failed: {error!r}")

    def BatchLoad(self, request, context):  # noqa: N802
        requests = [load_request(one) for one in request.requests]
        try:
            if self._batch_fn is not None:
                answers = self._batch_fn(requests)
            else:
                answers = {one.key: self._fn(one) for one in requests}
            results = [_wire.batch_load_result(key, answer) for key, answer in answers.items()]
        except Exception as error:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"loader failed: {error!r}")
        return loader_pb.BatchLoadResponse(results=results)


def serve_loader(fn: LoaderFn, address: str, *, batch_fn: Optional[BatchLoaderFn] = None,
                 credentials: Optional[grpc.ServerCredentials] = None, max_workers: int = 16) -> grpc.Server:
    """Starts serving cachecoord.v1.LoaderService on `address` (`host:port`; port 0 picks one: read it from
    `server.cachecoord_port`) and returns the started grpc.Server: `wait_for_termination()` or `stop(grace)` it.
    Point a `[[loaders]]` route with kind = "grpc" at it. BatchLoad calls `batch_fn` if given, else `fn` per key.
    `credentials` (grpc.ssl_server_credentials) serves TLS."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    loader_grpc.add_LoaderServiceServicer_to_server(_Loader(fn, batch_fn), server)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    server.start()
    server.cachecoord_port = port  # type: ignore[attr-defined]
    return server
