"""CacheError: every failed call, with its gRPC code and the ErrorInfo reason the server attached."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import grpc
from google.rpc import error_details_pb2, status_pb2

_STATUS_DETAILS = "grpc-status-details-bin"


class CacheError(Exception):
    """A call failed. `code` is the grpc.StatusCode; `reason` the ErrorInfo reason (INVALID_KEY, LEASE_LOST,
    STALE_VERSION, ...) or None when the server attached none (a transport failure, a deadline); `message` the
    status message."""

    def __init__(self, code: grpc.StatusCode, reason: Optional[str], message: str) -> None:
        super().__init__(f"{code.name}{f' ({reason})' if reason else ''}: {message}")
        self.code = code
        self.reason = reason
        self.message = message


def reason_of(trailers: Optional[Sequence[Tuple[str, object]]]) -> Optional[str]:
    """The reason of the first google.rpc.ErrorInfo in the status details trailer, if any."""
    for name, value in trailers or ():
        if name != _STATUS_DETAILS or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return info.reason or None
    return None


def from_rpc_error(error: grpc.RpcError) -> CacheError:
    """Converts what grpc raised (sync grpc.RpcError or grpc.aio.AioRpcError, both grpc.Call) into a CacheError."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    return CacheError(code or grpc.StatusCode.UNKNOWN, reason_of(trailers), details or "")
