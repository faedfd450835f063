"""What scripts/image-check runs against the image and the chart's pod (grpcio from the test venv).

  image_check.py pod-yaml RENDER.yaml TOKENS.toml OUT.yaml
      The rendered chart's Deployment (and its ConfigMap) for `podman kube play`, adapted only where podman 4.3
      lacks what Kubernetes does: each Secret volume becomes a ConfigMap of the same name and items (podman
      mounts a Secret volume as base64 text), TOKENS.toml standing in for the tokens Secret; hostNetwork with the
      containerPorts removed (podman refuses ports with hostNetwork). Prints what it changed.
  image_check.py first-call ADDR
      The README's first call (examples/python/first_call.py's Set and Get), checked.
  image_check.py probe ADDR [SERVICE]
      grpc.health.v1 Check, as the kubelet's gRPC probe sends it: exits 0 when SERVING.
  image_check.py auth ADDR TOKEN
      Set and Get with the token; the same Get without a token, and with an unknown one, is UNAUTHENTICATED.
  image_check.py drain POD_ADDR OTHER_ADDR TOKEN CONTAINER GRACE_SECS
      A call in flight on the pod survives its drain: a Get waits on the pod for a lease held through another
      replica (OTHER_ADDR, same Redis); `podman stop -t GRACE_SECS CONTAINER` (SIGTERM, then SIGKILL after the
      grace, as the kubelet does) starts the drain; health turns NOT_SERVING, new connections are refused, then
      the holder's fill through the other replica completes the waiting call; the container exits 0 (not killed).
"""
import os
import socket
import subprocess
import sys
import threading
import time

import grpc
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples", "python"))


def pod_yaml(render, tokens, out):
    docs = [d for d in yaml.safe_load_all(open(render)) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    name = deployment["metadata"]["name"]
    config_map = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name)
    pod = deployment["spec"]["template"]["spec"]
    stand_ins = []
    for volume in pod["volumes"]:
        secret = volume.pop("secret", None)
        if secret is None:
            continue
        volume["configMap"] = {"name": secret["secretName"], **{k: v for k, v in secret.items() if k != "secretName"}}
        if secret["secretName"] != name + "-tokens":
            sys.exit(f"pod-yaml: no stand-in contents for Secret {secret['secretName']}")
        stand_ins.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": secret["secretName"]},
                          "data": {"tokens.toml": open(tokens).read()}})
        print(f"pod-yaml: Secret volume {volume['name']} ({secret['secretName']}) -> ConfigMap of that name")
    pod["hostNetwork"] = True
    for container in pod["containers"]:
        container.pop("ports", None)
    print("pod-yaml: hostNetwork: true, containerPorts removed")
    with open(out, "w") as f:
        yaml.safe_dump_all([config_map, *stand_ins, deployment], f, sort_keys=False)


def cache(addr):
    from cachecoord_client import connect
    return connect(addr)


def first_call(addr):
    from cachecoord_client import pb
    stub = cache(addr)
    stub.Set(pb.SetRequest(key="user:123", value=b'{"name": "Ada"}'), timeout=10)
    reply = stub.Get(pb.GetRequest(key="user:123"), timeout=10)
    assert reply.found and reply.value == b'{"name": "Ada"}' and reply.source == pb.SOURCE_HIT, reply
    print(f"first-call: found={reply.found} value={reply.value.decode()} source={pb.Source.Name(reply.source)}")


def health(addr, service=""):
    """grpc.health.v1.Health/Check's status (1 SERVING, 2 NOT_SERVING), the messages encoded by hand."""
    with grpc.insecure_channel(addr) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        name = service.encode()
        reply = check(b"\x0a" + bytes([len(name)]) + name if name else b"", timeout=5)
    return reply[1] if reply[:1] == b"\x08" else 0


def probe(addr, service=""):
    status = health(addr, service)
    print(f"probe: {addr} {service or '(server)'}: {'SERVING' if status == 1 else status}")
    sys.exit(0 if status == 1 else 1)


def bearer(token):
    return [("authorization", f"Bearer {token}")]


def auth(addr, token):
    from cachecoord_client import pb
    stub = cache(addr)
    stub.Set(pb.SetRequest(key="user:7", value=b"seven"), metadata=bearer(token), timeout=10)
    reply = stub.Get(pb.GetRequest(key="user:7"), metadata=bearer(token), timeout=10)
    assert reply.found and reply.value == b"seven", reply
    for metadata in ([], bearer("not-a-token")):
        try:
            stub.Get(pb.GetRequest(key="user:7"), metadata=metadata, timeout=10)
            sys.exit(f"auth: a Get with {metadata or 'no token'} was answered")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
    print("auth: Set and Get with the token answered; no token and an unknown token: UNAUTHENTICATED")


def refused(addr):
    host, port = addr.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True


def wait_for(what, predicate, bound=60):
    deadline = time.monotonic() + bound
    while not predicate():
        if time.monotonic() > deadline:
            sys.exit(f"drain: {what} did not happen within {bound} s")
        time.sleep(0.1)


def drain(pod_addr, other_addr, token, container, grace):
    from cachecoord_client import pb
    key, value = "drain:1", b"filled through the other replica"
    holder, waiter = cache(other_addr), cache(pod_addr)
    lease = holder.Get(pb.GetRequest(key=key, lease=True), metadata=bearer(token), timeout=10)
    assert not lease.found and lease.lease_token, lease
    answer = {}

    def wait():
        try:
            answer["reply"] = waiter.Get(pb.GetRequest(key=key, lease=True), metadata=bearer(token), timeout=60)
        except grpc.RpcError as error:
            answer["error"] = error
    waiting = threading.Thread(target=wait)
    waiting.start()
    time.sleep(1)  # sequencing only: the waiter's call reaches the pod before the drain starts
    assert waiting.is_alive(), answer
    stop = subprocess.Popen(["podman", "stop", "-t", str(grace), container], stdout=subprocess.DEVNULL)
    wait_for("health NOT_SERVING", lambda: refused(pod_addr) or health(pod_addr, "cachecoord.v1.CacheService") == 2)
    print("drain: SIGTERM sent; health NOT_SERVING")
    wait_for("new connections refused", lambda: refused(pod_addr))
    assert waiting.is_alive(), answer
    print("drain: new connections refused; the waiting Get is still in flight")
    holder.Set(pb.SetRequest(key=key, value=value, lease_token=lease.lease_token), metadata=bearer(token), timeout=10)
    waiting.join()
    reply = answer.get("reply")
    assert reply is not None and reply.found and reply.value == value, answer
    print(f"drain: the in-flight Get completed after the pod stopped accepting: {pb.Source.Name(reply.source)}")
    assert stop.wait() == 0
    status = subprocess.run(["podman", "inspect", "-f", "{{.State.ExitCode}}", container],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert status == "0", f"the container exited {status} (137: killed at the end of the grace)"
    print(f"drain: exited 0 within terminationGracePeriodSeconds ({grace} s)")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"pod-yaml": pod_yaml, "first-call": first_call, "probe": probe, "auth": auth,
     "drain": lambda *a: drain(*a[:4], int(a[4]))}[command](*args)
