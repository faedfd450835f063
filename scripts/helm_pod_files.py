"""Lays out what a rendered chart's pod would find on disk, for `cachecoord check-config` outside Kubernetes.

Usage: helm_pod_files.py RENDER.yaml ROOT > cachecoord.toml

Writes every file the Deployment mounts from a Secret with `items` (the credentials read through `*_file`
settings) under ROOT, with stand-in contents, and ROOT/env: the container's environment variables that have a
literal value, NUL-separated, for `env`. Prints the ConfigMap's cachecoord.toml with every /etc/cachecoord/ path
moved under ROOT. Other mounts (tokens, TLS, keys) are not read by check-config.
"""
import os
import sys

import yaml


def lay_out(render_text, root):
    """The configuration file's text and the environment (a dict) of the rendered Deployment's container, with
    its Secret items written under `root`."""
    root = root.rstrip("/")
    docs = [d for d in yaml.safe_load_all(render_text) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    config_map = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == deployment["metadata"]["name"]
    )
    config = config_map["data"]["cachecoord.toml"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    for volume in pod.get("volumes", []):
        secret = volume.get("secret")
        if not secret or not secret.get("items") or volume["name"] not in mounts:
            continue
        for item in secret["items"]:
            path = f"{root}{mounts[volume['name']]}/{item['path']}"
            # A URL must still look like one: check-config checks the Redis URL's scheme.
            redis_url = "redis" in path and item["path"] == "url"
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(("redis-cluster://redis-cluster:6379" if redis_url else "x") + "\n")
    env = {var["name"]: var["value"] for var in container.get("env", []) if "value" in var}
    return config.replace('"/etc/cachecoord/', f'"{root}/etc/cachecoord/'), env


if __name__ == "__main__":
    config, env = lay_out(open(sys.argv[1]).read(), sys.argv[2])
    with open(f"{sys.argv[2].rstrip('/')}/env", "w") as f:
        f.write("".join(f"{name}={value}\0" for name, value in env.items()))
    sys.stdout.write(config)
