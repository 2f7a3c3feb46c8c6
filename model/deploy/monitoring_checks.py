"""Validate the monitoring objects: the PrometheusRule (the CRD's shape, then ``promtool check rules``
on its groups) and the Grafana dashboard's queries (through promtool too)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from model.core.errors import FlywheelError


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


def check_prometheusrule(doc: dict, path: Path) -> list[str]:
    errors = []
    if set(doc) - {"apiVersion", "kind", "metadata", "spec"} or set(doc.get("spec") or {}) != {"groups"}:
        errors.append(f"{path}: PrometheusRule takes apiVersion, kind, metadata and spec.groups only")
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        errors.append(f"{path}: PrometheusRule apiVersion must be monitoring.coreos.com/v1")
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
