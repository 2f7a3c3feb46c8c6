"""Release, promote and roll back by pull request; decide from the canary's metrics.

Each command reads the environment's InferenceService from the base branch, changes only the
rollout fields (``model.deploy.manifests``), validates the result against KServe's schema, and proposes it
as one commit on a new branch with a pull-request body (``model.deploy.forges``). Every check runs
before anything is created, so bad input leaves no branch and no commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

from model.core.config import CanaryConfig, DeliveryConfig, RegistryConfig
from model.core.errors import FlywheelError
from model.deploy import manifests
from model.deploy.canary import ArmMetrics, analyse, render_markdown
from model.deploy.checks import check_inferenceservice
from model.deploy.forges import Proposal, forge_from_env
from model.deploy.manifests import ModelRef, Rollout
from model.registry import register, store, versions


@dataclass
class Target:
    forge: object
    env: str
    rel_path: str  # inside the repository
    label: Path  # how errors name the file
    doc: object
    rollout: Rollout


def open_target(repo: Path, env: str, dcfg: DeliveryConfig) -> Target:
    if env not in manifests.ENVIRONMENTS:
        raise FlywheelError(f"unknown environment '{env}' (known: {', '.join(manifests.ENVIRONMENTS)})")
    forge = forge_from_env(Path(repo), dcfg.base_branch if _on_github() else "HEAD")
    rel = f"{dcfg.manifests_dir}/{env}/{manifests.ISVC_FILE}"
    label = Path(repo) / rel
    text = forge.read(rel)
    doc = manifests.load(label, text)
    schema = check_inferenceservice(yaml.safe_load(text), label, env)
    if schema:
        raise FlywheelError("; ".join(schema))
    return Target(forge, env, rel, label, doc, manifests.read_rollout(label, doc))


def _on_github() -> bool:
    return bool(os.environ.get("GITHUB_TOKEN") and os.environ.get("GITHUB_REPOSITORY"))


def _render_new(t: Target, new: Rollout) -> str:
    text = manifests.write_rollout(t.label, t.doc, new)
    schema = check_inferenceservice(yaml.safe_load(text), t.label, t.env)
    if schema:  # a bug here, not user input: still, never propose an invalid manifest
        raise FlywheelError("the edited manifest is invalid: " + "; ".join(schema))
    return text


def _ref_line(ref: ModelRef | None) -> str:
    return f"v{ref.version} (`{ref.storage_uri}`, sha256 `{ref.sha256[:12]}…`)" if ref else "none"


def _state_table(before: Rollout, after: Rollout) -> str:
    def pct(r: Rollout) -> str:
        return "-" if r.canary is None else f"{r.canary_percent}%"

    return "\n".join(
        [
            "| | before | after |",
            "|---|---|---|",
            f"| stable | {_ref_line(before.stable)} | {_ref_line(after.stable)} |",
            f"| canary | {_ref_line(before.canary)} | {_ref_line(after.canary)} |",
            f"| canary traffic | {pct(before)} | {pct(after)} |",
        ]
    )


def _model_section(info: dict, reg_cfg: RegistryConfig) -> str:
    uri = store.tracking_uri(reg_cfg)
    run = info.get("run_id")
    link = (
        f"{uri.rstrip('/')}/#/models/{reg_cfg.model_name}/versions/{info['version']}" if uri.startswith("http") else uri
    )
    lines = [
        f"### {reg_cfg.model_name} v{info['version']}",
        "",
        f"- MLflow: {link} (run `{run}`)",
        f"- git SHA `{info.get('git_sha')}`, dataset digest `{str(info.get('dataset_digest'))[:12]}`",
        f"- artifact `{info['storage_uri']}`",
        f"- sha256 `{info['sha256']}`",
        "- gate: passed",
    ]
    metrics = {
        k: v
        for k, v in sorted((info.get("metrics") or {}).items())
        if "/" not in k and not k.startswith(("train_", "val_"))
    }
    if metrics:
        lines += ["", "| metric | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" for k, v in metrics.items()]
    return "\n".join(lines)


def _analysis_section(path: str, env: str, canary: ModelRef | None) -> tuple[str, dict | None]:
    if not path:
        return "", None
    p = Path(path)
    try:
        analysis = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise FlywheelError(f"{p}: cannot read canary analysis: {exc}") from exc
    if analysis.get("env") != env or (canary and analysis.get("canary_version") != canary.version):
        raise FlywheelError(
            f"{p}: analysis is for {analysis.get('env')} canary v{analysis.get('canary_version')}, "
            f"not {env} canary {canary.label() if canary else 'none'}"
        )
    md = p.with_suffix(".md")
    return (md.read_text() if md.is_file() else f"Canary analysis: **{analysis.get('decision')}**\n"), analysis


def pr_body(*sections: str) -> str:
    """A pull-request body: the non-empty sections, a blank line apart."""
    return "\n\n".join(filter(None, sections)) + "\n"


def _propose(t: Target, branch: str, text: str, title: str, body: str) -> dict:
    return t.forge.propose(Proposal(branch=branch, path=t.rel_path, text=text, title=title, body=body))


def release_step(
    env: str, version: int, percent: int, repo: Path, reg_cfg: RegistryConfig, dcfg: DeliveryConfig
) -> tuple[dict, str]:
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise FlywheelError(f"--canary must be a whole number from 0 to 100, got {percent!r}")
    if version < 1:
        raise FlywheelError(f"--model-version must be a registered version number, got {version}")
    t = open_target(repo, env, dcfg)
    if t.rollout.canary:  # say so before asking the registry: the clearer reason
        raise FlywheelError(
            f"{t.label}: canary {t.rollout.canary.label()} is still running "
            f"({t.rollout.canary_percent}%); promote or roll it back first"
        )
    info = versions.resolve_version(reg_cfg, version)
    model = ModelRef(version, info["storage_uri"], info["sha256"])
    new = manifests.start_canary(t.rollout, model, percent, t.label)
    text = _render_new(t, new)
    if new.canary:
        title = f"Release {reg_cfg.model_name} v{version} to {env} on a {percent}% canary"
        intro = (
            f"Puts v{version} on {percent}% of {env} traffic; stable {t.rollout.stable.label()} keeps the rest. "
            f"Merge to start the canary; `canary.yml` then proposes a promote or a rollback."
        )
    else:
        title = f"Release {reg_cfg.model_name} v{version} to {env}"
        intro = (
            f"No stable model serves {env} yet, so v{version} takes all traffic (no canary phase)."
            if t.rollout.stable is None
            else f"Rolls v{version} out to 100% of {env} at once (canary 100%)."
        )
    body = pr_body(
        f"## {title}",
        intro,
        _state_table(t.rollout, new),
        _model_section(info, reg_cfg),
        "_Opened by `flywheel release`._",
    )
    pr = _propose(t, f"flywheel/release-{env}-v{version}", text, title, body)
    return {
        "env": env,
        "action": "release",
        "model_version": version,
        "canary_percent": new.canary_percent,
        "storage_uri": model.storage_uri,
        "sha256": model.sha256,
        "pull_request": pr,
    }, body


def promote_env_step(
    env: str, version: int | None, repo: Path, reg_cfg: RegistryConfig, dcfg: DeliveryConfig, analysis: str = ""
) -> tuple[dict, str]:
    t = open_target(repo, env, dcfg)
    new = manifests.promote_canary(t.rollout, t.label)
    canary = t.rollout.canary
    if version is not None and version != canary.version:
        raise FlywheelError(f"{t.label}: the canary is v{canary.version}, not v{version}")
    analysis_md, _ = _analysis_section(analysis, env, canary)
    moves_champion = env == dcfg.champion_env
    if moves_champion:  # fail before proposing if the registry does not know the version
        versions.resolve_version(reg_cfg, canary.version)
    text = _render_new(t, new)
    title = f"Promote {reg_cfg.model_name} v{canary.version} to stable in {env}"
    body = pr_body(
        f"## {title}",
        f"The canary takes 100% of {env} traffic and becomes the stable model; "
        f"{t.rollout.stable.label()} is kept as previous stable for `flywheel rollback`.",
        _state_table(t.rollout, new),
        analysis_md,
        f"Registry: `champion` moved to v{canary.version}." if moves_champion else "",
        "_Opened by `flywheel promote`._",
    )
    pr = _propose(t, f"flywheel/promote-{env}-v{canary.version}", text, title, body)
    result = {
        "env": env,
        "action": "promote",
        "model_version": canary.version,
        "previous_stable": t.rollout.stable.version,
        "pull_request": pr,
    }
    if moves_champion:
        result["registry"] = register.promote(reg_cfg, canary.version)
    return result, body


def rollback_step(
    env: str, repo: Path, reg_cfg: RegistryConfig, dcfg: DeliveryConfig, analysis: str = ""
) -> tuple[dict, str]:
    t = open_target(repo, env, dcfg)
    new = manifests.roll_back(t.rollout, t.label)
    before = t.rollout
    ended = before.canary or before.stable
    analysis_md, _ = _analysis_section(analysis, env, before.canary) if before.canary else ("", None)
    moves_champion = before.canary is None and env == dcfg.champion_env
    if moves_champion:
        versions.resolve_version(reg_cfg, new.stable.version)
    text = _render_new(t, new)
    if before.canary:
        title = f"Roll back {env}: end canary v{before.canary.version}, keep v{before.stable.version}"
        intro = (
            f"Removes the canary; all traffic returns to stable {before.stable.label()}, served by a new revision of "
            "the same model, so Git keeps saying what serves users. For an instant stop before this merges, set "
            "`canaryTrafficPercent: 0` on the cluster (Argo CD's self-heal undoes it once this is merged)."
        )
    else:
        title = f"Roll back {env} from v{before.stable.version} to v{new.stable.version}"
        intro = f"Restores the stable model before the last promotion ({new.stable.label()})."
    body = pr_body(
        f"## {title}",
        intro,
        _state_table(before, new),
        analysis_md,
        f"Registry: `champion` moved back to v{new.stable.version}." if moves_champion else "",
        "_Opened by `flywheel rollback`._",
    )
    pr = _propose(t, f"flywheel/rollback-{env}-v{ended.version}", text, title, body)
    result = {
        "env": env,
        "action": "rollback",
        "ended_version": ended.version,
        "stable": new.stable.version,
        "pull_request": pr,
    }
    if moves_champion:
        result["registry"] = register.promote(reg_cfg, new.stable.version)
    return result, body


def read_arm_metrics(path: Path) -> dict[str, ArmMetrics]:
    """``{"stable": {...}, "canary": {...}}`` with ArmMetrics' fields."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise FlywheelError(f"{path}: cannot read metrics JSON: {exc}") from exc
    if not isinstance(raw, dict) or set(raw) != {"stable", "canary"}:
        raise FlywheelError(f"{path}: expected an object with exactly the arms 'stable' and 'canary'")
    return {
        arm: ArmMetrics.from_dict(values if isinstance(values, dict) else {}, f"{path} [{arm}]")
        for arm, values in raw.items()
    }


def canary_analysis_step(
    env: str,
    metrics: Path | None,
    prometheus_url: str,
    repo: Path,
    cfg: CanaryConfig,
    dcfg: DeliveryConfig,
    store_url: str = "",
) -> tuple[dict, str]:
    """Decide from a metrics JSON file, or from the collector's store or Prometheus since the canary started."""
    from model.deploy.canary_metrics import canary_started, prometheus_arm_metrics, seconds_since, store_arm_metrics

    path = manifests.isvc_path(repo, env, dcfg.manifests_dir)
    rollout = manifests.read_rollout(path)
    if rollout.canary is None:  # the hourly workflow runs anyway; nothing to decide is not an error
        return {
            "env": env,
            "decision": "none",
            "reasons": [f"no canary is running in {env}"],
        }, f"## Canary analysis ({env})\n\nNo canary is running.\n"
    if sum(map(bool, (metrics, prometheus_url, store_url))) != 1:
        raise FlywheelError("give exactly one of --metrics (a JSON file), --store-url or --prometheus-url")
    versions = {"stable": rollout.stable.version, "canary": rollout.canary.version}
    if store_url:
        started = datetime.fromtimestamp(canary_started(Path(repo), path), UTC)
        arms = store_arm_metrics(store_url, versions, started, datetime.now(UTC), cfg.latency_budget_ms)
        source = f"the collector's store, since {started:%Y-%m-%d %H:%M} UTC"
    elif prometheus_url:
        started = canary_started(Path(repo), path)
        arms = prometheus_arm_metrics(
            prometheus_url, f"flywheel-{env}", versions, seconds_since(started), cfg.latency_budget_ms
        )
        source = f"Prometheus {prometheus_url}, since {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}"
    else:
        arms = read_arm_metrics(metrics)
        source = str(metrics)
    for arm, version in versions.items():
        seen = arms[arm].model_version
        if seen is not None and seen != version:
            raise FlywheelError(f"{source}: {arm} metrics are for v{seen}, but {path} has {arm} v{version}")
    verdict = analyse(arms["stable"], arms["canary"], cfg)
    md = render_markdown(verdict, env, rollout.stable.label(), rollout.canary.label()) + f"\nMetrics: {source}.\n"
    return {
        "env": env,
        "stable_version": rollout.stable.version,
        "canary_version": rollout.canary.version,
        "canary_percent": rollout.canary_percent,
        "metrics_source": source,
        "arms": {a: asdict(m) for a, m in arms.items()},
        **verdict.to_dict(),
    }, md


RETRAIN_REQUESTS = "retrain/requests"  # a merged file here triggers retrain.yml


def request_retrain_step(drift_report: Path, repo: Path, dcfg: DeliveryConfig) -> tuple[dict, str]:
    """On drift, propose a retrain request (the data window and the drift verdict) as a pull request.

    ``drift_report`` is ``flywheel drift``'s JSON: ``drift`` (true/false), ``reasons`` and ``window``
    (``start``/``end`` of the logged data compared). Its ``.md`` sibling becomes the body.
    """
    path = Path(drift_report)
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FlywheelError(f"{path}: cannot read drift report: {exc}") from exc
    if not isinstance(report, dict) or not isinstance(report.get("drift"), bool):
        raise FlywheelError(f"{path}: expected a drift report with a true/false 'drift' verdict")
    if not report["drift"]:
        return {"requested": False, "drift": False}, "## Drift check\n\nNo drift found: no retrain requested.\n"
    window = report.get("window") or {}
    if not isinstance(window, dict):
        raise FlywheelError(f"{path}: 'window' must be an object with start and end")
    now = time.gmtime()
    stamp = time.strftime("%Y%m%d-%H%M%S", now)
    request = {
        "requested_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", now),
        "reason": "drift",
        "window": window,
        "drift_reasons": report.get("reasons", []),
        "drift_report_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    rel = f"{RETRAIN_REQUESTS}/{stamp}.json"
    span = f"{window.get('start', '?')} to {window.get('end', '?')}" if window else "the latest window"
    title = f"Retrain: drift in logged conversations ({span})"
    md = path.with_suffix(".md")
    drift_md = md.read_text() if md.is_file() else "\n".join(f"- {r}" for r in request["drift_reasons"])
    body = pr_body(
        f"## {title}",
        f"Merging this adds `{rel}`; `retrain.yml` then prepares data from the window, "
        "trains, evaluates, gates, registers and opens a release pull request.",
        drift_md,
        "_Opened by `flywheel request-retrain`._",
    )
    forge = forge_from_env(Path(repo), dcfg.base_branch if _on_github() else "HEAD")
    pr = forge.propose(
        Proposal(
            branch=f"flywheel/retrain-{stamp}",
            path=rel,
            text=json.dumps(request, indent=2) + "\n",
            title=title,
            body=body,
            new_file=True,
        )
    )
    return {"requested": True, "drift": True, "request_file": rel, "window": window, "pull_request": pr}, body
