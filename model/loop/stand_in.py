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
  does it in a cluster). The ConfigMap ``flywheel-arms`` beside the InferenceService is projected
  into a folder, one file per key, as the kubelet mounts it for the collector (``--arms-dir``).
"""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

from model.core.config import PROJECT_ROOT
from model.core.errors import FlywheelError
from model.core.files import write_text
from model.core.git import IDENTITY, git
from model.core.processes import Supervised
from model.deploy import manifests
from model.deploy.manifests import Rollout


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
        git(path, "init", "--quiet", "--initial-branch=main", env=IDENTITY)
        shutil.copytree(PROJECT_ROOT / manifests_dir, path / manifests_dir)
        git(path, "add", manifests_dir, env=IDENTITY)
        git(path, "commit", "--quiet", "-m", "Manifests as Argo CD syncs them (copied from Flywheel)", env=IDENTITY)
        return cls(path)

    def merge(self, pull_request: dict) -> str:
        """Merge a proposed branch into ``main`` (fast-forward: its one commit lands as it is)."""
        branch = pull_request["branch"]
        git(self.path, "merge", "--quiet", "--ff-only", branch, env=IDENTITY)
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
        self.predictor: Supervised | None = None
        self.collector: Supervised | None = None
        self.running: Rollout | None = None
        self.starts = 0
        self.arms_dir = self.work / "cluster" / "configmaps" / manifests.ARMS_CONFIGMAP

    @property
    def predictor_url(self) -> str:
        return f"http://127.0.0.1:{self.serve_port}"

    @property
    def collector_url(self) -> str:
        return f"http://127.0.0.1:{self.collect_port}"

    def _spawn(self, name: str, args: list[str]) -> Supervised:
        cmd = [
            *(sys.executable, "-m", "scripts.cli", args[0]),
            *("--config", str(self.config_file), "--work-dir", str(self.work)),
            *args[1:],
        ]
        return Supervised(name, cmd, self.work / "logs" / f"{name}.log").start()

    def start_collector(self) -> None:
        self.project_arms()
        args = ["collect", "--store-url", self.store_url, "--http-port", str(self.collect_port), "--host", "127.0.0.1"]
        self.collector = self._spawn("collector", [*args, "--arms-dir", str(self.arms_dir)])
        self.collector.wait_ready(f"{self.collector_url}/healthz")

    def project_arms(self) -> None:
        """The arms ConfigMap on ``main`` as files, one per data key, as the kubelet mounts a ConfigMap
        (each file replaced in one rename; a key gone from the ConfigMap is a file gone)."""
        data = manifests.load(manifests.isvc_path(self.repo.path, self.env)).arms.get("data") or {}
        self.arms_dir.mkdir(parents=True, exist_ok=True)
        for key, value in data.items():
            write_text(self.arms_dir / str(key), str(value))
        for stale in self.arms_dir.iterdir():
            if stale.name not in data:
                stale.unlink()

    def sync(self) -> Rollout:
        """Make the running predictor match the manifest on ``main``; restart it only when the models change."""
        self.project_arms()
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
        if self.predictor is not None:
            self.predictor.stop()
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
        self.predictor.wait_ready(f"{self.predictor_url}/v2/models/{self.endpoint}/ready")
        if rollout.canary:
            self.predictor.wait_ready(f"{self.predictor_url}/v2/models/{self.endpoint}-canary/ready")
        self.running = rollout
        return rollout

    def close(self) -> None:
        for child in (self.predictor, self.collector):
            if child is not None:
                child.stop()
        self.predictor = self.collector = None
