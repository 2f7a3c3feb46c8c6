"""Local stand-ins for GitHub and for Argo CD + KServe, so the whole loop runs on one machine.

- ``StandInRepo``: a Git repository in a work folder playing the GitOps repository on GitHub. The
  delivery commands propose pull requests into it exactly as they do locally (``LocalForge``: a
  branch holding one commit whose message is the title and body); ``merge`` fast-forwards ``main``,
  so ``git log main`` shows one commit per merged pull request.
- ``LocalCluster``: plays Argo CD and KServe. ``sync`` applies the environment's InferenceService
  from the stand-in repository's ``main`` to the Knative model of ``model.loop.knative`` (the one the
  delivery tests step through: revisions, the rolled-out revision's share, the pin) and hosts what
  its route sends traffic to in one ``flywheel serve``: the rolled-out revision's model as the
  ``stable`` endpoint, the other revision with a share as ``canary``, each verified against the
  digest its revision's env pins. Every user request is routed by that model (``arm_for``). A
  revision here is ready once the process serves it (no separate cold start). The collector runs
  beside it and the predictor's logger posts every request and response to it, as KServe's logger
  does. The ConfigMap ``flywheel-arms`` beside the InferenceService is projected into a folder, one
  file per key, as the kubelet mounts it for the collector (``--arms-dir``). After each sync,
  ``cluster/inferenceservice.json`` holds the InferenceService's status as ``kubectl get -o json``
  would show it, and ``health`` is what Argo CD shows for it (its own health check).
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import time
from pathlib import Path

import yaml

from model.core.config import PROJECT_ROOT
from model.core.errors import FlywheelError
from model.core.files import write_text
from model.core.git import IDENTITY, git
from model.core.processes import Supervised
from model.deploy import manifests
from model.deploy.argocd_health import Health, inferenceservice_health
from model.deploy.manifests import Rollout
from model.loop.knative import KnativeService, Revision
from model.loop.traffic import CANARY, STABLE


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

    def merge(self, branch: str) -> str:
        """Merge a proposed branch into ``main`` (fast-forward: its one commit lands as it is)."""
        git(self.path, "merge", "--quiet", "--ff-only", branch, env=IDENTITY)
        return git(self.path, "rev-parse", "HEAD").strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """Runs what the stand-in repository's manifest says, routed as KServe + Knative would: the predictor
    (stable + canary endpoints) and the collector."""

    def __init__(
        self,
        repo: StandInRepo,
        env: str,
        work: Path,
        *,
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
        self.running: Rollout | None = None  # what Git's record on main says serves
        self.service = KnativeService(endpoint, cold_start_s=0.0)  # sync returns once the process serves
        self.hosted: dict[str, Revision] = {}  # arm (endpoint) -> the revision whose model it serves
        self.started_at = time.monotonic()
        self.starts = 0
        self.arms_dir = self.work / "cluster" / "configmaps" / manifests.ARMS_CONFIGMAP
        self.status_file = self.work / "cluster" / "inferenceservice.json"

    @property
    def predictor_url(self) -> str:
        return f"http://127.0.0.1:{self.serve_port}"

    @property
    def collector_url(self) -> str:
        return f"http://127.0.0.1:{self.collect_port}"

    def now(self) -> float:
        return time.monotonic() - self.started_at

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

    def _routed(self, now: float) -> dict[str, Revision]:
        """Arm -> revision for every revision the route gives a share: the rolled-out one is stable."""
        arms: dict[str, Revision] = {}
        for revision, _ in self.service.traffic(now):
            arm = STABLE if revision.name == self.service.latest_rolled_out else CANARY
            if arm in arms:
                both = f"{arms[arm].name}, {revision.name}"
                raise FlywheelError(f"{self.env}: two revisions for the {arm} endpoint: {both}")
            arms[arm] = revision
        if STABLE not in arms:
            raise FlywheelError(f"{self.env}: the route names no rolled-out revision ({self.describe()})")
        return arms

    def sync(self) -> Rollout:
        """Apply the manifest on ``main`` as Argo CD would; restart the predictor only when the routed models change."""
        self.project_arms()
        path = manifests.isvc_path(self.repo.path, self.env)
        rollout = manifests.read_rollout(path)  # what check-manifests refuses, Argo CD never gets here
        if rollout.stable is None:
            raise FlywheelError(f"{self.repo.path}: {self.env} has no stable model to serve yet")
        now = self.now()
        self.service.apply(next(yaml.safe_load_all(path.read_text())), now)
        wanted = self._routed(now)
        models = {arm: (r.model_version, r.model_sha256) for arm, r in wanted.items()}
        if self.predictor is None or models != {a: (r.model_version, r.model_sha256) for a, r in self.hosted.items()}:
            self._start_predictor(wanted)
        self.hosted, self.running = wanted, rollout
        write_text(self.status_file, json.dumps(self.service.status(self.now()), indent=2) + "\n")
        return rollout

    def _start_predictor(self, arms: dict[str, Revision]) -> None:
        if self.predictor is not None:
            self.predictor.stop()
        stable, canary = arms[STABLE], arms.get(CANARY)
        args = [
            "serve",
            "--stable",
            f"models:/{self.model_name}/{stable.model_version}",
            "--stable-sha256",
            stable.model_sha256,
            "--stable-version",
            stable.model_version,
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
        if canary:
            args += ["--canary", f"models:/{self.model_name}/{canary.model_version}"]
        self.starts += 1
        self.predictor = self._spawn(f"predictor-{self.starts}", args)
        self.predictor.wait_ready(f"{self.predictor_url}/v2/models/{self.endpoint}/ready")
        if canary:
            self.predictor.wait_ready(f"{self.predictor_url}/v2/models/{self.endpoint}-canary/ready")

    def arm_for(self, draw: float) -> str:
        """The endpoint that serves a request whose uniform draw is ``draw``: the revision Knative's route picks."""
        revision = self.service.route(draw, self.now())
        arm = next((arm for arm, hosted in self.hosted.items() if hosted.name == revision.name), None)
        if arm is None:
            raise FlywheelError(f"{self.env}: the route picked {revision.name}, which the predictor does not host")
        return arm

    def health(self) -> Health:
        """What Argo CD shows for the InferenceService now (Argo CD's own health check on its status)."""
        return inferenceservice_health(self.service.status(self.now()))

    def describe(self) -> str:
        """The route in one line, e.g. ``intent-predictor-00002 (v2) 50%, intent-predictor-00001 (v1) 50%``."""
        now = self.now()
        split = ", ".join(f"{r.name} (v{r.model_version}) {p}%" for r, p in self.service.traffic(now))
        idle = [r for r in self.service.active(now) if r.name not in {r.name for r, _ in self.service.traffic(now)}]
        kept = f"; kept with no traffic: {', '.join(f'{r.name} (v{r.model_version})' for r in idle)}" if idle else ""
        return f"{split or 'no revision ready'}{kept}"

    def close(self) -> None:
        for child in (self.predictor, self.collector):
            if child is not None:
                child.stop()
        self.predictor = self.collector = None
