"""TLS and mutual TLS settings for Client(tls=...)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import grpc

#: PEM given inline (bytes) or as a file path (str or os.PathLike).
Pem = Union[bytes, str, "os.PathLike[str]"]


@dataclass(frozen=True)
class TLS:
    """Server verification with `ca` (default: the system roots); a client certificate (`cert` + `key`) for mutual
    TLS; `server_name` to verify a name other than the target's host (e.g. when dialing an IP)."""

    ca: Optional[Pem] = None
    cert: Optional[Pem] = None
    key: Optional[Pem] = None
    server_name: Optional[str] = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("TLS: cert and key go together (mutual TLS)")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca), private_key=_read(self.key), certificate_chain=_read(self.cert)
        )

    def options(self) -> List[Tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


#: Client(tls=...): None = plaintext; True = TLS with the system roots; a TLS; or ready grpc.ChannelCredentials.
TLSConfig = Union[None, bool, TLS, grpc.ChannelCredentials]


def resolve(tls: TLSConfig) -> Tuple[Optional[grpc.ChannelCredentials], List[Tuple[str, str]]]:
    """(credentials or None for plaintext, extra channel options)."""
    if tls is None or tls is False:
        return None, []
    if tls is True:
        return grpc.ssl_channel_credentials(), []
    if isinstance(tls, TLS):
        return tls.credentials(), tls.options()
    if isinstance(tls, grpc.ChannelCredentials):
        return tls, []
    raise TypeError(f"tls must be None, True, cachecoord.TLS or grpc.ChannelCredentials, not {type(tls).__name__}")


def _read(pem: Optional[Pem]) -> Optional[bytes]:
    if pem is None or isinstance(pem, bytes):
        return pem
    with open(pem, "rb") as file:
        return file.read()
