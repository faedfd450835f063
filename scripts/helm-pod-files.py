"""Lays out what a rendered chart's pod would find on disk, for `cachecoord check-config` outside Kubernetes.

Usage: helm-pod-files.py RENDER.yaml ROOT > cachecoord.toml

Also writes ROOT/env: the container's environment variables with a literal value, NUL-separated, for `env`.
Writes every file the Deployment mounts from a Secret with `items` (the credentials read through `*_file`
settings) under ROOT, with stand-in contents, and prints the ConfigMap's cachecoord.toml with every
/etc/cachecoord/ path moved under ROOT. Other mounts (tokens, TLS, keys) are not read by check-config.
"""
import os
import sys

import yaml

render, root = sys.argv[1], sys.argv[2].rstrip("/")
docs = [d for d in yaml.safe_load_all(open(render)) if d]
config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["cachecoord.toml"]
pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0].get("volumeMounts", [])}
for volume in pod.get("volumes", []):
    secret = volume.get("secret")
    if not secret or not secret.get("items") or volume["name"] not in mounts:
        continue
    for item in secret["items"]:
        path = f"{root}{mounts[volume['name']]}/{item['path']}"
        # A URL must still look like one: check-config checks the Redis URL's scheme.
        stand_in = "redis-cluster://redis-cluster:6379" if "redis" in path and item["path"] == "url" else "x"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(stand_in + "\n")
with open(f"{root}/env", "w") as f:
    for var in pod["containers"][0].get("env", []):
        if "value" in var:
            f.write(f"{var['name']}={var['value']}\0")
sys.stdout.write(config.replace('"/etc/cachecoord/', f'"{root}/etc/cachecoord/'))
