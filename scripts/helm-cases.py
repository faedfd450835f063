"""Runs helm/ci/schema-cases.yaml: each case's values through values.schema.json (helm template) and through
`cachecoord check-config` (the configuration rendered without the schema, laid out as the pod sees it), and checks
both verdicts against the case, and that they agree unless the case says why not (hook_only / schema_only).

Usage: helm-cases.py HELM CHART CACHECOORD CASES
"""
import os
import subprocess
import sys
import tempfile

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helm_pod_files import lay_out  # noqa: E402

helm, chart, binary, cases_file = sys.argv[1:5]
cases = yaml.safe_load(open(cases_file))
failures = []
print(f"{'case':<62} {'schema':<8} {'check-config':<13} agreement")
for case in cases:
    with tempfile.TemporaryDirectory() as scratch:
        values = os.path.join(scratch, "values.yaml")
        with open(values, "w") as f:
            yaml.safe_dump(case["values"], f)
        template = [helm, "template", "cachecoord", chart, "--namespace", "cache", "-f", values]
        checked = subprocess.run(template, capture_output=True, text=True)
        if checked.returncode == 0:
            schema = "accept"
        elif "schema" in checked.stderr:
            schema = "refuse"
        else:
            sys.exit(f"{case['name']}: helm template failed: {checked.stderr}")
        unchecked = subprocess.run(template + ["--skip-schema-validation"], capture_output=True, text=True)
        if unchecked.returncode != 0:
            sys.exit(f"{case['name']}: helm template --skip-schema-validation failed: {unchecked.stderr}")
        root = os.path.join(scratch, "pod")
        os.makedirs(root)
        config, env = lay_out(unchecked.stdout, root)
        config_file = os.path.join(scratch, "cachecoord.toml")
        with open(config_file, "w") as f:
            f.write(config)
        loaded = subprocess.run(
            [binary, "--config", config_file, "check-config"],
            capture_output=True,
            text=True,
            env={"PATH": os.environ.get("PATH", ""), **env},
        )
        binary_verdict = "accept" if loaded.returncode == 0 else "refuse"
    if schema == binary_verdict:
        agreement = "agree"
    elif schema == "accept" and case.get("hook_only"):
        agreement = "hook only"
    elif schema == "refuse" and case.get("schema_only"):
        agreement = "schema only"
    else:
        agreement = "DISAGREE"
    print(f"{case['name']:<62} {schema:<8} {binary_verdict:<13} {agreement}")
    expected = (case["schema"], case["check_config"])
    if (schema, binary_verdict) != expected or agreement == "DISAGREE":
        first_line = (loaded.stderr.strip().splitlines() or [""])[0]
        failures.append(f"{case['name']}: expected {expected}, got {(schema, binary_verdict)} {first_line}")
if failures:
    sys.exit("helm-cases: " + "; ".join(failures))
