"""The Python conformance runner: executes clients/conformance/scenarios.json, the stampede and the retry protocol
through the cachecoord package (never through raw stubs). stdout is machine-read (one JSON line per result, plus
`ready`/`calling` in the retry protocol); logs go to stderr. See clients/conformance/README.md."""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import grpc

from cachecoord import CacheError, Client, Entry, RetryPolicy, aio

# Generous per-call deadline: a leased Get may wait the entity's whole lease wait before it answers.
TIMEOUT = 15.0


def emit(obj: Any) -> None:
    print(json.dumps(obj) if not isinstance(obj, str) else obj, flush=True)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- scenarios --------------------------------------------------------------------------------------------------

class LoadFnFailed(Exception):
    """What the runner's load_fn raises for `load_fails`: it must reach the caller of get_or_load."""


class Mismatch(Exception):
    pass


def substitute(value: Any, run_id: str) -> Any:
    if isinstance(value, str):
        return value.replace("{run}", run_id)
    if isinstance(value, list):
        return [substitute(one, run_id) for one in value]
    if isinstance(value, dict):
        return {name: substitute(one, run_id) for name, one in value.items()}
    return value


class Scenario:
    """One scenario's state: its client (per its auth) and the lease tokens its steps saved."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.leases: Dict[str, bytes] = {}

    def lease(self, name: Optional[str]) -> Optional[bytes]:
        if name is None:
            return None
        if name not in self.leases:
            raise Mismatch(f"lease {name!r} was never saved by an earlier step")
        return self.leases[name]

    def perform(self, step: Dict[str, Any]) -> Dict[str, Any]:
        """Runs one step; returns what happened in the EXPECT vocabulary."""
        op, c = step["op"], self.client
        if op == "get":
            found = c.get(step["key"], cache_only=step.get("cache_only", False), timeout=TIMEOUT)
            if found is None:
                # get() answers None for every miss (the issue fixes `get(key) -> Result | None`), so the source
                # of a miss (MISS or NEGATIVE) is not observable through this library: it is not checked.
                return {"found": False, "value": None, "source": step.get("expect", {}).get("source")}
            return {"found": True, "value": found.value, "source": found.source}
        if op == "get_with_lease":
            found, token = c.get_with_lease(step["key"], timeout=TIMEOUT)
            if token and step.get("save"):
                self.leases[step["save"]] = token
            return {"found": found is not None, "value": found and found.value, "lease": token is not None}
        if op == "get_many":
            results = c.get_many(step["keys"], timeout=TIMEOUT)
            return {"results": [{"key": key, "found": one is not None, "value": one and one.value}
                                for key, one in zip(step["keys"], results)]}
        if op == "set":
            c.set(step["key"], step["value"].encode(), step.get("ttl_secs"), step.get("version"),
                  lease_token=self.lease(step.get("lease")), timeout=TIMEOUT)
            return {}
        if op == "set_many":
            entries = [Entry(e["key"], e["value"].encode(), e.get("ttl_secs"), e.get("version"),
                             self.lease(e.get("lease"))) for e in step["entries"]]
            written = c.set_many(entries, timeout=TIMEOUT)
            return {"written": written.written, "stale_keys": written.stale_keys,
                    "lease_lost_keys": written.lease_lost_keys}
        if op == "invalidate":
            return {"deleted": c.invalidate(*step["keys"], timeout=TIMEOUT)}
        if op == "invalidate_pattern":
            return {"deleted": c.invalidate_pattern(step["pattern"], timeout=TIMEOUT)}
        if op == "release_lease":
            return {"released": c.release_lease(step["key"], self.lease(step["lease"]), timeout=TIMEOUT)}
        if op == "renew_lease":
            c.renew_lease(step["key"], self.lease(step["lease"]), timeout=TIMEOUT)
            return {}
        if op == "get_or_load":
            loads = 0

            def load_fn(key: str) -> bytes:
                nonlocal loads
                loads += 1
                if step.get("load_fails"):
                    raise LoadFnFailed(f"load_fn asked to fail for {key}")
                return step.get("load_value", f"loaded:{key}").encode()

            value = c.get_or_load(step["key"], load_fn, step.get("ttl_secs"), timeout=TIMEOUT)
            return {"value": value, "loads": loads}
        if op == "stats":
            c.stats(timeout=TIMEOUT)
            return {}
        raise Mismatch(f"unknown op {op!r}")


def text(value: Optional[bytes]) -> Optional[str]:
    return None if value is None else value.decode("utf-8", errors="replace")


def check(expect: Dict[str, Any], got: Dict[str, Any]) -> None:
    """Raises Mismatch unless `got` satisfies `expect` (absent fields are not checked)."""
    if "error" in expect:
        want = expect["error"]
        error = got.get("error")
        if error is None:
            raise Mismatch(f"expected error {want}, the call succeeded: {printable(got)}")
        if error["code"] != want["code"] or ("reason" in want and error.get("reason") != want["reason"]):
            raise Mismatch(f"expected error {want}, got {error}")
        return
    if "error" in got:
        raise Mismatch(f"expected success {printable(expect)}, got error {got['error']}")
    for name, want in expect.items():
        if name == "deleted_at_least":
            if got["deleted"] < want:
                raise Mismatch(f"deleted {got['deleted']} < {want}")
        elif name in ("stale_keys", "lease_lost_keys"):
            if sorted(got[name]) != sorted(want):
                raise Mismatch(f"{name}: expected {want}, got {got[name]}")
        elif name == "results":
            if len(got["results"]) != len(want):
                raise Mismatch(f"results: expected {len(want)}, got {len(got['results'])}")
            for index, (one_want, one_got) in enumerate(zip(want, got["results"])):
                try:
                    check(one_want, one_got)
                except Mismatch as mismatch:
                    raise Mismatch(f"results[{index}] ({one_got['key']}): {mismatch}") from None
        elif name == "value":
            if text(got.get("value")) != want:
                raise Mismatch(f"value: expected {short(want)}, got {short(text(got.get('value')))}")
        elif name not in got:
            raise Mismatch(f"the runner does not produce {name!r}")
        elif got[name] != want:
            raise Mismatch(f"{name}: expected {want!r}, got {got[name]!r}")


def short(value: Optional[str]) -> str:
    return repr(value) if value is None or len(value) <= 40 else repr(value[:40] + f"...({len(value)} chars)")


def printable(got: Dict[str, Any]) -> Dict[str, Any]:
    return {name: short(text(value)) if isinstance(value, bytes) else value for name, value in got.items()}


def run_scenario(scenario: Dict[str, Any], target: str, token: Optional[str], run_id: str) -> str:
    """Empty when every step matched, else why the first one did not."""
    auth = scenario.get("auth", "token")
    client = Client(target, token={"token": token, "none": None, "wrong": "wrong-token"}[auth], timeout=TIMEOUT)
    state = Scenario(client)
    try:
        for index, step in enumerate(substitute(scenario["steps"], run_id)):
            try:
                got = state.perform(step)
            except CacheError as error:
                got = {"error": {"code": error.code.name, "reason": error.reason}}
            except LoadFnFailed:
                got = {"error": {"code": "LOAD_FN"}}
            try:
                check(step.get("expect", {}), got)
            except Mismatch as mismatch:
                return f"step {index} ({step['op']} {step.get('key') or step.get('keys') or step.get('pattern') or ''}): {mismatch}"
        return ""
    except Mismatch as mismatch:
        return str(mismatch)
    finally:
        client.close()


def scenarios(args: argparse.Namespace) -> int:
    with open(args.scenarios) as file:
        document = json.load(file)
    for scenario in document["scenarios"]:
        try:
            detail = run_scenario(scenario, args.target, args.token, args.run_id)
        except Exception as error:  # a runner bug must not hide the other scenarios
            detail = f"runner error: {error!r}"
        emit({"scenario": scenario["name"], "pass": detail == "", "detail": detail})
    return 0


# -- stampede ---------------------------------------------------------------------------------------------------

def stampede(args: argparse.Namespace) -> int:
    if args.asyncio:
        return asyncio.run(stampede_asyncio(args))
    targets = args.targets.split(",")
    expected = f"loaded:{args.key}".encode()
    loads = 0
    lock = threading.Lock()

    def load_fn(key: str) -> bytes:
        nonlocal loads
        with lock:
            loads += 1
        time.sleep(0.1)
        return f"loaded:{key}".encode()

    # --clients N: the callers share N clients (caller i uses client i % N); default one client per caller.
    count = args.clients or args.callers
    clients = [Client(targets[i % len(targets)], token=args.token, timeout=TIMEOUT) for i in range(count)]
    start = threading.Barrier(args.callers)
    values: List[Optional[bytes]] = [None] * args.callers
    errors: List[str] = []

    def caller(i: int) -> None:
        start.wait()
        try:
            values[i] = clients[i % count].get_or_load(args.key, load_fn)
        except Exception as error:
            with lock:
                errors.append(repr(error))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(args.callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    for error in errors[:5]:
        log(f"stampede error: {error}")
    emit({"loads": loads, "errors": len(errors), "values_ok": all(value == expected for value in values)})
    return 0


async def stampede_asyncio(args: argparse.Namespace) -> int:
    """The stampede through cachecoord.aio: the callers are tasks on one event loop."""
    targets = args.targets.split(",")
    expected = f"loaded:{args.key}".encode()
    loads = 0

    async def load_fn(key: str) -> bytes:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.1)
        return f"loaded:{key}".encode()

    count = args.clients or args.callers
    clients = [aio.Client(targets[i % len(targets)], token=args.token, timeout=TIMEOUT) for i in range(count)]
    outcomes = await asyncio.gather(*(clients[i % count].get_or_load(args.key, load_fn) for i in range(args.callers)),
                                    return_exceptions=True)
    for client in clients:
        await client.close()
    errors = [repr(outcome) for outcome in outcomes if isinstance(outcome, BaseException)]
    for error in errors[:5]:
        log(f"stampede error: {error}")
    emit({"loads": loads, "errors": len(errors), "values_ok": all(value == expected for value in outcomes)})
    return 0


# -- retry ------------------------------------------------------------------------------------------------------

class CountingInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Counts attempts per method: every retry of the library goes through the channel's interceptors."""

    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()
        self.lock = threading.Lock()

    def intercept_unary_unary(self, continuation: Callable, client_call_details: Any, request: Any) -> Any:
        with self.lock:
            self.counts[client_call_details.method.rsplit("/", 1)[-1]] += 1
        return continuation(client_call_details, request)

    def take(self, method: str) -> int:
        with self.lock:
            count = self.counts[method]
            self.counts.clear()
            return count


def retry(args: argparse.Namespace) -> int:
    counter = CountingInterceptor()
    # 10 attempts, sleeps of 0.25 .. 2 s (jittered to half or more): at least ~6 s of backoff in all.
    patient = RetryPolicy(max_attempts=10, initial_backoff=0.25, max_backoff=2.0, multiplier=1.6)
    live = Client(args.target, token=args.token, timeout=30.0, retry=patient, interceptors=[counter])
    live.get(args.key)
    counter.take("Get")
    emit("ready")
    if sys.stdin.readline().strip() != "go":
        log("retry: expected `go` on stdin")
        return 2
    emit("calling")
    report: Dict[str, Any] = {}
    try:
        live.get(args.key)
        report["get_ok"] = True
    except CacheError as error:
        log(f"retry: get failed: {error}")
        report["get_ok"] = False
    report["get_attempts"] = counter.take("Get")

    # Nothing listens at --dead: a plain Set must fail after one attempt, a versioned one is retried.
    dead = Client(args.dead, token=args.token, timeout=10.0,
                  retry=RetryPolicy(max_attempts=4, initial_backoff=0.1, max_backoff=0.4), interceptors=[counter])
    report["plain_set_code"] = expect_failure(lambda: dead.set(args.key + ":plain", b"v"))
    report["plain_set_attempts"] = counter.take("Set")
    report["versioned_set_code"] = expect_failure(lambda: dead.set(args.key + ":versioned", b"v", version=1))
    report["versioned_set_attempts"] = counter.take("Set")
    dead.close()

    try:
        live.get("bad key!")
        report["invalid_reason"] = None
    except CacheError as error:
        report["invalid_code"] = error.code.name
        report["invalid_reason"] = error.reason
    report["invalid_attempts"] = counter.take("Get")
    live.close()
    emit(report)
    return 0


def expect_failure(call: Callable[[], Any]) -> Optional[str]:
    try:
        call()
    except CacheError as error:
        return error.code.name
    return None


def main() -> int:
    parser = argparse.ArgumentParser(prog="run", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("scenarios")
    one.add_argument("--target", required=True)
    one.add_argument("--scenarios", required=True)
    one.add_argument("--run-id", required=True)
    one.add_argument("--token")
    one.set_defaults(func=scenarios)
    two = sub.add_parser("stampede")
    two.add_argument("--targets", required=True)
    two.add_argument("--key", required=True)
    two.add_argument("--callers", type=int, default=150)
    two.add_argument("--clients", type=int, default=0, help="clients the callers share (default: one each)")
    two.add_argument("--asyncio", action="store_true", help="through cachecoord.aio instead of the sync Client")
    two.add_argument("--token")
    two.set_defaults(func=stampede)
    three = sub.add_parser("retry")
    three.add_argument("--target", required=True)
    three.add_argument("--dead", required=True)
    three.add_argument("--key", required=True)
    three.add_argument("--token")
    three.set_defaults(func=retry)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
