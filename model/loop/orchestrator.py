"""The closed loop on one machine: log → drift → retrain → canary → promote, every step the real one.

``run_loop`` turns the flywheel once on a labelled dataset, with the stand-ins of ``model.loop.stand_in``
for GitHub (a local Git repository) and for Argo CD + KServe (``flywheel serve`` and ``flywheel
collect`` on loopback), simulated users (``model.loop.traffic``) and a simulated reviewer
(``model.loop.annotator``):

1. a first model learns part of the intents; it is gated, registered, released by pull request
   (merged into the stand-in repository) and promoted to ``champion``;
2. users talk to it; part-way through, they start asking for intents it never learned;
3. ``flywheel drift`` compares the two windows and a retrain pull request is opened and merged;
4. the window is exported, checked and prepared; the reviewer labels the review queue within a
   budget; the new training set is checked; a challenger is trained, evaluated, gated, registered;
5. a release pull request puts it on a canary; traffic is split as the manifest says; canary
   analysis looks after every batch of traffic until it decides; a promote or rollback pull
   request follows and is merged;
6. ``loop.json`` records everything and ``report.html`` shows it (``model.loop.report``).

Each stage is a method of ``Loop``, so tests and the benchmark can run part of the loop.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from model.core.config import (
    SAMPLE_DATA,
    CanaryConfig,
    CheckConfig,
    DataConfig,
    DeliveryConfig,
    DriftConfig,
    GateConfig,
    LoopConfig,
    PiiConfig,
    PrepareConfig,
    RegistryConfig,
    ServeConfig,
    TrafficConfig,
    TrainConfig,
    setting,
)
from model.core.errors import FlywheelError
from model.core.files import replacing, write_text
from model.core.reports import write_reports
from model.core.settings import load_config
from model.core.steps import StepResult
from model.loop.stand_in import LocalCluster, StandInRepo
from model.registry import store

PHASE_BEFORE, PHASE_SHIFTED, PHASE_AFTER = "before-shift", "shifted", "after-release"
LOGGER_DEADLINE_S = 120  # far above the logger's delay on a loaded 2-core machine: past it, something is down


@dataclass
class LoopConfigs:
    """Every section the loop's steps read (the CLI fills them from the YAML file and flags)."""

    loop: LoopConfig
    data: DataConfig
    train: TrainConfig
    gate: GateConfig
    registry: RegistryConfig
    canary: CanaryConfig
    delivery: DeliveryConfig
    pii: PiiConfig
    prepare: PrepareConfig
    checks: CheckConfig
    drift: DriftConfig
    serve: ServeConfig
    traffic: TrafficConfig
    config_file: Path = field(default=Path())


def load_configs(config_file: Path, loop_cfg: LoopConfig, work: Path) -> LoopConfigs:
    """Every section from the YAML file (the one the servers are started with too); ``loop`` as given.

    The loop keeps everything in ``work``: its own MLflow store and conversation store, never the
    ones ``MLFLOW_TRACKING_URI`` or the config name."""
    sections = {f.name for f in dataclasses.fields(LoopConfigs)} - {"loop", "config_file"}
    loaded = {name: load_config(name, config_file) for name in sections}
    loaded["registry"] = dataclasses.replace(loaded["registry"], tracking_uri=f"sqlite:///{Path(work) / 'mlflow.db'}")
    return LoopConfigs(loop=loop_cfg, config_file=Path(config_file).resolve(), **loaded)


@contextmanager
def without_github():
    """The stand-in repository is local: a GITHUB_TOKEN in the environment must not send pull requests to GitHub."""
    saved = os.environ.pop("GITHUB_TOKEN", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["GITHUB_TOKEN"] = saved


def split_intents(df: pd.DataFrame, cfg: LoopConfig, oos_label: str) -> tuple[list[str], list[str]]:
    """(known at start, held back): named ones, else a seeded draw of ``held_back_fraction`` of the intents."""
    intents = sorted(set(df["intent"]) - {oos_label})
    if cfg.held_back_intents:
        unknown = sorted(set(cfg.held_back_intents) - set(intents))
        if unknown:
            raise FlywheelError(f"loop.held_back_intents names intents not in the dataset: {', '.join(unknown)}")
        held = sorted(cfg.held_back_intents)
    else:
        if not 0 < cfg.held_back_fraction < 1:
            raise FlywheelError(f"loop.held_back_fraction must be between 0 and 1, got {cfg.held_back_fraction}")
        n = max(1, round(len(intents) * cfg.held_back_fraction))
        held = sorted(np.random.default_rng(cfg.seed).choice(intents, size=n, replace=False).tolist())
    known = [i for i in intents if i not in held]
    if len(known) < 2:
        raise FlywheelError(f"only {len(known)} intent(s) left for the first model; hold back fewer")
    return known, held


def plan_data(df: pd.DataFrame, known: list[str], cfg: LoopConfig, oos_label: str) -> dict[str, pd.DataFrame]:
    """Seed training set, traffic pool and full test set from one split dataset.

    The first model sees ``seed_fraction`` of the known intents' training texts (plus all their
    validation and test texts, so its gate has a test set); the other training texts, of every
    intent, are what users will send. The test split of every intent measures each model offline.
    """
    if not 0 < cfg.seed_fraction < 1:
        raise FlywheelError(f"loop.seed_fraction must be between 0 and 1, got {cfg.seed_fraction}")
    rng = np.random.default_rng(cfg.seed)
    is_known = df["intent"].isin(known)
    train = df[df["split"] == "train"]
    seed_train = (
        train[train["intent"].isin(known)]
        .groupby("intent", group_keys=False)[list(df.columns)]
        .apply(lambda g: g.sample(frac=cfg.seed_fraction, random_state=int(rng.integers(2**31))))
    )
    seed = pd.concat([seed_train, df[df["split"].isin(["val", "test"]) & (is_known | (df["intent"] == oos_label))]])
    pool = df[(df["split"] == "train") & ~df.index.isin(seed_train.index)]
    oos_pool = df[(df["intent"] == oos_label) & (df["split"] == "val")]  # oos texts never train a class
    return {
        "seed": seed.sort_index().reset_index(drop=True),
        "pool": pd.concat([pool, oos_pool]).reset_index(drop=True),
        "test": df[df["split"] == "test"].reset_index(drop=True),
    }


def draw_traffic(pool: pd.DataFrame, n: int, held_back: list[str], new_share: float, seed: int) -> pd.DataFrame:
    """``n`` user messages from the pool (users repeat themselves: with replacement); ``new_share`` of them
    ask for held-back intents."""
    rng = np.random.default_rng(seed)
    new = pool[pool["intent"].isin(held_back)]
    old = pool[~pool["intent"].isin(held_back)]
    n_new = int(round(n * new_share)) if len(new) else 0
    if n - n_new and old.empty:
        raise FlywheelError("the traffic pool has no messages of the known intents")
    parts = [old.iloc[rng.integers(len(old), size=n - n_new)]]
    if n_new:
        parts.append(new.iloc[rng.integers(len(new), size=n_new)])
    drawn = pd.concat(parts)
    return drawn.iloc[rng.permutation(len(drawn))][["text", "intent"]].reset_index(drop=True)


def response_catalog(base: Path, intents: list[str], out: Path) -> Path:
    """The configured catalog if it covers the dataset's intents, else a copy with a placeholder reply for the rest."""
    raw = yaml.safe_load(Path(base).read_text())
    missing = [i for i in intents if i not in raw.get("intents", {})]
    if not missing:
        return Path(base)
    raw["intents"].update({i: f"(Reply for '{i}': write it in your response catalog.)" for i in missing})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(raw, sort_keys=True, allow_unicode=True))
    return out


def registry_state(reg_cfg: RegistryConfig) -> dict:
    client = store.connect(reg_cfg)
    versions = []
    for mv in sorted(client.search_model_versions(f"name='{reg_cfg.model_name}'"), key=lambda v: int(v.version)):
        metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
        versions.append(
            {
                "version": int(mv.version),
                # search results leave aliases out; the version itself has them
                "aliases": sorted(client.get_model_version(reg_cfg.model_name, mv.version).aliases),
                "run_id": mv.run_id,
                "dataset_digest": mv.tags.get("dataset_digest", ""),
                "git_sha": mv.tags.get("git_sha", ""),
                "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(),
                "metrics": {k: v for k, v in sorted(metrics.items()) if "/" not in k},
            }
        )
    return {"tracking_uri": store.tracking_uri(reg_cfg), "model_name": reg_cfg.model_name, "versions": versions}


class Loop:
    """One turn of the flywheel in ``work``; stages run in order and fill ``self.record``."""

    def __init__(self, dataset: Path, work: Path, cfgs: LoopConfigs, progress=print):
        self.dataset, self.work, self.c, self.say = Path(dataset), Path(work), cfgs, progress
        self.reports = self.work / "reports"
        self.store_url = f"sqlite:///{self.work / 'conversations.db'}"
        self.started = time.monotonic()
        self.record: dict = {
            "dataset": str(self.dataset),
            "started_at": datetime.now(UTC).isoformat(),
            "stages": [],
            "events": [],
            "pull_requests": [],
            "offline": [],
            "drift": None,
            "gate": None,
            "canary": None,
            "labelling": None,
        }
        self.traffic: list[pd.DataFrame] = []
        self.repo: StandInRepo | None = None
        self.cluster: LocalCluster | None = None
        self.stage_no = 0

    # -- bookkeeping -------------------------------------------------------------------------------

    @contextmanager
    def stage(self, name: str, title: str):
        self.stage_no += 1
        began = time.monotonic()
        entry = {"name": name, "title": title, "status": "failed", "seconds": 0.0, "summary": ""}
        self.record["stages"].append(entry)
        self.say(f"[{self._clock()}] {self.stage_no}. {title} ...")
        try:
            yield entry
            entry["status"] = "done"
        finally:
            entry["seconds"] = round(time.monotonic() - began, 1)
            self.say(f"[{self._clock()}]    {entry['status']}: {entry['summary']} ({entry['seconds']} s)")

    def _clock(self) -> str:
        s = int(time.monotonic() - self.started)
        return f"{s // 60:02d}:{s % 60:02d}"

    def mark(self, label: str) -> None:
        self.record["events"].append({"time": datetime.now(UTC).isoformat(), "label": label})

    def _pull_request(self, kind: str, result: dict, body: str) -> dict:
        pr = result["pull_request"]
        commit = self.repo.merge(pr)
        entry = {
            "kind": kind,
            "title": body.splitlines()[0].lstrip("# ").strip(),
            "branch": pr["branch"],
            "commit": commit,
            "merged": True,
            "body": body,
        }
        self.record["pull_requests"].append(entry)
        return entry

    def _write(self, step: str, result: dict, md: str) -> Path:
        return write_reports(self.reports, step, result, md)

    # -- stages --------------------------------------------------------------------------------------

    def setup(self) -> None:
        from model.data.examples import assign_splits, load_examples

        with self.stage("setup", "Split the dataset; create the stand-in repository and cluster") as s:
            df = assign_splits(load_examples(self.dataset, self.c.data), self.c.data)
            oos = self.c.data.oos_label
            self.known, self.held_back = split_intents(df, self.c.loop, oos)
            self.data = plan_data(df, self.known, self.c.loop, oos)
            self.seed_csv = self.work / "data" / "seed.csv"
            self.seed_csv.parent.mkdir(parents=True, exist_ok=True)
            self.data["seed"].to_csv(self.seed_csv, index=False)
            self.truth: dict[str, str] = {}
            self.record["intents"] = {"known_at_start": self.known, "held_back": self.held_back}
            self.repo = StandInRepo.create(self.work / "gitops-repo", self.c.delivery.manifests_dir)
            catalog = response_catalog(
                Path(self.c.serve.catalog), sorted(set(df["intent"]) - {oos}), self.work / "responses.yaml"
            )
            self.cluster = LocalCluster(
                self.repo,
                self.c.loop.env,
                self.work,
                self.c.config_file,
                self.c.registry.model_name,
                self.c.serve.endpoint,
                self.store_url,
                catalog,
                self.c.registry.tracking_uri,
            )
            s["summary"] = (
                f"{len(self.known)} intents known at start, {len(self.held_back)} held back "
                f"({', '.join(self.held_back[:6])}{', ...' if len(self.held_back) > 6 else ''}); "
                f"seed set {len(self.data['seed'])} rows, traffic pool {len(self.data['pool'])}, "
                f"test set {len(self.data['test'])}"
            )

    def _train_gate_register(self, data: Path, split_note: str) -> dict | None:
        """Train on ``data``, evaluate on the full test set, gate against the champion, register if passed."""
        from model.evaluate.steps import gate_step
        from model.registry.steps import register_step
        from model.train.steps import train_step

        trained, md = train_step(data, self.c.data, self.c.train, self.c.registry, self.work)
        self._write("train", trained, md)
        gated, gate_md, passed = gate_step(
            trained["artifact"], "auto", data, "test", self.c.data, self.c.gate, self.c.registry
        )
        gate_file = self._write("gate", gated, gate_md)
        self.record["gate"] = {**gated, "markdown": gate_md, "data": split_note}
        offline = self._offline(trained["artifact"])
        if not passed:
            self.record["offline"].append({**offline, "model_version": "not registered (gate rejected)"})
            return {"trained": trained, "passed": False, "offline": offline, "gate": gated}
        registered, reg_md = register_step(Path(trained["artifact"]), gate_file, self.c.registry)
        self._write("register", registered, reg_md)
        self.record["offline"].append({**offline, "model_version": str(registered["version"])})
        return {"trained": trained, "passed": True, "version": registered["version"], "offline": offline}

    def _offline(self, artifact: str) -> dict:
        from model.artifact.predictor import IntentPredictor
        from model.evaluate.evaluation import evaluate

        report = evaluate(IntentPredictor.load(Path(artifact)), self.data["test"], self.c.data.oos_label)
        return {
            "test_accuracy": report["accuracy"],
            "macro_f1": report["macro_f1"],
            "test_set": f"{len(self.data['test'])} test rows of all {len(self.known) + len(self.held_back)} intents",
        }

    def first_model(self) -> None:
        from model.deploy import delivery
        from model.registry.steps import promote_step

        with self.stage("first-model", "Train, gate and register a first model on the known intents") as s:
            got = self._train_gate_register(self.seed_csv, "seed set (known intents)")
            if not got["passed"]:
                raise FlywheelError("the first model failed its gate: " + "; ".join(got["gate"]["reasons"]))
            self.v1 = got["version"]
            s["summary"] = (
                f"v{self.v1}: accuracy {got['trained']['metrics']['accuracy']:.3f} on its own test split, "
                f"{got['offline']['test_accuracy']:.3f} on the full test set"
            )
        with self.stage("first-release", "Release it by pull request, promote it to champion, start serving") as s:
            result, body = delivery.release_step(
                self.c.loop.env, self.v1, self.c.loop.canary_percent, self.repo.path, self.c.registry, self.c.delivery
            )
            self._write("release", result, body)
            self._pull_request("release", result, body)
            promoted, md = promote_step(self.v1, self.c.registry)
            self._write("promote", promoted, md)
            self.cluster.start_collector()
            self.cluster.sync()
            self.mark(f"v{self.v1} serves")
            s["summary"] = f"release PR merged; v{self.v1} is champion and serves {self.cluster.predictor_url}"

    def _send(self, examples: pd.DataFrame, phase: str, seed_offset: int) -> pd.DataFrame:
        from model.loop.traffic import simulate

        rollout = self.cluster.running
        percent = rollout.canary_percent if rollout.canary else None
        sent = simulate(
            examples,
            self.cluster.predictor_url,
            self.cluster.collector_url,
            self.c.serve.endpoint,
            percent,
            self.c.traffic,
            phase,
            oos_label=self.c.data.oos_label,
            seed_offset=seed_offset,
        )
        self.truth.update(zip(sent["request_id"], sent["true_intent"]))
        self.traffic.append(sent)
        return sent

    def _await_logger(self, start: datetime) -> None:
        """Return once the store holds every call answered since ``start``: the predictor's logger posts
        in the background, so what a step reads must not depend on how quickly it did (a busy machine)."""
        from model.collect.export import window_rows
        from model.collect.store import open_store

        expected = sum(int((t["status"] == 200).sum()) for t in self.traffic if t["time"].min() >= start)
        engine = open_store(self.store_url)
        try:
            deadline = time.monotonic() + LOGGER_DEADLINE_S
            while True:
                stored = len(window_rows(engine, start, datetime.now(UTC) + timedelta(seconds=1))[1])
                if stored >= expected:
                    return
                if time.monotonic() > deadline:
                    raise FlywheelError(
                        f"the collector stored {stored} of {expected} answered calls since {start.isoformat()} "
                        f"within {LOGGER_DEADLINE_S} s (see {self.work / 'logs'})"
                    )
                time.sleep(0.2)
        finally:
            engine.dispose()

    def _export(self, start: datetime, name: str) -> Path:
        """The window since ``start`` as a snapshot, once the logger has delivered every answered call."""
        from model.collect.export import export_window
        from model.collect.store import open_store

        self._await_logger(start)
        engine = open_store(self.store_url)
        try:
            info = export_window(
                engine, start, datetime.now(UTC) + timedelta(seconds=1), self.work / "snapshots" / f"{name}.parquet"
            )
        finally:
            engine.dispose()
        return Path(info["path"])

    def traffic_and_drift(self) -> bool:
        from data_checks.drift import drift_step
        from model.deploy import delivery

        L = self.c.loop
        with self.stage("traffic", "Simulated users talk to the model; then the traffic shifts") as s:
            t0 = datetime.now(UTC)
            before = self._send(
                draw_traffic(self.data["pool"], L.requests_before_shift, self.held_back, 0.0, L.seed), PHASE_BEFORE, 1
            )
            self.reference_window = self._export(t0, "before-shift")
            self.mark("traffic shifts: new intents appear")
            t1 = datetime.now(UTC)
            shifted_examples = draw_traffic(
                self.data["pool"], L.requests_after_shift, self.held_back, L.new_intent_share, L.seed + 1
            )
            shifted = self._send(shifted_examples, PHASE_SHIFTED, 2)
            self.current_window = self._export(t1, "shifted")
            s["summary"] = (
                f"{len(before)} requests (accuracy {before['correct'].mean():.3f}), then {len(shifted)} with "
                f"{L.new_intent_share:.0%} new intents (accuracy {shifted['correct'].mean():.3f})"
            )
        with self.stage("drift", "Drift check on the shifted window; retrain pull request if drift") as s:
            result, md = drift_step(
                self.seed_csv,
                self.current_window,
                None,
                self.reference_window,
                self.c.drift,
                self.c.data,
                self.c.registry,
                self.reports / "drift",
                self.work,
            )
            drift_file = self._write("drift", result, md)
            self.record["drift"] = {
                "drift": result["drift"],
                "reasons": result.get("reasons", []),
                "html": result.get("evidently_html"),
                "markdown": md,
            }
            if not result["drift"]:
                s["summary"] = "no drift found: nothing to retrain"
                return False
            self.mark("drift found")
            requested, body = delivery.request_retrain_step(drift_file, self.repo.path, self.c.delivery)
            self._write("request-retrain", requested, body)
            self._pull_request("retrain", requested, body)
            self.retrain_request = self.repo.path / requested["request_file"]
            s["summary"] = f"drift: {'; '.join(result['reasons'][:2])}; retrain PR merged"
            return True

    def retrain(self, strategy: str | None = None, label_seed: int = 0) -> dict:
        """Export the requested window, label, prepare, check, train, gate and register if it passes."""
        from data_checks.validate import check_data
        from model.collect.export import export_window, request_window
        from model.collect.store import open_store
        from model.data.conversations import read_snapshot
        from model.loop import annotator
        from model.prepare.steps import prepare_step

        L = self.c.loop
        strategy = strategy or L.label_strategy
        tag = f"{strategy}-{label_seed}" if label_seed else strategy
        with self.stage("prepare", f"Export the requested window, label it ({strategy}), prepare and check") as s:
            start, end = request_window(self.retrain_request)
            engine = open_store(self.store_url)
            try:
                snapshot = Path(
                    export_window(engine, start, end, self.work / "snapshots" / f"retrain-{tag}.parquet")["path"]
                )
            finally:
                engine.dispose()
            _, events_md, ok = check_data(
                snapshot, None, None, self.c.data, self.c.prepare, self.c.checks, self.reports / "data-docs"
            )
            if not ok:
                raise FlywheelError(f"check-data refused the exported window {snapshot}:\n{events_md}")
            intents = sorted(set(self.known) | set(self.held_back))
            prep_cfg = dataclasses.replace(self.c.prepare, new_intents=list(self.held_back))
            queue_run, _ = prepare_step(
                snapshot,
                self.seed_csv,
                None,
                self.work / "datasets" / f"queue-{tag}",
                self.c.data,
                dataclasses.replace(prep_cfg, log_to_mlflow=False),
                self.c.pii,
                self.c.registry,
                self.work,
            )
            queue = pd.read_csv(queue_run["review_queue"]["csv"], dtype={"request_id": str, "conversation_id": str})
            logged = read_snapshot(snapshot)
            items = annotator.pick(queue, logged, L.label_budget, strategy, L.seed + label_seed)
            labelled, stats = annotator.label(
                items, self.truth, intents + [self.c.data.oos_label], L.annotator_error_rate, L.seed + label_seed
            )
            labels = annotator.write_labels(labelled, self.work / "labels" / f"{tag}.csv")
            prepared, prep_md = prepare_step(
                snapshot,
                self.seed_csv,
                labels,
                self.work / "datasets" / f"retrain-{tag}",
                self.c.data,
                prep_cfg,
                self.c.pii,
                self.c.registry,
                self.work,
            )
            self._write("prepare", prepared, prep_md)
            examples = Path(prepared["snapshot"])
            _, train_md, ok = check_data(
                None, examples, self.seed_csv, self.c.data, prep_cfg, self.c.checks, self.reports / "data-docs"
            )
            if not ok:
                raise FlywheelError(f"check-data refused the prepared training set {examples}:\n{train_md}")
            self.record["labelling"] = {
                "strategy": strategy,
                "budget": L.label_budget,
                "queue_length": len(queue),
                **stats,
                "new_intent_labels": int(labelled["intent"].isin(self.held_back).sum()),
                "new_intents_waiting_for_labels": prepared["labelling"]["new_intents_waiting_for_labels"],
            }
            s["summary"] = (
                f"{len(queue)} messages queued for review; {stats['labelled']} labelled "
                f"({stats['wrong_labels']} wrong, {self.record['labelling']['new_intent_labels']} of held-back "
                f"intents); {prepared['rows']} training rows"
            )
        with self.stage("retrain", "Train a challenger, evaluate, gate against the champion, register") as s:
            got = self._train_gate_register(examples, "prepared set, its test split")
            if not got["passed"]:
                self.mark("gate rejected the challenger")
                s["summary"] = "gate rejected: " + "; ".join(got["gate"]["reasons"][:3])
                return got
            self.challenger = got["version"]
            self.mark(f"v{self.challenger} registered")
            s["summary"] = (
                f"v{self.challenger} passed the gate; full test set accuracy "
                f"{got['offline']['test_accuracy']:.3f} (v{self.v1}: {self.record['offline'][0]['test_accuracy']:.3f})"
            )
            return got

    def canary(self) -> str:
        from model.deploy import delivery

        L = self.c.loop
        with self.stage(
            "canary", f"Release v{self.challenger} on a {L.canary_percent}% canary; analyse until it decides"
        ) as s:
            result, body = delivery.release_step(
                L.env, self.challenger, L.canary_percent, self.repo.path, self.c.registry, self.c.delivery
            )
            self._write("release", result, body)
            self._pull_request("release", result, body)
            self.cluster.sync()
            self.mark(f"canary v{self.challenger} starts")
            canary_start = datetime.now(UTC)
            looks, decision = [], "hold"
            for look in range(1, L.max_looks + 1):
                examples = draw_traffic(
                    self.data["pool"], L.look_requests, self.held_back, L.new_intent_share, L.seed + 10 + look
                )
                self._send(examples, f"canary-look-{look}", 10 + look)
                self._await_logger(canary_start)  # count every answer, however busy the machine
                analysis, md = delivery.canary_analysis_step(
                    L.env, None, "", self.repo.path, self.c.canary, self.c.delivery, store_url=self.store_url
                )
                analysis_file = self._write("canary-analysis", analysis, md)
                looks.append({"look": look, "decision": analysis["decision"], **analysis["arms"]})
                decision = analysis["decision"]
                self.say(f"           look {look}: {decision} ({'; '.join(analysis['reasons'])[:160]})")
                if decision in ("promote", "rollback"):
                    break
            self.record["canary"] = {
                "decision": decision,
                "reasons": analysis["reasons"],
                "markdown": md,
                "looks": looks,
            }
            if decision == "promote":
                result, body = delivery.promote_env_step(
                    L.env, self.challenger, self.repo.path, self.c.registry, self.c.delivery, str(analysis_file)
                )
                self._write("promote", result, body)
                self._pull_request("promote", result, body)
                self.mark(f"v{self.challenger} promoted")
            elif decision == "rollback":
                result, body = delivery.rollback_step(
                    L.env, self.repo.path, self.c.registry, self.c.delivery, str(analysis_file)
                )
                self._write("rollback", result, body)
                self._pull_request("rollback", result, body)
                self.mark(f"v{self.challenger} rolled back")
            self.cluster.sync()
            s["summary"] = f"{decision} after {len(looks)} look(s): {analysis['reasons'][0]}"
            return decision

    def after_release(self) -> None:
        L = self.c.loop
        with self.stage("after", "Traffic on the model that serves now") as s:
            sent = self._send(
                draw_traffic(
                    self.data["pool"], L.requests_after_release, self.held_back, L.new_intent_share, L.seed + 99
                ),
                PHASE_AFTER,
                99,
            )
            s["summary"] = (
                f"{len(sent)} requests to v{self.cluster.running.stable.version}: accuracy {sent['correct'].mean():.3f}"
            )

    def finish(self) -> Path:
        from model.loop.report import render_report
        from model.loop.traffic import COLUMNS as TRAFFIC_COLUMNS

        traffic_file = self.work / "traffic.parquet"
        sent = pd.concat(self.traffic, ignore_index=True) if self.traffic else pd.DataFrame(columns=TRAFFIC_COLUMNS)
        with replacing(traffic_file) as tmp:
            sent.to_parquet(tmp, index=False)
        self.record["traffic"] = str(traffic_file)
        self.record["registry"] = registry_state(self.c.registry)
        self.record["git_repo"] = str(self.repo.path) if self.repo else None
        self.record["finished_at"] = datetime.now(UTC).isoformat()
        self.record["seconds"] = round(time.monotonic() - self.started, 1)
        write_text(self.work / "loop.json", json.dumps(self.record, indent=2, default=str) + "\n")
        return render_report(self.record, self.work / "report.html")

    def close(self) -> None:
        if self.cluster:
            self.cluster.close()


def summarise(record: dict, report: Path) -> tuple[dict, str]:
    """The CLI's JSON result and markdown: the outcome of each stage and where everything is."""
    stages = {
        s["name"]: {"status": s["status"], "seconds": s["seconds"], "summary": s["summary"]} for s in record["stages"]
    }
    canary = record.get("canary") or {}
    result = {
        "report": str(report),
        "loop_record": str(Path(report).with_name("loop.json")),
        "git_repo": record.get("git_repo"),
        "seconds": record.get("seconds"),
        "drift": (record.get("drift") or {}).get("drift"),
        "gate_passed": (record.get("gate") or {}).get("passed"),
        "canary_decision": canary.get("decision"),
        "offline": record.get("offline"),
        "stages": stages,
    }
    rows = "\n".join(f"| {s['title']} | {s['status']} | {s['seconds']} | {s['summary']} |" for s in record["stages"])
    md = (
        "## One turn of the loop\n\n| stage | status | seconds | outcome |\n|---|---|---:|---|\n"
        f"{rows}\n\nReport: `{report}`; stand-in repository: `{record.get('git_repo')}` (`git log` shows the "
        "merged pull requests).\n"
    )
    return result, md


@dataclass
class DemoArgs:
    dataset: str = setting(
        str(SAMPLE_DATA), "labelled dataset the loop replays as users (any format `train` reads, e.g. Banking77)"
    )
    out: str | None = setting(None, "new folder for everything the loop makes (unset: <work dir>/loop/<time>)")


def demo_command(args: DemoArgs, *, loop: LoopConfig, config_file: Path, work: Path) -> StepResult:
    """Turn the whole loop once on one machine: serve, log, drift, retrain, canary, promote; ends in an HTML report.

    Every other section comes from ``config_file`` (the servers the loop starts read the same file)."""
    out = Path(args.out) if args.out else work / "loop" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    cfgs = load_configs(config_file, loop, out)
    record, report = run_loop(
        Path(args.dataset), out, cfgs, progress=lambda line: print(line, file=sys.stderr, flush=True)
    )
    return StepResult(*summarise(record, report))


def run_loop(dataset: Path, work: Path, cfgs: LoopConfigs, progress=print) -> tuple[dict, Path]:
    """One whole turn; the report is written even when a stage fails (then the error is raised)."""
    work = Path(work).resolve()
    if work.exists() and any(work.iterdir()):
        raise FlywheelError(f"{work}: not empty; each loop run starts in a new folder")
    work.mkdir(parents=True, exist_ok=True)
    with without_github():
        loop = Loop(dataset, work, cfgs, progress)
        try:
            loop.setup()
            loop.first_model()
            if loop.traffic_and_drift() and loop.retrain()["passed"]:
                loop.canary()
                loop.after_release()
        except BaseException:
            loop.close()
            try:  # a failed loop still leaves its record and report; the stage's own error is the one raised
                progress(f"[{loop._clock()}] report of the failed loop: {loop.finish()}")
            except Exception as exc:
                progress(f"[{loop._clock()}] could not write the report: {exc}")
            raise
        loop.close()
        report = loop.finish()
        progress(f"[{loop._clock()}] report: {report}")
    return loop.record, report
