"""Git is the truth, for the registry and for the canary window.

``flywheel reconcile-registry`` on a temporary Git repository holding a copy of the manifests, with a
real MLflow SQLite registry: ``champion`` moves when a release, promote or rollback reaches ``main``,
never while its pull request is open or after it is closed unmerged; a second run changes nothing; a
version that did not pass the gate is refused. And ``canary_started``: the canary's window starts when
the change reached ``main`` (the merge or squashed commit), not when its branch commit was made.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from model.artifact.predictor import IntentPredictor
from model.core.config import DeliveryConfig, RegistryConfig
from model.core.errors import FlywheelError
from model.deploy import manifests
from model.deploy.canary_metrics import canary_started
from model.deploy.delivery import promote_env_step, release_step, rollback_step
from model.deploy.reconcile import reconcile_step
from model.registry import register, versions
from scripts.cli import main
from tests.helpers.git import IDENTITY

REG = RegistryConfig()  # its tracking URI is set by `registry_dir`
DCFG = DeliveryConfig()
PROD = "manifests/production/inferenceservice.yaml"


def git(repo: Path, *args: str, env: dict | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True, env=env)
    return done.stdout.strip()


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory, tiny_artifact):
    """An MLflow store with v1 and v2 gated, and v3 registered without passing the gate."""
    work = tmp_path_factory.mktemp("reconcile-work")
    REG.tracking_uri = f"sqlite:///{work / 'mlflow.db'}"  # what the CLI resolves for --work-dir work
    predictor = IntentPredictor.load(tiny_artifact["artifact"])
    for i in (1, 2, 3):
        meta = {**predictor.meta, "dataset_digest": f"dataset-{i}", "mlflow_run_id": None}
        assert register.register(REG, Path(tiny_artifact["artifact"]), meta, predictor.digest).version == i
    MlflowClient(REG.tracking_uri).delete_model_version_tag(REG.model_name, "3", versions.GATE_TAG)
    return work


@pytest.fixture
def client(registry_dir, monkeypatch) -> MlflowClient:
    """The shared store, reset for each test: no champion, challenger v2 (the newest gated version)."""
    monkeypatch.setenv("FLYWHEEL_WORK_DIR", str(registry_dir))
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    monkeypatch.delenv("GITHUB_REPOSITORY", raising=False)
    mlflow_client = MlflowClient(REG.tracking_uri)
    if versions.alias_version(REG, versions.CHAMPION) is not None:
        mlflow_client.delete_registered_model_alias(REG.model_name, versions.CHAMPION)
    mlflow_client.set_registered_model_alias(REG.model_name, versions.CHALLENGER, "2")
    return mlflow_client


def merge(repo: Path, result: dict) -> None:
    """Merge a step's pull request as GitHub's merge button does: a merge commit on main."""
    git(repo, "merge", "-q", "--no-ff", "-m", "Merge pull request", result["pull_request"]["branch"])


def champion() -> int | None:
    return versions.alias_version(REG, versions.CHAMPION)


def challenger() -> int | None:
    return versions.alias_version(REG, versions.CHALLENGER)


def reconcile(repo: Path) -> dict:
    return reconcile_step(repo, REG, DCFG)[0]


def test_champion_moves_when_the_change_reaches_main_not_when_the_pull_request_opens(repo, client):
    released = release_step("production", 1, 10, repo, reg_cfg=REG, dcfg=DCFG)[0]
    assert reconcile(repo).result == "unchanged" and champion() is None  # open: nothing on main yet
    merge(repo, released)
    got = reconcile(repo)
    assert got.champion == {"action": "moved", "version": 1, "previous": None} and champion() == 1
    assert got.commit == git(repo, "rev-parse", "HEAD") and got.stable_version == 1
    assert got.challenger == {"action": "unchanged", "version": 2} and challenger() == 2  # newer: left alone

    merge(repo, release_step("production", 2, 10, repo, reg_cfg=REG, dcfg=DCFG)[0])  # a canary is not the stable model
    assert reconcile(repo).result == "unchanged" and champion() == 1

    # a promote pull request opened, then closed without merging: champion stays
    promoted, body = promote_env_step("production", None, repo, REG, DCFG)
    assert champion() == 1 and "registry" not in promoted and promoted["champion_on_merge"] == 2
    assert "`champion` moves to v2 once this merges" in body
    assert reconcile(repo).champion == {"action": "unchanged", "version": 1}
    git(repo, "branch", "-D", promoted["pull_request"]["branch"])  # closed unmerged
    assert reconcile(repo).result == "unchanged" and champion() == 1

    # proposed again and merged: now it moves
    merge(repo, promote_env_step("production", None, repo, REG, DCFG)[0])
    assert champion() == 1  # merging alone moves nothing: registry.yml's reconcile does
    got = reconcile(repo)
    assert got.champion == {"action": "moved", "version": 2, "previous": 1} and champion() == 2

    # a rollback merged: champion back; challenger (v2, still the newest gated version) stays
    rolled_back, body = rollback_step("production", repo, REG, DCFG)
    assert champion() == 2 and rolled_back["champion_on_merge"] == 1 and "moves back to v1 once" in body
    merge(repo, rolled_back)
    got = reconcile(repo)
    assert got.champion == {"action": "moved", "version": 1, "previous": 2} and champion() == 1
    assert got.challenger == {"action": "unchanged", "version": 2} and challenger() == 2


def test_a_second_run_changes_nothing(repo, client, monkeypatch):
    merge(repo, release_step("production", 2, 10, repo, reg_cfg=REG, dcfg=DCFG)[0])
    first, _ = reconcile_step(repo, REG, DCFG)
    assert first.result == "moved" and champion() == 2

    def refuse(*args, **kwargs):
        raise AssertionError("an alias was written although it was already right")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", refuse)
    again, md = reconcile_step(repo, REG, DCFG)
    assert again.result == "unchanged" and again.champion == {"action": "unchanged", "version": 2}
    assert "`champion`: v2, unchanged" in md and champion() == 2


def test_a_challenger_older_than_the_champion_follows_it(repo, client):
    client.set_registered_model_alias(REG.model_name, versions.CHALLENGER, "1")
    merge(repo, release_step("production", 2, 10, repo, reg_cfg=REG, dcfg=DCFG)[0])
    got = reconcile(repo)
    assert got.challenger == {"action": "moved", "version": 2, "previous": 1}
    assert (champion(), challenger()) == (2, 2)


def test_staging_never_moves_the_champion(repo, client):
    merge(repo, release_step("staging", 1, 10, repo, reg_cfg=REG, dcfg=DCFG)[0])
    assert reconcile(repo).result == "unchanged" and champion() is None


def _hand_edit_stable(repo: Path, version: int, sha256: str) -> None:
    """Commit a production manifest naming ``version`` as stable (what no flywheel step would propose)."""
    path = repo / PROD
    current = manifests.read_rollout(path).stable
    doc = manifests.load(path)
    ref = manifests.ModelRef(version, current.storage_uri, sha256)
    path.write_text(manifests.write_rollout(path, doc, manifests.Rollout(stable=ref)))
    git(repo, "commit", "-q", "-am", f"hand edit: v{version}")


@pytest.mark.parametrize(
    ("version", "digest", "message"),
    [
        (3, None, "stable v3: flywheel-intent v3 has not passed the gate"),
        (99, None, "stable v99: model 'flywheel-intent' has no version 99"),
        (2, "0" * 64, "stable v2 pins sha256 000000000000, but the registry's flywheel-intent v2 is"),
    ],
)
def test_a_version_that_may_not_be_champion_is_refused_and_no_alias_moves(repo, client, version, digest, message):
    merge(repo, release_step("production", 1, 10, repo, reg_cfg=REG, dcfg=DCFG)[0])
    reconcile(repo)
    _hand_edit_stable(repo, version, digest or manifests.read_rollout(repo / PROD).stable.sha256)
    with pytest.raises(FlywheelError, match=message) as err:
        reconcile(repo)
    assert str(repo / PROD) in str(err.value) and "no alias moved" in str(err.value)
    assert (champion(), challenger()) == (1, 2)


def test_the_cli_step_writes_its_reports_and_exits_2_on_a_refusal(repo, client, tmp_path, capsys):
    merge(repo, release_step("production", 1, 10, repo, reg_cfg=REG, dcfg=DCFG)[0])
    reports = tmp_path / "reports"
    args = ["reconcile-registry", "--repo", str(repo), "--report-dir", str(reports)]
    assert main(args) == 0
    data = json.loads((reports / "reconcile-registry.json").read_text())
    assert data["result"] == "moved" and data["champion"]["version"] == 1 and data["manifest"] == PROD
    assert "`champion`: none → **v1**" in (reports / "reconcile-registry.md").read_text()
    _hand_edit_stable(repo, 3, manifests.read_rollout(repo / PROD).stable.sha256)
    (reports / "reconcile-registry.json").unlink()
    capsys.readouterr()
    assert main(args) == 2
    assert "has not passed the gate" in capsys.readouterr().err
    assert not (reports / "reconcile-registry.json").exists() and champion() == 1


# -- the canary window -------------------------------------------------------------------------------


def _at(seconds: int) -> dict:
    """Author and committer dates ``seconds`` (Unix time), over the test identity."""
    stamp = f"@{seconds} +0000"
    return {**os.environ, **IDENTITY, "GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}


@pytest.fixture
def window_repo(tmp_path) -> tuple[Path, Path, int]:
    """main with a manifest; branch `release` changes it in a commit made an hour before ``now``."""
    now = int(time.time())
    root = tmp_path / "window"
    manifest = root / PROD
    manifest.parent.mkdir(parents=True)
    manifest.write_text("stable: v1\n")
    git(tmp_path, "init", "-q", "-b", "main", str(root))
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial", env=_at(now - 7200))
    git(root, "switch", "-q", "-c", "release")
    manifest.write_text("stable: v1\ncanary: v2\n")
    git(root, "commit", "-q", "-am", "Release v2 on a canary", env=_at(now - 3600))
    git(root, "switch", "-q", "main")
    (root / "README").write_text("meanwhile on main\n")  # main moved on: the merge cannot fast-forward
    git(root, "add", "README")
    git(root, "commit", "-q", "-m", "unrelated", env=_at(now - 1800))
    return root, manifest, now


def test_the_window_starts_at_a_no_ff_merge_not_at_the_branch_commit(window_repo):
    root, manifest, now = window_repo
    git(root, "merge", "-q", "--no-ff", "-m", "Merge pull request #7", "release", env=_at(now))
    assert git(root, "log", "-1", "--format=%ct", "--", str(manifest)) == str(now - 3600)  # what plain log says
    assert canary_started(root, manifest) == now
    # a later merge that leaves the manifest alone does not restart the window
    git(root, "switch", "-q", "-c", "docs", "main~1")
    (root / "NOTES").write_text("notes\n")
    git(root, "add", "NOTES")
    git(root, "commit", "-q", "-m", "notes", env=_at(now + 60))
    git(root, "switch", "-q", "main")
    git(root, "merge", "-q", "--no-ff", "-m", "Merge pull request #8", "docs", env=_at(now + 120))
    assert canary_started(root, manifest) == now


def test_the_window_starts_at_a_squash_merge_by_its_committer_time(window_repo):
    root, manifest, now = window_repo
    git(root, "merge", "-q", "--squash", "release")
    env = {**_at(now), "GIT_AUTHOR_DATE": f"@{now - 3600} +0000"}  # the author date stays the branch's
    git(root, "commit", "-q", "-m", "Release v2 on a canary (#7)", env=env)
    assert git(root, "log", "-1", "--format=%at") == str(now - 3600)
    assert canary_started(root, manifest) == now


def test_the_window_of_a_fast_forward_is_the_commit_itself(window_repo):
    root, manifest, now = window_repo
    git(root, "reset", "-q", "--hard", "HEAD~1")  # main did not move: the branch fast-forwards
    git(root, "merge", "-q", "--ff-only", "release", env=_at(now))
    assert canary_started(root, manifest) == now - 3600
