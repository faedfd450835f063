"""Generates the cachecoord.v1 Python stubs from proto/ (grpcio-tools) and imports them.

Usage from any script:  from cachecoord_client import connect, pb          (CacheService)
                        from cachecoord_client import loader_pb, loader_grpc  (to implement LoaderService)
"""
import os
import sys
import tempfile

import grpc

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROTO_DIR = os.path.join(REPO, "proto")


def _generate_stubs():
    from grpc_tools import protoc
    import importlib.resources

    out = tempfile.mkdtemp(prefix="cachecoord-py-")
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    code = protoc.main([
        "protoc", "-I", PROTO_DIR, "-I", well_known,
        f"--python_out={out}", f"--grpc_python_out={out}",
        "cachecoord/v1/cache_service.proto", "cachecoord/v1/loader_service.proto",
    ])
    if code != 0:
        raise RuntimeError("grpc_tools.protoc failed")
    sys.path.insert(0, out)


_generate_stubs()
from cachecoord.v1 import cache_service_pb2 as pb  # noqa: E402
from cachecoord.v1 import cache_service_pb2_grpc as pb_grpc  # noqa: E402
from cachecoord.v1 import loader_service_pb2 as loader_pb  # noqa: E402,F401
from cachecoord.v1 import loader_service_pb2_grpc as loader_grpc  # noqa: E402,F401


def connect(addr="127.0.0.1:50051"):
    """A CacheService stub on a plaintext channel to addr."""
    return pb_grpc.CacheServiceStub(grpc.insecure_channel(addr))
