"""Validate the monitoring objects: the PrometheusRule (its CRD's published schema, then ``promtool
check rules`` on its groups), the PodMonitors (their CRD's published schema, and what they select)
and the Grafana dashboard's queries (through promtool too).

The CRD schemas are prometheus-operator's own (``schemas/``: the ``openAPIV3Schema`` of each CRD of
the oldest operator release this project supports, descriptions removed), checked by
``model.deploy.crd_schemas``, unknown fields refused.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from model.core.errors import FlywheelError
from model.deploy.crd_schemas import schema_errors


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        raise FlywheelError("promtool not found on PATH (Debian/Ubuntu: apt-get install prometheus)")
    return found


def run_promtool_rules(groups: dict, label: str) -> list[str]:
    """What ``promtool check rules`` refuses in ``groups`` (a rule file's content), named by ``label``."""
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules.yaml"
        rules.write_text(yaml.safe_dump(groups, sort_keys=False))
        done = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return [f"{label}: promtool check rules: {(done.stdout + done.stderr).strip()}"]
    return []


PROMETHEUS_OPERATOR = "0.79.0"  # the schemas' release: PodMonitor's portNumber is new in it
# kube-prometheus-stack's default rule and PodMonitor selectors match its Helm release name: `release:
# {{ $.Release.Name }}` (prometheus-community/helm-charts charts/kube-prometheus-stack/templates/prometheus/
# prometheus.yaml, ruleSelectorNilUsesHelmValues / podMonitorSelectorNilUsesHelmValues); flywheel init sets it
RELEASE_LABEL = "release"
MONITORED = ("PodMonitor", "PrometheusRule")  # the kinds that Prometheus selects by that label
# a label value (Kubernetes apimachinery validation.IsValidLabelValue): at most 63, alphanumeric at both ends
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def crd_errors(doc: dict, path: Path) -> list[str]:
    """What ``doc``'s kind's CRD schema (prometheus-operator's own) refuses in it."""
    kind = doc.get("kind")
    errors = []
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        errors.append(f"{path}: {kind} apiVersion must be monitoring.coreos.com/v1")
    errors += [f"{path}: {kind} {e}" for e in schema_errors(doc, f"{str(kind).lower()}.v1.json")]
    release = str(((doc.get("metadata") or {}).get("labels") or {}).get(RELEASE_LABEL) or "")
    if not release or len(release) > 63 or not LABEL_VALUE.match(release):
        errors.append(
            f"{path}: {kind} needs the label {RELEASE_LABEL}: <the kube-prometheus-stack Helm release's name>, "
            f"got {release!r} (its Prometheus selects by it; flywheel init --prometheus-release sets it)"
        )
    return errors


def check_podmonitor(doc: dict, path: Path) -> list[str]:
    """The PodMonitor's fields, and that it selects something by label and scrapes a port."""
    errors = crd_errors(doc, path)
    spec = doc.get("spec") or {}
    name = (doc.get("metadata") or {}).get("name")
    if not (spec.get("selector") or {}).get("matchLabels"):
        errors.append(f"{path}: PodMonitor {name}: selector.matchLabels must name the pods (empty selects all)")
    endpoints = spec.get("podMetricsEndpoints") or []
    if not endpoints:
        errors.append(f"{path}: PodMonitor {name}: no podMetricsEndpoints, it scrapes nothing")
    for i, ep in enumerate(endpoints):
        if not isinstance(ep, dict) or not (ep.get("port") or ep.get("portNumber")):
            errors.append(f"{path}: PodMonitor {name}: podMetricsEndpoints[{i}] must name a port or portNumber")
    return errors


def podmonitor_target_errors(monitor: dict, pods: list[tuple[str, dict, list[dict]]], path: Path) -> list[str]:
    """The pods (what, labels, containers) ``monitor`` selects, and that each has the port it scrapes."""
    name = monitor["metadata"].get("name")
    wanted = ((monitor.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    selected = [(what, containers) for what, labels, containers in pods if wanted and wanted.items() <= labels.items()]
    if not selected:
        return [f"{path}: PodMonitor {name} selects no pod of this environment ({wanted})"]
    errors = []
    for ep in (monitor.get("spec") or {}).get("podMetricsEndpoints") or []:
        # prometheus-operator keeps a target by port name when one is given, else by number
        if not isinstance(ep, dict):
            continue  # check_podmonitor names it
        key, port = ("name", ep["port"]) if ep.get("port") else ("containerPort", ep.get("portNumber"))
        for what, containers in selected:
            if not any(p.get(key) == port for c in containers for p in c.get("ports") or []):
                errors.append(f"{path}: PodMonitor {name} scrapes port {port!r}, which {what} does not declare")
    return errors


def check_prometheusrule(doc: dict, path: Path) -> list[str]:
    errors = crd_errors(doc, path)
    if set(doc) - {"apiVersion", "kind", "metadata", "spec"} or set(doc.get("spec") or {}) != {"groups"}:
        errors.append(f"{path}: PrometheusRule takes apiVersion, kind, metadata and spec.groups only")
    groups = (doc.get("spec") or {}).get("groups") or []
    alerts = {r.get("alert") for g in groups for r in g.get("rules") or []}
    return (
        errors + run_promtool_rules({"groups": groups}, str(path)) + ([] if alerts else [f"{path}: no alerts defined"])
    )


def dashboard_queries(doc: dict, path: Path) -> list[str]:
    try:
        dashboard = json.loads(next(iter(doc["data"].values())))
    except (KeyError, StopIteration, TypeError, ValueError) as exc:
        raise FlywheelError(f"{path}: the dashboard ConfigMap must hold one JSON document: {exc}") from exc
    return [t["expr"] for p in dashboard.get("panels", []) for t in p.get("targets", [])]


def check_dashboard(doc: dict, path: Path) -> list[str]:
    try:
        queries = dashboard_queries(doc, path)
    except FlywheelError as exc:
        return [str(exc)]
    if not queries:
        return [f"{path}: the dashboard has no queries"]
    # promtool parses PromQL only inside rule files: each query becomes a recording rule
    rules = [{"record": f"flywheel:dashboard_query_{i}", "expr": q} for i, q in enumerate(queries)]
    return run_promtool_rules({"groups": [{"name": "dashboard", "rules": rules}]}, f"{path} (dashboard queries)")
