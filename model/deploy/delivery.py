"""Release, promote and roll back by pull request; decide from the canary's metrics.

Each command reads the environment's InferenceService from the base branch, changes only the
rollout fields (``model.deploy.manifests``), validates the result against KServe's schema, and proposes it
as one commit on a new branch with a pull-request body (``model.deploy.forges``). Every check runs
before anything is created, so bad input leaves no branch and no commit.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

from model.collect.arms import UNKNOWN
from model.core.config import CanaryConfig, DeliveryConfig, RegistryConfig
from model.core.errors import FlywheelError
from model.deploy import images, manifests, storage
from model.deploy.bodies import Text, render
from model.deploy.canary import ArmMetrics, analyse, render_markdown
from model.deploy.canary_metrics import (
    TOKEN_ENV,
    canary_started,
    prometheus_arm_metrics,
    prometheus_session,
    redacted,
    seconds_since,
    store_arm_metrics,
)
from model.deploy.carry import carried_image, pinned_files, running_image
from model.deploy.forges import Forge, Proposal, PullRequest, forge_from_env
from model.deploy.kubernetes_checks import check_inferenceservice
from model.deploy.manifests import ModelRef, Rollout
from model.registry import store, versions

RETRAIN_REQUESTS = "retrain/requests"  # a merged file here triggers retrain.yml
SOURCES = "give exactly one of --metrics (a JSON file), --store-url or --prometheus-url"


@dataclass
class Target:
    """An environment's InferenceService as the base branch holds it, and the forge to propose a change through."""

    forge: Forge
    env: str
    rel_path: str  # inside the repository
    label: Path  # how errors name the file
    doc: manifests.IsvcFile
    rollout: Rollout


def open_target(repo: Path, env: str, dcfg: DeliveryConfig) -> Target:
    manifests.require_environment(env)
    forge = forge_from_env(Path(repo), dcfg.base_branch)
    rel = f"{dcfg.manifests_dir}/{env}/{manifests.ISVC_FILE}"
    label = Path(repo) / rel
    text = forge.read(rel)
    doc = manifests.load(label, text)
    schema = check_inferenceservice(next(yaml.safe_load_all(text)), label, env)
    if schema:
        raise FlywheelError("; ".join(schema))
    return Target(forge, env, rel, label, doc, manifests.read_rollout(label, doc))


def _render_new(t: Target, new: Rollout) -> str:
    text = manifests.write_rollout(t.label, t.doc, new)
    schema = check_inferenceservice(next(yaml.safe_load_all(text)), t.label, t.env)
    if schema:  # a bug here, not user input: still, never propose an invalid manifest
        raise FlywheelError("the edited manifest is invalid: " + "; ".join(schema))
    return text


def _mlflow_link(info: dict, reg_cfg: RegistryConfig) -> str:
    """Where a reviewer finds the version in MLflow: its page on a tracking server, else the store's URI."""
    uri = store.tracking_uri(reg_cfg)
    if not uri.startswith("http"):
        return uri
    return f"{uri.rstrip('/')}/#/models/{reg_cfg.model_name}/versions/{info['version']}"


def _shown_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The run's top-level test metrics, by name (per-step series and training-time figures left out)."""
    return {k: v for k, v in sorted(metrics.items()) if "/" not in k and not k.startswith(("train_", "val_"))}


def _read_json(path: Path, what: str):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise FlywheelError(f"{path}: cannot read {what}: {exc}") from exc


def _markdown_beside(path: Path, otherwise: str) -> str:
    """A report's ``.md`` sibling (each step writes one beside its JSON), else ``otherwise``."""
    md = Path(path).with_suffix(".md")
    return md.read_text() if md.is_file() else otherwise


def _analysis_section(path: str, env: str, canary: ModelRef | None) -> str:
    """The canary analysis at ``path`` to quote in the pull request ("" without one); it must be for this canary."""
    if not path:
        return ""
    analysis = _read_json(Path(path), "canary analysis")
    if analysis.get("env") != env or (canary and analysis.get("canary_version") != canary.version):
        raise FlywheelError(
            f"{path}: analysis is for {analysis.get('env')} canary v{analysis.get('canary_version')}, "
            f"not {env} canary {canary.label() if canary else 'none'}"
        )
    return _markdown_beside(Path(path), f"Canary analysis: **{analysis.get('decision')}**\n")


def _propose_rollout(t: Target, new: Rollout, command: str, version: int, text: Text, image: str = "") -> PullRequest:
    """Propose ``new`` as one commit on ``flywheel/<command>-<env>-v<version>``, titled and described by ``text``.

    With ``image`` (``REPO@sha256:...``), the same commit pins the predictor and the collector to it.
    """
    manifest = _render_new(t, new)
    files = pinned_files(t.forge, t.rel_path, manifest, image) if image else {t.rel_path: manifest}
    branch = f"flywheel/{command}-{t.env}-v{version}"
    return t.forge.propose(Proposal(branch=branch, files=files, title=text.title, body=text.body))


def _champion_follows(reg_cfg: RegistryConfig, version: int, moves: bool, verb: str) -> str:
    """The body's line on ``champion``, which follows once this merges, never while it is open ("" if it does not).

    The version is resolved first: a version the registry does not know fails before anything is proposed.
    """
    if not moves:
        return ""
    versions.resolve_version(reg_cfg, version)
    return f"Registry: `champion` moves {verb} v{version} once this merges (`flywheel reconcile-registry` on main)."


def release_step(
    env: str,
    version: int,
    percent: int,
    repo: Path,
    *,
    reg_cfg: RegistryConfig,
    dcfg: DeliveryConfig,
    image: str = "",
) -> tuple[dict, str]:
    if image:
        images.pinned(image)  # a tag alone, or no reference at all, is refused before anything else
    if not manifests.is_percent(percent):
        raise FlywheelError(f"--canary must be a whole number from 0 to 100, got {percent!r}")
    if version < 1:
        raise FlywheelError(f"--model-version must be a registered version number, got {version}")
    t = open_target(repo, env, dcfg)
    manifests.refuse_running_canary(t.rollout, t.label)  # before asking the registry: the clearer reason
    info = versions.resolve_version(reg_cfg, version)
    refused = storage.problem(info["storage_uri"])  # KServe would refuse it only after the merge
    if refused:
        raise FlywheelError(f"{reg_cfg.model_name} v{version}: {refused}")
    image, image_line = (
        (image, f"Image: pinned to `{images.pinned(image).pinned}`.") if image else carried_image(t.forge, env, dcfg)
    )
    model = ModelRef(version, info["storage_uri"], info["sha256"])
    new = manifests.start_canary(t.rollout, model, percent, t.label)
    text = render(
        "release.md.j2",
        model_name=reg_cfg.model_name,
        env=env,
        version=version,
        percent=percent,
        before=t.rollout,
        after=new,
        image_line=image_line,
        info=info,
        mlflow_link=_mlflow_link(info, reg_cfg),
        metrics=_shown_metrics(info["metrics"]),
    )
    pr = _propose_rollout(t, new, "release", version, text, image=image)
    return {
        "env": env,
        "action": "release",
        "model_version": version,
        "canary_percent": new.canary_percent,
        "storage_uri": model.storage_uri,
        "sha256": model.sha256,
        "image": images.pinned(image).pinned if image else None,
        "pull_request": pr.to_dict(),
    }, text.body


def promote_env_step(
    env: str, version: int | None, repo: Path, reg_cfg: RegistryConfig, dcfg: DeliveryConfig, analysis: str = ""
) -> tuple[dict, str]:
    t = open_target(repo, env, dcfg)
    new = manifests.promote_canary(t.rollout, t.label)
    canary = t.rollout.canary
    if version is not None and version != canary.version:
        raise FlywheelError(f"{t.label}: the canary is v{canary.version}, not v{version}")
    moves_champion = env == dcfg.champion_env
    text = render(
        "promote.md.j2",
        model_name=reg_cfg.model_name,
        env=env,
        before=t.rollout,
        after=new,
        image=running_image(t.doc),
        analysis=_analysis_section(analysis, env, canary),
        registry_line=_champion_follows(reg_cfg, canary.version, moves_champion, "to"),
    )
    pr = _propose_rollout(t, new, "promote", canary.version, text)
    result = {
        "env": env,
        "action": "promote",
        "model_version": canary.version,
        "previous_stable": t.rollout.stable.version,
        "image": running_image(t.doc),
        "pull_request": pr.to_dict(),
    }
    if moves_champion:
        result["champion_on_merge"] = canary.version  # reconcile-registry moves it once this is on main
    return result, text.body


def rollback_step(
    env: str, repo: Path, reg_cfg: RegistryConfig, dcfg: DeliveryConfig, analysis: str = "", merge: bool = False
) -> tuple[dict, str]:
    t = open_target(repo, env, dcfg)
    before, new = t.rollout, manifests.roll_back(t.rollout, t.label)
    ended = before.canary or before.rolled_back or before.stable
    moves_champion = new.stable != before.stable and env == dcfg.champion_env
    text = render(
        "rollback.md.j2",
        env=env,
        before=before,
        after=new,
        analysis=_analysis_section(analysis, env, before.canary) if before.canary else "",
        registry_line=_champion_follows(reg_cfg, new.stable.version, moves_champion, "back to"),
    )
    pr = _propose_rollout(t, new, "rollback", ended.version, text)
    if merge:  # the emergency stop: the pin reaches main now, where Argo CD's self-heal keeps it
        pr = t.forge.merge(pr)
    result = {
        "env": env,
        "action": "rollback",
        "ended_version": ended.version,
        "stable": new.stable.version,
        "pull_request": pr.to_dict(),
    }
    if moves_champion:
        result["champion_on_merge"] = new.stable.version  # reconcile-registry moves it once this is on main
    return result, text.body


def read_arm_metrics(path: Path) -> dict[str, ArmMetrics]:
    """``{"stable": {...}, "canary": {...}}`` with ArmMetrics' fields."""
    raw = _read_json(path, "metrics JSON")
    if not isinstance(raw, dict) or set(raw) != {"stable", "canary"}:
        raise FlywheelError(f"{path}: expected an object with exactly the arms 'stable' and 'canary'")
    return {
        arm: ArmMetrics.from_dict(values if isinstance(values, dict) else {}, f"{path} [{arm}]")
        for arm, values in raw.items()
    }


def _arm_metrics(
    manifest: Path,
    arm_versions: dict[str, int],
    repo: Path,
    cfg: CanaryConfig,
    *,
    metrics: Path | None,
    prometheus_url: str,
    store_url: str,
) -> tuple[dict[str, ArmMetrics], str]:
    """Each arm's counts from the source given (the store, Prometheus, else the file), and how the report names it."""
    if store_url:
        started = datetime.fromtimestamp(canary_started(repo, manifest), UTC)
        arms = store_arm_metrics(store_url, arm_versions, started, datetime.now(UTC), cfg.latency_budget_ms)
        return arms, f"the collector's store, since {started:%Y-%m-%d %H:%M} UTC"
    if prometheus_url:
        started = canary_started(repo, manifest)
        # the token stays in the session's header: the report says only that one was sent
        session = prometheus_session()
        window, namespace = seconds_since(started), manifests.namespace_of(manifest)
        arms = prometheus_arm_metrics(prometheus_url, namespace, arm_versions, window, cfg.latency_budget_ms, session)
        auth = f" (bearer token from ${TOKEN_ENV})" if "Authorization" in session.headers else ""
        since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
        return arms, f"Prometheus {redacted(prometheus_url)}{auth}, since {since}"
    return read_arm_metrics(metrics), str(metrics)


def canary_analysis_step(
    env: str,
    repo: Path,
    *,
    cfg: CanaryConfig,
    dcfg: DeliveryConfig,
    metrics: Path | None = None,
    prometheus_url: str = "",
    store_url: str = "",
) -> tuple[dict, str]:
    """Decide from a metrics JSON file, or from the collector's store or Prometheus since the canary started
    (exactly one of ``metrics``, ``prometheus_url``, ``store_url``)."""
    sources = sum(map(bool, (metrics, prometheus_url, store_url)))
    if sources > 1:  # refused even when no canary runs
        raise FlywheelError(SOURCES)
    path = manifests.isvc_path(repo, env, dcfg.manifests_dir)
    rollout = manifests.read_rollout(path)
    if rollout.canary is None:  # the hourly workflow runs anyway; nothing to decide is not an error
        return {
            "env": env,
            "decision": "none",
            "reasons": [f"no canary is running in {env}"],
        }, f"## Canary analysis ({env})\n\nNo canary is running.\n"
    if not sources:
        raise FlywheelError(SOURCES)
    arm_versions = {"stable": rollout.stable.version, "canary": rollout.canary.version}
    arms, source = _arm_metrics(
        path, arm_versions, Path(repo), cfg, metrics=metrics, prometheus_url=prometheus_url, store_url=store_url
    )
    for arm, version in arm_versions.items():
        seen = arms[arm].model_version
        if seen is not None and seen != version:
            raise FlywheelError(f"{source}: {arm} metrics are for v{seen}, but {path} has {arm} v{version}")
    verdict = analyse(arms["stable"], arms["canary"], cfg, arms.get(UNKNOWN))
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


def request_retrain_step(drift_report: Path, repo: Path, dcfg: DeliveryConfig) -> tuple[dict, str]:
    """On drift, propose a retrain request (the data window and the drift verdict) as a pull request.

    ``drift_report`` is ``flywheel drift``'s JSON: ``drift`` (true/false), ``reasons`` and ``window``
    (``start``/``end`` of the logged data compared). Its ``.md`` sibling becomes the body.
    """
    path = Path(drift_report)
    report = _read_json(path, "drift report")
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
    drift = _markdown_beside(path, "\n".join(f"- {r}" for r in request["drift_reasons"]))
    text = render("retrain.md.j2", span=span, request_file=rel, drift=drift)
    pr = forge_from_env(Path(repo), dcfg.base_branch).propose(
        Proposal(
            branch=f"flywheel/retrain-{stamp}",
            files={rel: json.dumps(request, indent=2) + "\n"},
            title=text.title,
            body=text.body,
            new_file=True,
        )
    )
    result = {"requested": True, "drift": True, "request_file": rel, "window": window, "pull_request": pr.to_dict()}
    return result, text.body
