"""The loop's stages, each a method of ``Loop``, so tests and the benchmark can run part of the loop.

Each stage takes what the stages before it made and returns its own outcome:

    world = loop.setup()                                # data plan, stand-in repository and cluster, users
    first = loop.first_model(world)                     # trained, gated, registered, released: serves
    request = loop.traffic_and_drift(world)             # the merged retrain request; None: no drift
    challenger = loop.retrain(world, request, first)    # labelled, trained, gated, registered if it passed
    decision = loop.canary(world, challenger.version)   # promote, rollback (or hold, after max_looks)
    loop.after_release(world)                           # traffic to whatever serves then
    report = loop.finish(world)                         # traffic.parquet, loop.json, report.html

What each stage did is recorded in ``loop.record`` (``loop.json``) as it ends: its entry (status,
seconds, summary), the pull requests it merged, the events on the report's charts, and its section
(drift, gate, labelling, canary, offline scores). A stage that raises is recorded as failed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from data_checks.drift import drift_step
from model.collect.export import request_window
from model.core.config import RegistryConfig
from model.core.errors import FlywheelError
from model.core.files import replacing, write_text
from model.core.reports import write_reports
from model.data.examples import assign_splits, load_examples
from model.deploy import delivery
from model.deploy.reconcile import reconcile_step
from model.loop.configs import LoopConfigs
from model.loop.live_traffic import LiveTraffic
from model.loop.plan import draw_traffic, plan_data, response_catalog, split_intents
from model.loop.record import (
    CanaryLook,
    CanaryOutcome,
    DriftOutcome,
    Event,
    Intents,
    LoopRecord,
    PullRequest,
    RegisteredVersion,
    RegistryState,
    StageEntry,
)
from model.loop.report import render_report
from model.loop.retraining import Candidate, labelled_training_set, train_gate_register
from model.loop.stand_in import LocalCluster, StandInRepo
from model.loop.traffic import COLUMNS as TRAFFIC_COLUMNS
from model.loop.world import AFTER_RELEASE, BEFORE_SHIFT, SHIFTED, Batch, World, canary_look
from model.registry import store

DECIDED = ("promote", "rollback")  # canary decisions that end the analysis; "hold" looks again


class Loop:
    """One turn of the flywheel in ``work``: the stages (module docstring) and the record they leave."""

    def __init__(self, dataset: Path, work: Path, cfgs: LoopConfigs, progress: Callable[[str], None] = print):
        self.dataset, self.work, self.cfgs, self.say = Path(dataset), Path(work), cfgs, progress
        self.reports = self.work / "reports"
        self.store_url = f"sqlite:///{self.work / 'conversations.db'}"
        self.started = time.monotonic()
        self.record = LoopRecord(dataset=str(self.dataset), started_at=datetime.now(UTC).isoformat())

    # -- bookkeeping -------------------------------------------------------------------------------

    @contextmanager
    def stage(self, name: str, title: str) -> Iterator[StageEntry]:
        began = time.monotonic()
        entry = StageEntry(name=name, title=title)
        self.record.stages.append(entry)
        self.say(f"[{self.clock()}] {len(self.record.stages)}. {title} ...")
        try:
            yield entry
            entry.status = "done"
        finally:
            entry.seconds = round(time.monotonic() - began, 1)
            self.say(f"[{self.clock()}]    {entry.status}: {entry.summary} ({entry.seconds} s)")

    def clock(self) -> str:
        """Minutes and seconds since the loop started, for progress lines."""
        s = int(time.monotonic() - self.started)
        return f"{s // 60:02d}:{s % 60:02d}"

    def mark(self, label: str) -> None:
        self.record.events.append(Event(time=datetime.now(UTC).isoformat(), label=label))

    def _merge(self, repo: StandInRepo, kind: str, result: dict, body: str, step: str | None = None) -> None:
        """Write a delivery step's reports (as ``step``, else ``kind``), merge the pull request it opened, record it."""
        self._write(step or kind, result, body)
        branch = result["pull_request"]["branch"]
        commit = repo.merge(branch)
        title = body.splitlines()[0].lstrip("# ").strip()
        self.record.pull_requests.append(
            PullRequest(kind=kind, title=title, branch=branch, commit=commit, merged=True, body=body)
        )
        if kind in ("release", "promote", "rollback"):  # what registry.yml does on every push to main
            self._write("reconcile-registry", *reconcile_step(repo.path, self.cfgs.registry, self.cfgs.delivery))

    def _sync(self, cluster: LocalCluster) -> None:
        """Argo CD syncs main to the stand-in cluster; say how the route splits traffic and what Argo CD shows."""
        cluster.sync()
        health = cluster.health()
        self.say(f"           cluster: {cluster.describe()}; Argo CD: {health.status}")

    def _write(self, step: str, result: object, md: str) -> Path:
        return write_reports(self.reports, step, result, md)

    def _send(self, world: World, batch: Batch, n: int, new_share: float) -> pd.DataFrame:
        """``n`` user messages from the traffic pool, ``new_share`` of them for held-back intents, sent as ``batch``."""
        seed = self.cfgs.loop.seed + batch.draw
        examples = draw_traffic(world.plan.pool, n, world.intents.held_back, new_share, seed)
        return world.users.send(examples, batch.phase, batch.react)

    def _candidate(self, world: World, data: Path, note: str) -> Candidate:
        """``train_gate_register`` on ``data``, its gate and offline score recorded."""
        got = train_gate_register(data, note, world, self.cfgs, self.work)
        self.record.gate = got.gate
        self.record.offline.append(got.offline)
        return got

    # -- stages --------------------------------------------------------------------------------------

    def setup(self) -> World:
        cfgs = self.cfgs
        with self.stage("setup", "Split the dataset; create the stand-in repository and cluster") as entry:
            df = assign_splits(load_examples(self.dataset, cfgs.data), cfgs.data)
            oos = cfgs.data.oos_label
            known, held_back = split_intents(df, cfgs.loop, oos)
            intents = self.record.intents = Intents(known_at_start=known, held_back=held_back)
            plan = plan_data(df, known, cfgs.loop, cfgs.data)
            seed_csv = self.work / "data" / "seed.csv"
            seed_csv.parent.mkdir(parents=True, exist_ok=True)
            plan.seed.to_csv(seed_csv, index=False)
            repo = StandInRepo.create(self.work / "gitops-repo", cfgs.delivery.manifests_dir)
            catalog = response_catalog(
                Path(cfgs.serve.catalog), sorted(set(df["intent"]) - {oos}), self.work / "responses.yaml"
            )
            cluster = LocalCluster(
                repo,
                cfgs.loop.env,
                self.work,
                config_file=cfgs.config_file,
                model_name=cfgs.registry.model_name,
                endpoint=cfgs.serve.endpoint,
                store_url=self.store_url,
                catalog=catalog,
                tracking_uri=cfgs.registry.tracking_uri,
            )
            entry.summary = (
                f"{len(known)} intents known at start, {len(held_back)} held back "
                f"({', '.join(held_back[:6])}{', ...' if len(held_back) > 6 else ''}); "
                f"seed set {len(plan.seed)} rows, traffic pool {len(plan.pool)}, test set {len(plan.test)}"
            )
        users = LiveTraffic(cluster, self.store_url, cfgs, self.work)
        return World(plan=plan, intents=intents, seed_csv=seed_csv, repo=repo, cluster=cluster, users=users)

    def first_model(self, world: World) -> Candidate:
        """Train, gate and register the first model on the seed set; release it by pull request; serve it."""
        cfgs = self.cfgs
        with self.stage("first-model", "Train, gate and register a first model on the known intents") as entry:
            first = self._candidate(world, world.seed_csv, "seed set (known intents)")
            if not first.passed:
                raise FlywheelError("the first model failed its gate: " + "; ".join(first.gate.reasons))
            v1 = first.version
            entry.summary = (
                f"v{v1}: accuracy {first.trained.metrics['accuracy']:.3f} on its own test split, "
                f"{first.offline.test_accuracy:.3f} on the full test set"
            )
        with self.stage("first-release", "Release it by pull request, promote it to champion, start serving") as entry:
            result, body = delivery.release_step(
                cfgs.loop.env, v1, cfgs.loop.canary_percent, world.repo.path, reg_cfg=cfgs.registry, dcfg=cfgs.delivery
            )
            self._merge(world.repo, "release", result, body)  # champion follows the merge (reconcile-registry)
            world.cluster.start_collector()
            self._sync(world.cluster)
            self.mark(f"v{v1} serves")
            entry.summary = f"release PR merged; v{v1} is champion and serves {world.cluster.predictor_url}"
        return first

    def traffic_and_drift(self, world: World) -> Path | None:
        """Users before and after the shift, then the drift check: the merged retrain request where drift
        was found, else None."""
        loop_cfg = self.cfgs.loop
        with self.stage("traffic", "Simulated users talk to the model; then the traffic shifts") as entry:
            t0 = datetime.now(UTC)
            before = self._send(world, BEFORE_SHIFT, loop_cfg.requests_before_shift, 0.0)
            reference = world.users.window_since(t0, BEFORE_SHIFT.phase)
            self.mark("traffic shifts: new intents appear")
            t1 = datetime.now(UTC)
            shifted = self._send(world, SHIFTED, loop_cfg.requests_after_shift, loop_cfg.new_intent_share)
            current = world.users.window_since(t1, SHIFTED.phase)
            entry.summary = (
                f"{len(before)} requests (accuracy {before['correct'].mean():.3f}), then {len(shifted)} with "
                f"{loop_cfg.new_intent_share:.0%} new intents (accuracy {shifted['correct'].mean():.3f})"
            )
        with self.stage("drift", "Drift check on the shifted window; retrain pull request if drift") as entry:
            return self._drift(world, entry, reference, current)

    def _drift(self, world: World, entry: StageEntry, reference: Path, current: Path) -> Path | None:
        """``flywheel drift`` on the ``current`` window against the ``reference`` one before it; if it drifted,
        the retrain request, merged."""
        cfgs = self.cfgs
        result, md = drift_step(
            world.seed_csv,
            current,
            reference_events=reference,
            cfg=cfgs.drift,
            data_cfg=cfgs.data,
            reg_cfg=cfgs.registry,
            report_dir=self.reports / "drift",
            work=self.work,
        )
        drift_file = self._write("drift", result, md)
        self.record.drift = DriftOutcome(
            drift=result.decision.drift, reasons=result.decision.reasons, html=result.evidently_html, markdown=md
        )
        if not result.decision.drift:
            entry.summary = "no drift found: nothing to retrain"
            return None
        self.mark("drift found")
        requested, body = delivery.request_retrain_step(drift_file, world.repo.path, cfgs.delivery)
        self._merge(world.repo, "retrain", requested, body, step="request-retrain")
        entry.summary = f"drift: {'; '.join(result.decision.reasons[:2])}; retrain PR merged"
        return world.repo.path / requested["request_file"]

    def retrain(self, world: World, request: Path, first: Candidate, strategy: str | None = None) -> Candidate:
        """Export the window ``request`` names, label, prepare, check, train, gate and register if it passes
        (``first``: the model serving, which the summary compares with)."""
        strategy = strategy or self.cfgs.loop.label_strategy
        with self.stage("prepare", f"Export the requested window, label it ({strategy}), prepare and check") as entry:
            start, end = request_window(request)
            snapshot = world.users.export(start, end, f"retrain-{strategy}")
            made = labelled_training_set(snapshot, strategy, world, self.cfgs, self.work)
            lab = self.record.labelling = made.labelling
            entry.summary = (
                f"{lab.queue_length} messages queued for review; {lab.labelled} labelled "
                f"({lab.wrong_labels} wrong, {lab.new_intent_labels} of held-back intents); {made.rows} training rows"
            )
        with self.stage("retrain", "Train a challenger, evaluate, gate against the champion, register") as entry:
            got = self._candidate(world, made.examples, "prepared set, its test split")
            if not got.passed:
                self.mark("gate rejected the challenger")
                entry.summary = "gate rejected: " + "; ".join(got.gate.reasons[:3])
                return got
            self.mark(f"v{got.version} registered")
            entry.summary = (
                f"v{got.version} passed the gate; full test set accuracy {got.offline.test_accuracy:.3f} "
                f"(v{first.version}: {first.offline.test_accuracy:.3f})"
            )
            return got

    def canary(self, world: World, version: int) -> str:
        """Release ``version`` on a canary, analyse after each batch of traffic, promote or roll back."""
        cfgs, loop_cfg, repo = self.cfgs, self.cfgs.loop, world.repo
        with self.stage(
            "canary", f"Release v{version} on a {loop_cfg.canary_percent}% canary; analyse until it decides"
        ) as entry:
            result, body = delivery.release_step(
                loop_cfg.env, version, loop_cfg.canary_percent, repo.path, reg_cfg=cfgs.registry, dcfg=cfgs.delivery
            )
            self._merge(repo, "release", result, body)
            self._sync(world.cluster)
            self.mark(f"canary v{version} starts")
            outcome, analysis_file = self._analyse(world, datetime.now(UTC))
            self.record.canary = outcome
            if outcome.decision == "promote":
                result, body = delivery.promote_env_step(
                    loop_cfg.env, version, repo.path, cfgs.registry, cfgs.delivery, str(analysis_file)
                )
                self._merge(repo, "promote", result, body)
                self.mark(f"v{version} promoted")
            elif outcome.decision == "rollback":
                result, body = delivery.rollback_step(
                    loop_cfg.env, repo.path, cfgs.registry, cfgs.delivery, str(analysis_file)
                )
                self._merge(repo, "rollback", result, body)
                self.mark(f"v{version} rolled back")
            self._sync(world.cluster)
            entry.summary = f"{outcome.decision} after {len(outcome.looks)} look(s): {outcome.reasons[0]}"
            return outcome.decision

    def _analyse(self, world: World, canary_start: datetime) -> tuple[CanaryOutcome, Path]:
        """Traffic and a canary analysis per look, until it decides or ``max_looks`` is reached."""
        cfgs, loop_cfg = self.cfgs, self.cfgs.loop
        looks: list[CanaryLook] = []
        for look in range(1, loop_cfg.max_looks + 1):
            self._send(world, canary_look(look), loop_cfg.look_requests, loop_cfg.new_intent_share)
            world.users.await_logger(canary_start)  # count every answer, however busy the machine
            analysis, md = delivery.canary_analysis_step(
                loop_cfg.env, world.repo.path, cfg=cfgs.canary, dcfg=cfgs.delivery, store_url=self.store_url
            )
            analysis_file = self._write("canary-analysis", analysis, md)
            arms = analysis["arms"]
            looks.append(
                CanaryLook(look=look, decision=analysis["decision"], stable=arms["stable"], canary=arms["canary"])
            )
            self.say(f"           look {look}: {analysis['decision']} ({'; '.join(analysis['reasons'])[:160]})")
            if analysis["decision"] in DECIDED:
                break
        outcome = CanaryOutcome(decision=analysis["decision"], reasons=analysis["reasons"], markdown=md, looks=looks)
        return outcome, analysis_file

    def after_release(self, world: World) -> None:
        loop_cfg = self.cfgs.loop
        with self.stage("after", "Traffic on the model that serves now") as entry:
            sent = self._send(world, AFTER_RELEASE, loop_cfg.requests_after_release, loop_cfg.new_intent_share)
            entry.summary = (
                f"{len(sent)} requests to v{world.cluster.running.stable.version}: "
                f"accuracy {sent['correct'].mean():.3f}"
            )

    def finish(self, world: World | None) -> Path:
        """Write the traffic, the registry's state, ``loop.json`` and the report rendered from it (``world``:
        None when setup itself failed)."""
        record = self.record
        traffic_file = self.work / "traffic.parquet"
        frames = world.users.sent if world else []
        sent = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TRAFFIC_COLUMNS)
        with replacing(traffic_file) as tmp:
            sent.to_parquet(tmp, index=False)
        record.traffic = str(traffic_file)
        record.registry = registry_state(self.cfgs.registry)
        record.git_repo = str(world.repo.path) if world else None
        record.finished_at = datetime.now(UTC).isoformat()
        record.seconds = round(time.monotonic() - self.started, 1)
        loop_json = record.to_dict()
        write_text(self.work / "loop.json", json.dumps(loop_json, indent=2, default=str) + "\n")
        return render_report(loop_json, self.work / "report.html")

    @staticmethod
    def close(world: World | None) -> None:
        """Stop what the stand-in cluster runs (nothing to stop when setup itself failed)."""
        if world is not None:
            world.cluster.close()


def registry_state(reg_cfg: RegistryConfig) -> RegistryState:
    """Every registered version of the model with its aliases, lineage tags and top-level metrics."""
    client = store.connect(reg_cfg)
    versions = []
    for mv in sorted(client.search_model_versions(f"name='{reg_cfg.model_name}'"), key=lambda v: int(v.version)):
        metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
        versions.append(
            RegisteredVersion(
                version=int(mv.version),
                # search results leave aliases out; the version itself has them
                aliases=sorted(client.get_model_version(reg_cfg.model_name, mv.version).aliases),
                run_id=mv.run_id,
                dataset_digest=mv.tags.get("dataset_digest", ""),
                git_sha=mv.tags.get("git_sha", ""),
                created=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(),
                metrics={k: v for k, v in sorted(metrics.items()) if "/" not in k},
            )
        )
    return RegistryState(tracking_uri=store.tracking_uri(reg_cfg), model_name=reg_cfg.model_name, versions=versions)
