"""Local stand-ins for GitHub and for Argo CD + KServe, so the whole loop runs on one machine.

- ``StandInRepo``: a Git repository in a work folder playing the GitOps repository on GitHub. The
  delivery commands propose pull requests into it exactly as they do locally (``LocalForge``: a
  branch holding one commit whose message is the title and body); ``merge`` fast-forwards ``main``,
  so ``git log main`` shows one commit per merged pull request.
- ``LocalCluster``: plays Argo CD and KServe. ``sync`` reads the environment's InferenceService
  from the stand-in repository's ``main`` and (re)starts ``flywheel serve`` with the stable and
  canary models it names, verified against the digests it pins; the collector runs beside it and
  the predictor's logger posts every request and response to it, as KServe's logger does.
  Traffic is split by the caller as the manifest's ``canaryTrafficPercent`` says (KServe's ingress
  does it in a cluster).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from model.core.config import PROJECT_ROOT
from model.core.errors import FlywheelError
from model.deploy import manifests
from model.deploy.manifests import Rollout

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "flywheel",
    "GIT_AUTHOR_EMAIL": "flywheel@localhost",
    "GIT_COMMITTER_NAME": "flywheel",
    "GIT_COMMITTER_EMAIL": "flywheel@localhost",
}


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env={**os.environ, **GIT_IDENTITY})
    if done.returncode != 0:
        raise FlywheelError(f"git {' '.join(args[:2])} failed in {repo}: {done.stderr.strip()}")
    return done.stdout


class StandInRepo:
    """A local Git repository standing in for the GitOps repository on GitHub."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, path: Path, manifests_dir: str = "manifests") -> StandInRepo:
        """A fresh repository holding this project's manifests as its first commit on ``main``."""
        path = Path(path)
        if path.exists():
            raise FlywheelError(f"{path}: already exists; the stand-in repository starts empty")
        path.mkdir(parents=True)
        git(path, "init", "--quiet", "--initial-branch=main")
        shutil.copytree(PROJECT_ROOT / manifests_dir, path / manifests_dir)
        git(path, "add", manifests_dir)
        git(path, "commit", "--quiet", "-m", "Manifests as Argo CD syncs them (copied from Flywheel)")
        return cls(path)

    def merge(self, pull_request: dict) -> str:
        """Merge a proposed branch into ``main`` (fast-forward: its one commit lands as it is)."""
        branch = pull_request["branch"]
        git(self.path, "merge", "--quiet", "--ff-only", branch)
        return git(self.path, "rev-parse", "HEAD").strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """Runs what the stand-in repository's manifest says: the predictor (stable + canary) and the collector."""

    def __init__(
        self,
        repo: StandInRepo,
        env: str,
        work: Path,
        config_file: Path,
        model_name: str,
        endpoint: str,
        store_url: str,
        catalog: Path,
        tracking_uri: str,
    ):
        self.repo, self.env, self.work, self.config_file = repo, env, Path(work), Path(config_file)
        self.tracking_uri = tracking_uri
        self.model_name, self.endpoint, self.store_url, self.catalog = model_name, endpoint, store_url, catalog
        self.serve_port, self.collect_port = free_port(), free_port()
        self.predictor: subprocess.Popen | None = None
        self.collector: subprocess.Popen | None = None
        self.running: Rollout | None = None
        self.starts = 0

    @property
    def predictor_url(self) -> str:
        return f"http://127.0.0.1:{self.serve_port}"

    @property
    def collector_url(self) -> str:
        return f"http://127.0.0.1:{self.collect_port}"

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        logs = self.work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        cmd = [
            *(sys.executable, "-m", "scripts.cli", args[0]),
            *("--config", str(self.config_file), "--work-dir", str(self.work)),
            *args[1:],
        ]
        with open(logs / f"{name}.log", "ab") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT)
        proc.log_path = logs / f"{name}.log"
        return proc

    def _wait(self, proc: subprocess.Popen, url: str, what: str, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = proc.log_path.read_text(errors="replace")[-2000:]
                raise FlywheelError(f"{what} exited with code {proc.returncode} before it was ready:\n{tail}")
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise FlywheelError(f"{what} not ready at {url} within {timeout_s:.0f} s (log: {proc.log_path})")

    def start_collector(self) -> None:
        self.collector = self._spawn(
            "collector",
            ["collect", "--store-url", self.store_url, "--http-port", str(self.collect_port), "--host", "127.0.0.1"],
        )
        self._wait(self.collector, f"{self.collector_url}/healthz", "the collector")

    def sync(self) -> Rollout:
        """Make the running predictor match the manifest on ``main``; restart it only when the models change."""
        rollout = manifests.read_rollout(manifests.isvc_path(self.repo.path, self.env))
        if rollout.stable is None:
            raise FlywheelError(f"{self.repo.path}: {self.env} has no stable model to serve yet")
        wanted = (rollout.stable, rollout.canary)
        if (
            self.predictor is not None
            and self.running is not None
            and (self.running.stable, self.running.canary) == wanted
        ):
            self.running = rollout
            return rollout
        self._stop(self.predictor)
        args = [
            "serve",
            "--stable",
            f"models:/{self.model_name}/{rollout.stable.version}",
            "--stable-sha256",
            rollout.stable.sha256,
            "--stable-version",
            str(rollout.stable.version),
            "--http-port",
            str(self.serve_port),
            "--host",
            "127.0.0.1",
            "--logger-url",
            f"{self.collector_url}/events",
            "--catalog",
            str(self.catalog),
            "--prediction-log",
            str(self.work / "serving" / "predictions.jsonl"),
            "--tracking-uri",
            self.tracking_uri,
        ]
        if rollout.canary:
            args += ["--canary", f"models:/{self.model_name}/{rollout.canary.version}"]
        self.starts += 1
        self.predictor = self._spawn(f"predictor-{self.starts}", args)
        self._wait(self.predictor, f"{self.predictor_url}/v2/models/{self.endpoint}/ready", "the predictor")
        if rollout.canary:
            self._wait(self.predictor, f"{self.predictor_url}/v2/models/{self.endpoint}-canary/ready", "the canary")
        self.running = rollout
        return rollout

    @staticmethod
    def _stop(proc: subprocess.Popen | None) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def close(self) -> None:
        self._stop(self.predictor)
        self._stop(self.collector)
        self.predictor = self.collector = None
