#!/usr/bin/env python3
"""Lints and renders the Helm chart offline and validates what it renders.

helm lint (strict) and helm template run through the helm-python-sdk package
(Helm's Go SDK, no helm binary); the rendered manifests are validated against
the Kubernetes schemas with kubernetes-validate (strict). The ServiceMonitor
is a CRD those schemas do not know: it is checked here by hand, and the
script says so. Exits non-zero on any problem.

    python3 scripts/helm-check.py    (pip install helm-python-sdk kubernetes-validate)
"""
import os
import subprocess
import sys
import tempfile

import tomllib

import helm_python as helm
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "helm", "leadscore")


def fail(message):
    print(f"helm-check: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def load_values(name):
    with open(os.path.join(CHART, "ci", name)) as f:
        return yaml.safe_load(f)


def lint(name, values):
    report = helm.lint(CHART, values, strict=True)
    severities = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
    # Severity 1 is information ("icon is recommended"); 2 and 3 fail.
    problems = [m for m in report.get("messages", []) if m.get("severity", 3) >= 2] + report.get("errors", [])
    for m in report.get("messages", []):
        print(f"  lint {name}: [{severities.get(m.get('severity'), '?')}] {m.get('path', '')}: {m.get('error', '')}")
    if problems:
        fail(f"helm lint ({name}) reported {len(problems)} problem(s)")
    print(f"helm lint ({name}): ok")


def render(name, values):
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        manifests = chart.render(values, name="leadscore", namespace="leadscore")
    documents = []
    for path, text in sorted(manifests.items()):
        if not path.endswith(".yaml") or not text.strip():
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                documents.append((path, doc))
    kinds = sorted(d["kind"] for _, d in documents)
    print(f"helm template ({name}): {', '.join(kinds)}")
    return documents


def validate(name, documents):
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, (path, doc) in enumerate(documents):
            if doc["kind"] == "ServiceMonitor":
                check_service_monitor(doc)
                print(f"  {path}: ServiceMonitor is a CRD kubernetes-validate has no schema for; checked by hand")
                continue
            file = os.path.join(tmp, f"{i}-{doc['kind']}.yaml")
            with open(file, "w") as f:
                yaml.safe_dump(doc, f)
            files.append(file)
        result = subprocess.run(["kubernetes-validate", "--strict", "-k", "1.30.0", *files], capture_output=True, text=True)
        print("\n".join("  " + line for line in result.stdout.strip().splitlines()))
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr)
            fail(f"kubernetes-validate rejected the manifests of {name}")
    print(f"kubernetes-validate ({name}): ok")


def check_service_monitor(doc):
    spec = doc.get("spec", {})
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        fail("ServiceMonitor apiVersion")
    if not spec.get("selector", {}).get("matchLabels"):
        fail("ServiceMonitor without a selector")
    if not all(e.get("port") == "metrics" and e.get("path") == "/metrics" for e in spec.get("endpoints", [])):
        fail("ServiceMonitor endpoints must scrape the metrics port at /metrics")


def check_webhooks(values, documents, container):
    """The [[webhooks]] tables the service reads, each secret from its Secret."""
    config = next(d for _, d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config"))
    tables = tomllib.loads(config["data"]["config.toml"])["webhooks"]
    env = {e["name"]: e for e in container["env"]}
    if env.get("LEADSCORE_CONFIG", {}).get("value") != "/etc/leadscore/config/config.toml":
        fail("LEADSCORE_CONFIG must point at the mounted config.toml")
    for hook, table in zip(values["webhooks"], tables, strict=True):
        expected = {"name": hook["name"], "url": hook["url"], "events": hook["events"],
                    "secret_env": "LEADSCORE_WEBHOOK_SECRET_" + hook["name"].upper().replace("-", "_"),
                    **hook.get("settings", {})}
        if table != expected:
            fail(f"webhook {hook['name']}: rendered {table}, expected {expected}")
        ref = env[expected["secret_env"]]["valueFrom"]["secretKeyRef"]
        if ref != {"name": hook["secretName"], "key": hook.get("secretKey", "secret")}:
            fail(f"webhook {hook['name']}: secret from {ref}")
    print(f"webhooks (full-values): {len(tables)} [[webhooks]] tables, secrets from their Secrets")


def refused(name, values, expected):
    try:
        with helm.Chart.load(CHART) as chart:
            chart.render(values, name="leadscore", namespace="leadscore")
    except Exception as e:  # the SDK raises its own error type with Helm's message
        if expected not in str(e):
            fail(f"{name}: refused, but not with '{expected}': {e}")
        print(f"helm template ({name}): refused as it should be: {expected}")
        return
    fail(f"{name}: rendered, but must be refused")


def main():
    default = load_values("default-values.yaml")
    full = load_values("full-values.yaml")
    with open(os.path.join(ROOT, "rules", "default.toml")) as f:
        full["rules"] = f.read()
    for name, values in (("default-values", default), ("full-values", full)):
        lint(name, values)
        documents = render(name, values)
        validate(name, documents)
        deployment = next(d for _, d in documents if d["kind"] == "Deployment")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        if not container["securityContext"]["readOnlyRootFilesystem"]:
            fail("the container must have a read-only root filesystem")
        if name == "full-values":
            check_webhooks(values, documents, container)
    # Secure by default: no tokens (and not insecure) or no Redis is refused.
    refused("chart defaults", {}, "redis.url")
    refused("no tokens", {"redis": {"url": "redis://r:6379"}}, "auth.tokens")
    print("helm-check: all passed")


if __name__ == "__main__":
    main()
