"""A LoaderService in Python: what a team implements so cachecoord can fill misses from its own database.

    python3 examples/python/loader_service.py [port]

Here the "database" is a dict; a real service would query its tables in Load and BatchLoad. cachecoord calls
Load at most once per key at a time across all of its replicas, so no caching or locking is needed here.
"""
import json
import sys
from concurrent import futures

import grpc

from cachecoord_client import loader_grpc, loader_pb

USERS = {str(i): {"id": i, "name": f"user {i}", "served_by": "python"} for i in range(1, 101)}


def lookup(request):
    row = USERS.get(request.id) if request.entity == "user" and not request.field else None
    if row is None:
        return False, b""
    return True, json.dumps(row, separators=(",", ":")).encode()


class Loader(loader_grpc.LoaderServiceServicer):
    def Load(self, request, context):
        found, value = lookup(request)
        return loader_pb.LoadResponse(found=found, value=value)

    def BatchLoad(self, request, context):
        results = []
        for one in request.requests:
            found, value = lookup(one)
            results.append(loader_pb.BatchLoadResult(key=one.key, found=found, value=value))
        return loader_pb.BatchLoadResponse(results=results)


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 50052
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    loader_grpc.add_LoaderServiceServicer_to_server(Loader(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
