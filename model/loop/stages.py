"""The loop's stages, each a method of ``Loop``, so tests and the benchmark can run part of the loop.

``setup`` splits the dataset and creates the stand-ins; ``first_model`` trains, gates, registers and
releases the model that serves first; ``traffic_and_drift`` has users talk to it, shifts the traffic
and checks for drift (a retrain pull request if found); ``retrain`` labels the requested window and
makes a challenger; ``canary`` releases it on a canary and analyses until it decides; ``after_release``
sends traffic to whatever serves then; ``finish`` writes ``loop.json`` and the report.

Every piece of state lives in ``Loop.state`` (``model.loop.record``); each stage's outcome and timing
go into its record, and a stage that raises is recorded as failed.
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
    LoopState,
    PullRequest,
    RegisteredVersion,
    RegistryState,
    StageEntry,
)
from model.loop.report import render_report
from model.loop.retraining import Candidate, labelled_training_set, train_gate_register
from model.loop.stand_in import LocalCluster, StandInRepo
from model.loop.traffic import COLUMNS as TRAFFIC_COLUMNS
from model.registry import store

PHASE_BEFORE, PHASE_SHIFTED, PHASE_AFTER = "before-shift", "shifted", "after-release"
DECIDED = ("promote", "rollback")  # canary decisions that end the analysis; "hold" looks again


class Loop:
    """One turn of the flywheel in ``work``; stages run in order and fill ``self.state``."""

    def __init__(self, dataset: Path, work: Path, cfgs: LoopConfigs, progress: Callable[[str], None] = print):
        self.dataset, self.work, self.cfgs, self.say = Path(dataset), Path(work), cfgs, progress
        self.reports = self.work / "reports"
        self.store_url = f"sqlite:///{self.work / 'conversations.db'}"
        self.started = time.monotonic()
        self.state = LoopState(LoopRecord(dataset=str(self.dataset), started_at=datetime.now(UTC).isoformat()))
        self.repo: StandInRepo | None = None
        self.cluster: LocalCluster | None = None
        self.users: LiveTraffic | None = None

    # -- bookkeeping -------------------------------------------------------------------------------

    @contextmanager
    def stage(self, name: str, title: str) -> Iterator[StageEntry]:
        began = time.monotonic()
        entry = StageEntry(name=name, title=title)
        self.state.record.stages.append(entry)
        self.say(f"[{self.clock()}] {len(self.state.record.stages)}. {title} ...")
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
        self.state.record.events.append(Event(time=datetime.now(UTC).isoformat(), label=label))

    def _merge(self, kind: str, result: dict, body: str, step: str | None = None) -> None:
        """Write a delivery step's reports (as ``step``, else ``kind``), merge the pull request it opened, record it."""
        self._write(step or kind, result, body)
        pr = result["pull_request"]
        commit = self.repo.merge(pr)
        title = body.splitlines()[0].lstrip("# ").strip()
        self.state.record.pull_requests.append(
            PullRequest(kind=kind, title=title, branch=pr["branch"], commit=commit, merged=True, body=body)
        )
        if kind in ("release", "promote", "rollback"):  # what registry.yml does on every push to main
            self._write("reconcile-registry", *reconcile_step(self.repo.path, self.cfgs.registry, self.cfgs.delivery))

    def _sync(self) -> None:
        """Argo CD syncs main to the stand-in cluster; say how the route splits traffic and what Argo CD shows."""
        self.cluster.sync()
        health = self.cluster.health()
        self.say(f"           cluster: {self.cluster.describe()}; Argo CD: {health.status}")

    def _write(self, step: str, result: object, md: str) -> Path:
        return write_reports(self.reports, step, result, md)

    def _draw(self, n: int, new_share: float, seed_offset: int) -> pd.DataFrame:
        """``n`` user messages from the traffic pool, ``new_share`` of them for held-back intents."""
        return draw_traffic(self.state.plan.pool, n, self.state.held_back, new_share, self.cfgs.loop.seed + seed_offset)

    # -- stages --------------------------------------------------------------------------------------

    def setup(self) -> None:
        state, cfgs = self.state, self.cfgs
        with self.stage("setup", "Split the dataset; create the stand-in repository and cluster") as entry:
            df = assign_splits(load_examples(self.dataset, cfgs.data), cfgs.data)
            oos = cfgs.data.oos_label
            known, held_back = split_intents(df, cfgs.loop, oos)
            state.record.intents = Intents(known_at_start=known, held_back=held_back)
            state.plan = plan = plan_data(df, known, cfgs.loop, cfgs.data)
            state.seed_csv = self.work / "data" / "seed.csv"
            state.seed_csv.parent.mkdir(parents=True, exist_ok=True)
            plan.seed.to_csv(state.seed_csv, index=False)
            self.repo = StandInRepo.create(self.work / "gitops-repo", cfgs.delivery.manifests_dir)
            catalog = response_catalog(
                Path(cfgs.serve.catalog), sorted(set(df["intent"]) - {oos}), self.work / "responses.yaml"
            )
            self.cluster = LocalCluster(
                self.repo,
                cfgs.loop.env,
                self.work,
                cfgs.config_file,
                cfgs.registry.model_name,
                cfgs.serve.endpoint,
                self.store_url,
                catalog,
                cfgs.registry.tracking_uri,
            )
            self.users = LiveTraffic(self.cluster, self.store_url, cfgs, state, self.work)
            entry.summary = (
                f"{len(known)} intents known at start, {len(held_back)} held back "
                f"({', '.join(held_back[:6])}{', ...' if len(held_back) > 6 else ''}); "
                f"seed set {len(plan.seed)} rows, traffic pool {len(plan.pool)}, test set {len(plan.test)}"
            )

    def first_model(self) -> None:
        state, cfgs = self.state, self.cfgs
        with self.stage("first-model", "Train, gate and register a first model on the known intents") as entry:
            got = train_gate_register(state.seed_csv, "seed set (known intents)", state, cfgs, self.work)
            if not got.passed:
                raise FlywheelError("the first model failed its gate: " + "; ".join(got.gate.reasons))
            v1 = state.first_version = got.version
            entry.summary = (
                f"v{v1}: accuracy {got.trained.metrics['accuracy']:.3f} on its own test split, "
                f"{got.offline.test_accuracy:.3f} on the full test set"
            )
        with self.stage("first-release", "Release it by pull request, promote it to champion, start serving") as entry:
            result, body = delivery.release_step(
                cfgs.loop.env, v1, cfgs.loop.canary_percent, self.repo.path, cfgs.registry, cfgs.delivery
            )
            self._merge("release", result, body)  # champion follows the merge (reconcile-registry)
            self.cluster.start_collector()
            self._sync()
            self.mark(f"v{v1} serves")
            entry.summary = f"release PR merged; v{v1} is champion and serves {self.cluster.predictor_url}"

    def traffic_and_drift(self) -> bool:
        """Users before and after the shift, then the drift check; True when drift was found (and a retrain
        pull request merged)."""
        state, loop_cfg = self.state, self.cfgs.loop
        with self.stage("traffic", "Simulated users talk to the model; then the traffic shifts") as entry:
            t0 = datetime.now(UTC)
            before = self.users.send(self._draw(loop_cfg.requests_before_shift, 0.0, 0), PHASE_BEFORE, 1)
            state.reference_window = self.users.window_since(t0, PHASE_BEFORE)
            self.mark("traffic shifts: new intents appear")
            t1 = datetime.now(UTC)
            shifted = self.users.send(
                self._draw(loop_cfg.requests_after_shift, loop_cfg.new_intent_share, 1), PHASE_SHIFTED, 2
            )
            state.current_window = self.users.window_since(t1, PHASE_SHIFTED)
            entry.summary = (
                f"{len(before)} requests (accuracy {before['correct'].mean():.3f}), then {len(shifted)} with "
                f"{loop_cfg.new_intent_share:.0%} new intents (accuracy {shifted['correct'].mean():.3f})"
            )
        with self.stage("drift", "Drift check on the shifted window; retrain pull request if drift") as entry:
            return self._drift(entry)

    def _drift(self, entry: StageEntry) -> bool:
        """``flywheel drift`` on the shifted window against the one before; if it drifted, a merged retrain request."""
        state, cfgs = self.state, self.cfgs
        result, md = drift_step(
            state.seed_csv,
            state.current_window,
            None,
            state.reference_window,
            cfgs.drift,
            cfgs.data,
            cfgs.registry,
            self.reports / "drift",
            self.work,
        )
        drift_file = self._write("drift", result, md)
        state.record.drift = DriftOutcome(
            drift=result.decision.drift, reasons=result.decision.reasons, html=result.evidently_html, markdown=md
        )
        if not result.decision.drift:
            entry.summary = "no drift found: nothing to retrain"
            return False
        self.mark("drift found")
        requested, body = delivery.request_retrain_step(drift_file, self.repo.path, cfgs.delivery)
        self._merge("retrain", requested, body, step="request-retrain")
        state.retrain_request = self.repo.path / requested["request_file"]
        entry.summary = f"drift: {'; '.join(result.decision.reasons[:2])}; retrain PR merged"
        return True

    def retrain(self, strategy: str | None = None, label_seed: int = 0) -> Candidate:
        """Export the requested window, label, prepare, check, train, gate and register if it passes."""
        state = self.state
        strategy = strategy or self.cfgs.loop.label_strategy
        tag = f"{strategy}-{label_seed}" if label_seed else strategy
        with self.stage("prepare", f"Export the requested window, label it ({strategy}), prepare and check") as entry:
            start, end = request_window(state.retrain_request)
            snapshot = self.users.export(start, end, f"retrain-{tag}")
            examples, rows = labelled_training_set(snapshot, strategy, tag, label_seed, state, self.cfgs, self.work)
            lab = state.record.labelling
            entry.summary = (
                f"{lab.queue_length} messages queued for review; {lab.labelled} labelled "
                f"({lab.wrong_labels} wrong, {lab.new_intent_labels} of held-back intents); {rows} training rows"
            )
        with self.stage("retrain", "Train a challenger, evaluate, gate against the champion, register") as entry:
            got = train_gate_register(examples, "prepared set, its test split", state, self.cfgs, self.work)
            if not got.passed:
                self.mark("gate rejected the challenger")
                entry.summary = "gate rejected: " + "; ".join(got.gate.reasons[:3])
                return got
            state.challenger = got.version
            self.mark(f"v{got.version} registered")
            entry.summary = (
                f"v{got.version} passed the gate; full test set accuracy {got.offline.test_accuracy:.3f} "
                f"(v{state.first_version}: {state.record.offline[0].test_accuracy:.3f})"
            )
            return got

    def canary(self) -> str:
        """Release the challenger on a canary, analyse after each batch of traffic, promote or roll back."""
        state, cfgs, loop_cfg = self.state, self.cfgs, self.cfgs.loop
        version = state.challenger
        with self.stage(
            "canary", f"Release v{version} on a {loop_cfg.canary_percent}% canary; analyse until it decides"
        ) as entry:
            result, body = delivery.release_step(
                loop_cfg.env, version, loop_cfg.canary_percent, self.repo.path, cfgs.registry, cfgs.delivery
            )
            self._merge("release", result, body)
            self._sync()
            self.mark(f"canary v{version} starts")
            outcome, analysis_file = self._analyse(datetime.now(UTC))
            state.record.canary = outcome
            if outcome.decision == "promote":
                result, body = delivery.promote_env_step(
                    loop_cfg.env, version, self.repo.path, cfgs.registry, cfgs.delivery, str(analysis_file)
                )
                self._merge("promote", result, body)
                self.mark(f"v{version} promoted")
            elif outcome.decision == "rollback":
                result, body = delivery.rollback_step(
                    loop_cfg.env, self.repo.path, cfgs.registry, cfgs.delivery, str(analysis_file)
                )
                self._merge("rollback", result, body)
                self.mark(f"v{version} rolled back")
            self._sync()
            entry.summary = f"{outcome.decision} after {len(outcome.looks)} look(s): {outcome.reasons[0]}"
            return outcome.decision

    def _analyse(self, canary_start: datetime) -> tuple[CanaryOutcome, Path]:
        """Traffic and a canary analysis per look, until it decides or ``max_looks`` is reached."""
        cfgs, loop_cfg = self.cfgs, self.cfgs.loop
        looks: list[CanaryLook] = []
        for look in range(1, loop_cfg.max_looks + 1):
            self.users.send(
                self._draw(loop_cfg.look_requests, loop_cfg.new_intent_share, 10 + look),
                f"canary-look-{look}",
                10 + look,
            )
            self.users.await_logger(canary_start)  # count every answer, however busy the machine
            analysis, md = delivery.canary_analysis_step(
                loop_cfg.env, None, "", self.repo.path, cfgs.canary, cfgs.delivery, store_url=self.store_url
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

    def after_release(self) -> None:
        loop_cfg = self.cfgs.loop
        with self.stage("after", "Traffic on the model that serves now") as entry:
            sent = self.users.send(
                self._draw(loop_cfg.requests_after_release, loop_cfg.new_intent_share, 99), PHASE_AFTER, 99
            )
            entry.summary = (
                f"{len(sent)} requests to v{self.cluster.running.stable.version}: accuracy {sent['correct'].mean():.3f}"
            )

    def finish(self) -> Path:
        """Write the traffic, the registry's state, ``loop.json`` and the report rendered from it."""
        record = self.state.record
        traffic_file = self.work / "traffic.parquet"
        frames = self.state.traffic
        sent = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TRAFFIC_COLUMNS)
        with replacing(traffic_file) as tmp:
            sent.to_parquet(tmp, index=False)
        record.traffic = str(traffic_file)
        record.registry = registry_state(self.cfgs.registry)
        record.git_repo = str(self.repo.path) if self.repo else None
        record.finished_at = datetime.now(UTC).isoformat()
        record.seconds = round(time.monotonic() - self.started, 1)
        loop_json = record.to_json()
        write_text(self.work / "loop.json", json.dumps(loop_json, indent=2, default=str) + "\n")
        return render_report(loop_json, self.work / "report.html")

    def close(self) -> None:
        if self.cluster:
            self.cluster.close()


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
