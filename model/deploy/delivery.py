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
from model.deploy.forges import GitHubForge, LocalForge, Proposal, forge_from_env
from model.deploy.kubernetes_checks import check_inferenceservice
from model.deploy.manifests import ModelRef, Rollout
from model.registry import store, versions

RETRAIN_REQUESTS = "retrain/requests"  # a merged file here triggers retrain.yml
SOURCES = "give exactly one of --metrics (a JSON file), --store-url or --prometheus-url"


@dataclass
class Target:
    """An environment's InferenceService as the base branch holds it, and the forge to propose a change through."""

    forge: GitHubForge | LocalForge
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


def _ref_line(ref: ModelRef | None) -> str:
    return f"v{ref.version} (`{ref.storage_uri}`, sha256 `{ref.sha256[:12]}…`)" if ref else "none"


def _state_table(before: Rollout, after: Rollout) -> str:
    def pct(r: Rollout) -> str:
        return f"{r.canary_percent}%" if r.canary else "0% (pinned on stable)" if r.canary_percent == 0 else "-"

    rows = [("stable", "stable"), ("canary", "canary"), ("rolled back (newest revision, no traffic)", "rolled_back")]
    lines = [f"| {name} | {_ref_line(getattr(before, f))} | {_ref_line(getattr(after, f))} |" for name, f in rows]
    traffic = f"| canary traffic | {pct(before)} | {pct(after)} |"
    return "\n".join(["| | before | after |", "|---|---|---|", *lines, traffic])


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


def pr_body(*sections: str) -> str:
    """A pull-request body: the non-empty sections, a blank line apart."""
    return "\n\n".join(filter(None, sections)) + "\n"


def _propose_rollout(
    t: Target, new: Rollout, command: str, version: int, title: str, intro: str, *details: str, image: str = ""
) -> tuple[dict, str]:
    """Propose ``new`` as one commit on ``flywheel/<command>-<env>-v<version>``: the pull request and its body.

    With ``image`` (``REPO@sha256:...``), the same commit pins the predictor and the collector to it.
    """
    text = _render_new(t, new)
    files = pinned_files(t.forge, t.rel_path, text, image) if image else {t.rel_path: text}
    body = pr_body(f"## {title}", intro, _state_table(t.rollout, new), *details, f"_Opened by `flywheel {command}`._")
    proposal = Proposal(branch=f"flywheel/{command}-{t.env}-v{version}", files=files, title=title, body=body)
    return t.forge.propose(proposal), body


def _champion_follows(reg_cfg: RegistryConfig, version: int, moves: bool, verb: str) -> str:
    """The body's line on ``champion``, which follows once this merges, never while it is open ("" if it does not).

    The version is resolved first: a version the registry does not know fails before anything is proposed.
    """
    if not moves:
        return ""
    versions.resolve_version(reg_cfg, version)
    return f"Registry: `champion` moves {verb} v{version} once this merges (`flywheel reconcile-registry` on main)."


def release_step(
    env: str, version: int, percent: int, repo: Path, reg_cfg: RegistryConfig, dcfg: DeliveryConfig, image: str = ""
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
    section = _model_section(info, reg_cfg)
    pr, body = _propose_rollout(t, new, "release", version, title, intro, image_line, section, image=image)
    return {
        "env": env,
        "action": "release",
        "model_version": version,
        "canary_percent": new.canary_percent,
        "storage_uri": model.storage_uri,
        "sha256": model.sha256,
        "image": images.pinned(image).pinned if image else None,
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
    analysis_md = _analysis_section(analysis, env, canary)
    moves_champion = env == dcfg.champion_env
    registry_line = _champion_follows(reg_cfg, canary.version, moves_champion, "to")
    title = f"Promote {reg_cfg.model_name} v{canary.version} to stable in {env}"
    intro = (
        f"The canary takes 100% of {env} traffic and becomes the stable model; "
        f"{t.rollout.stable.label()} is kept as previous stable for `flywheel rollback`."
    )
    image_line = f"Image: `{running_image(t.doc)}`, unchanged: the canary's revision already runs it."
    pr, body = _propose_rollout(t, new, "promote", canary.version, title, intro, image_line, analysis_md, registry_line)
    result = {
        "env": env,
        "action": "promote",
        "model_version": canary.version,
        "previous_stable": t.rollout.stable.version,
        "image": running_image(t.doc),
        "pull_request": pr,
    }
    if moves_champion:
        result["champion_on_merge"] = canary.version  # reconcile-registry moves it once this is on main
    return result, body


def _rollback_texts(env: str, before: Rollout, after: Rollout) -> tuple[str, str]:
    """Title and intro of a rollback: the pin of a canary or of a promotion, or the restore (docs/rollout.md)."""
    old, new, back = before.stable.label(), after.stable.label(), (before.canary or before.stable).label()
    pin = (
        f"`canaryTrafficPercent: 0` sends 100% to {new}'s rolled-out revision as soon as Argo CD syncs, without a new "
        f"revision (no cold start: restoring {new}'s env instead would serve everyone from {back} until the new "
        f"revision is ready). {back}'s revision stays the newest with no traffic; `flywheel rollback` once more "
        f"restores {new}'s env under the pin before another model is released."
    )
    if before.canary:
        return f"Roll back {env}: end canary {back}, keep {old}", f"Pins the traffic: {pin}"
    if before.rolled_back:
        return f"Roll back {env}: restore {old}'s env under the pin", (
            f"Names {old} in the env again, keeping `canaryTrafficPercent: 0`: users stay on {old}'s revision while "
            f"the new one starts; ready, it replaces {before.rolled_back.label()}'s as the newest (docs/rollout.md)."
        )
    return f"Roll back {env} from {old} to {new}", (
        f"Pins the traffic on {old}'s revision: KServe moves its rolled-out revision back to the previous one and {pin}"
    )


def rollback_step(
    env: str, repo: Path, reg_cfg: RegistryConfig, dcfg: DeliveryConfig, analysis: str = "", merge: bool = False
) -> tuple[dict, str]:
    t = open_target(repo, env, dcfg)
    before, new = t.rollout, manifests.roll_back(t.rollout, t.label)
    ended = before.canary or before.rolled_back or before.stable
    analysis_md = _analysis_section(analysis, env, before.canary) if before.canary else ""
    moves_champion = new.stable != before.stable and env == dcfg.champion_env
    registry_line = _champion_follows(reg_cfg, new.stable.version, moves_champion, "back to")
    title, intro = _rollback_texts(env, before, new)
    pr, body = _propose_rollout(t, new, "rollback", ended.version, title, intro, analysis_md, registry_line)
    result = {
        "env": env,
        "action": "rollback",
        "ended_version": ended.version,
        "stable": new.stable.version,
        "pull_request": pr,
    }
    if merge:  # the emergency stop: the pin reaches main now, where Argo CD's self-heal keeps it
        pr["merge"] = t.forge.merge(pr)
    if moves_champion:
        result["champion_on_merge"] = new.stable.version  # reconcile-registry moves it once this is on main
    return result, body


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
    env: str,
    manifest: Path,
    arm_versions: dict[str, int],
    metrics: Path | None,
    prometheus_url: str,
    store_url: str,
    repo: Path,
    cfg: CanaryConfig,
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
    metrics: Path | None,
    prometheus_url: str,
    repo: Path,
    cfg: CanaryConfig,
    dcfg: DeliveryConfig,
    store_url: str = "",
) -> tuple[dict, str]:
    """Decide from a metrics JSON file, or from the collector's store or Prometheus since the canary started."""
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
    arms, source = _arm_metrics(env, path, arm_versions, metrics, prometheus_url, store_url, Path(repo), cfg)
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
    title = f"Retrain: drift in logged conversations ({span})"
    body = pr_body(
        f"## {title}",
        f"Merging this adds `{rel}`; `retrain.yml` then prepares data from the window, "
        "trains, evaluates, gates, registers and opens a release pull request.",
        _markdown_beside(path, "\n".join(f"- {r}" for r in request["drift_reasons"])),
        "_Opened by `flywheel request-retrain`._",
    )
    pr = forge_from_env(Path(repo), dcfg.base_branch).propose(
        Proposal(
            branch=f"flywheel/retrain-{stamp}",
            files={rel: json.dumps(request, indent=2) + "\n"},
            title=title,
            body=body,
            new_file=True,
        )
    )
    return {"requested": True, "drift": True, "request_file": rel, "window": window, "pull_request": pr}, body
