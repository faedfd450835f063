"""Generates the cachecoord.v1 Python stubs from proto/ (grpcio-tools) and imports them.

Usage from any script:  from cachecoord_client import connect, pb          (CacheService)
                        from cachecoord_client import loader_pb, loader_grpc  (to implement LoaderService)

In Kubernetes, connect to the headless Service with a dns:/// target, so calls spread over every ready pod:
    cache = connect("dns:///cachecoord-headless.<namespace>.svc.cluster.local:50051")
(docs/load-balancing.md).
"""
import json
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


# For dns: targets: one connection to every address the name resolves to, calls spread round robin, and a
# connection whose server is not SERVING (draining) gets no calls (grpc.health.v1 Watch).
BALANCED_SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": "cachecoord.v1.CacheService"},
}


def channel(target="127.0.0.1:50051", credentials=None, options=()):
    """A channel to target: TLS with credentials (grpc.ssl_channel_credentials(...)), else plaintext. A dns:
    target gets BALANCED_SERVICE_CONFIG."""
    options = list(options)
    if target.startswith("dns:"):
        options.append(("grpc.service_config", json.dumps(BALANCED_SERVICE_CONFIG)))
    if credentials is not None:
        return grpc.secure_channel(target, credentials, options=options)
    return grpc.insecure_channel(target, options=options)


def connect(target="127.0.0.1:50051", credentials=None, options=()):
    """A CacheService stub on channel(target, credentials, options)."""
    return pb_grpc.CacheServiceStub(channel(target, credentials, options))
