"""`flywheel reconcile-registry`: the registry follows Git.

What ``manifests/<champion env>/inferenceservice.yaml`` says is stable on the checked-out commit is
what ``champion`` names. ``registry.yml`` runs this on every push to ``main`` that touches
``manifests/``, so the alias moves when a release, promote or rollback merges, and never while its
pull request is open (closing one unmerged leaves the registry as it was). Reconciling is idempotent:
a second run, or a push that changed another environment, reports ``unchanged``.

``challenger`` (the newest gate-passed version, set by ``flywheel register``) is left alone unless it
is missing or older than the new champion: then it names a version that is superseded by what serves
users, and it is set to the champion (nothing newer waits). A rollback leaves it where it is: the
rolled-back version is still the newest that passed the gate, and Git records why it does not serve.

Only a version that passed the gate, with the artifact digest the manifest pins, may be champion;
anything else is an error and no alias moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model.core.config import DeliveryConfig, RegistryConfig
from model.core.errors import FlywheelError
from model.core.git import run_git
from model.core.steps import StepResult
from model.deploy import manifests
from model.deploy.args import ReconcileArgs
from model.registry import store, versions

UNCHANGED, MOVED = "unchanged", "moved"


@dataclass(frozen=True)
class Reconciled:
    """What the champion environment's manifest names as stable, and what that did to the aliases."""

    env: str
    manifest: str  # relative to the repository
    commit: str | None
    stable_version: int | None  # None: nothing released yet
    result: str  # MOVED or UNCHANGED
    champion: dict  # {"action", "version"[, "previous"]}
    challenger: dict | None  # as champion; None when nothing is released yet


def reconcile_registry_command(
    args: ReconcileArgs, *, registry: RegistryConfig, delivery: DeliveryConfig
) -> StepResult[Reconciled]:
    """Set the registry's 'champion' to the stable model the champion environment's manifest names."""
    return StepResult(*reconcile_step(Path(args.repo), registry, delivery))


def _commit(repo: Path) -> str | None:
    done = run_git(repo, "rev-parse", "HEAD", check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def _move(client, reg_cfg: RegistryConfig, alias: str, version: int, previous: int | None) -> dict:
    if previous == version:
        return {"action": UNCHANGED, "version": version}
    client.set_registered_model_alias(reg_cfg.model_name, alias, str(version))
    return {"action": MOVED, "version": version, "previous": previous}


def reconcile_step(repo: Path, reg_cfg: RegistryConfig, dcfg: DeliveryConfig) -> tuple[Reconciled, str]:
    """Move ``champion`` (and a stale ``challenger``) to what the manifest says; every check before any move."""
    env = dcfg.champion_env
    path = manifests.isvc_path(repo, env, dcfg.manifests_dir)
    stable = manifests.read_rollout(path).stable
    rel = f"{dcfg.manifests_dir}/{env}/{manifests.ISVC_FILE}"
    commit = _commit(repo)
    if stable is None:  # nothing released yet: there is no champion to follow
        nothing = {"action": UNCHANGED, "version": None}
        result = Reconciled(env, rel, commit, None, UNCHANGED, nothing, None)
        return result, f"## Registry follows {env}\n\nNo stable model in `{rel}` yet: no alias moved.\n"
    client = store.connect(reg_cfg)
    try:
        mv = versions.gated_version(client, reg_cfg, stable.version, "champion")
    except FlywheelError as exc:
        raise FlywheelError(f"{path}: stable {stable.label()}: {exc}; no alias moved") from exc
    if mv.tags.get("artifact_digest") != stable.sha256:
        raise FlywheelError(
            f"{path}: stable {stable.label()} pins sha256 {stable.sha256[:12]}, but the registry's "
            f"{reg_cfg.model_name} v{stable.version} is {str(mv.tags.get('artifact_digest'))[:12]}; no alias moved"
        )
    champion = versions.alias_version(reg_cfg, versions.CHAMPION)
    challenger = versions.alias_version(reg_cfg, versions.CHALLENGER)
    champion_move = _move(client, reg_cfg, versions.CHAMPION, stable.version, champion)
    stale = challenger is None or challenger < stable.version
    challenger_move = (
        _move(client, reg_cfg, versions.CHALLENGER, stable.version, challenger)
        if stale
        else {"action": UNCHANGED, "version": challenger}
    )
    moved = MOVED in (champion_move["action"], challenger_move["action"])
    result = Reconciled(env, rel, commit, stable.version, MOVED if moved else UNCHANGED, champion_move, challenger_move)
    return result, _markdown(result, reg_cfg)


def _markdown(result: Reconciled, reg_cfg: RegistryConfig) -> str:
    def line(alias: str) -> str:
        got = getattr(result, alias)
        if got["action"] == UNCHANGED:
            return f"- `{alias}`: v{got['version']}, unchanged"
        before = f"v{got['previous']}" if got.get("previous") else "none"
        return f"- `{alias}`: {before} → **v{got['version']}**"

    commit = (result.commit or "?")[:12]
    return (
        f"## Registry follows {result.env}\n\n"
        f"`{result.manifest}` at `{commit}` names v{result.stable_version} as stable; "
        f"{reg_cfg.model_name} aliases: {result.result}.\n\n" + "\n".join(map(line, ("champion", "challenger"))) + "\n"
    )
