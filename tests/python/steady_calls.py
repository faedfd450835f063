"""Keeps calls in flight on one grpcio channel until its stdin closes, then prints what they answered.

Run by tests/suite/load_balancing.rs:  python3 tests/python/steady_calls.py <target> <key-prefix> <threads>

Each thread calls Get on a fresh key `<key-prefix>:<thread>:<n>` back to back, so calls are in flight all the time.
The stub comes from the example client's connect(), so a `dns://…` target gets what docs/load-balancing.md
recommends: round_robin over every address the name resolves to, with client-side health checking (grpc.health.v1
Watch on cachecoord.v1.CacheService). The test's DNS server answers with TTL 0, and re-resolution is allowed every
500 ms instead of the default 30 s, so a test with a maximum connection age of seconds does not wait on the
resolver's rate limit.

Prints one JSON line: {"ok": n, "failed": {"<code>": n, ...}, "first_failure": "..."}; exits 1 if any call failed.
"""
import json
import os
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python"))
from cachecoord_client import connect, pb  # noqa: E402

import grpc  # noqa: E402

target, prefix, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
options = [("grpc.dns_min_time_between_resolutions_ms", 500)] if target.startswith("dns:") else []
stub = connect(target, options=options)

stop = threading.Event()
lock = threading.Lock()
ok = 0
failed = {}
first_failure = None


def run(thread):
    global ok, first_failure
    n = 0
    while not stop.is_set():
        n += 1
        try:
            stub.Get(pb.GetRequest(key=f"{prefix}:{thread}:{n}"), timeout=30)
            with lock:
                ok += 1
        except grpc.RpcError as error:
            with lock:
                name = error.code().name
                failed[name] = failed.get(name, 0) + 1
                first_failure = first_failure or f"{name}: {error.details()}"


workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
for worker in workers:
    worker.start()
print("calling", flush=True)
sys.stdin.read()
stop.set()
for worker in workers:
    worker.join()
print(json.dumps({"ok": ok, "failed": failed, "first_failure": first_failure}), flush=True)
sys.exit(1 if failed else 0)
