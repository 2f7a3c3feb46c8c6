"""Making a model inside the loop, with the real steps: a logged window becomes a labelled training set
(checked, queued for review, labelled by the simulated reviewer within budget, prepared, checked again;
how many held-back intents the candidate new intents found is recorded with the labelling),
and a training set becomes a candidate (trained, gated against the champion, registered if it passed,
scored on the full test set). Each returns its outcome; the stage that called it records it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from data_checks.validate import check_data
from model.artifact.predictor import IntentPredictor
from model.core.config import LoopConfig, PrepareConfig
from model.core.errors import FlywheelError
from model.core.reports import write_reports
from model.data.conversations import read_snapshot
from model.evaluate.evaluation import evaluate
from model.evaluate.steps import gate_step
from model.loop import annotator
from model.loop.configs import LoopConfigs
from model.loop.record import GateOutcome, Labelling, OfflineScore
from model.loop.world import World
from model.prepare.discovery import discovery_figures
from model.prepare.entity_labels import types_of
from model.prepare.steps import Prepared, prepare_step
from model.registry.steps import register_step
from model.train.steps import Trained, train_step

NOT_REGISTERED = "not registered (gate rejected)"


@dataclass
class Candidate:
    """A model trained in the loop: the train step's result, the gate's verdict, its offline score."""

    trained: Trained
    gate: GateOutcome
    offline: OfflineScore
    version: int | None  # registered version; None when the gate rejected it

    @property
    def passed(self) -> bool:
        return self.gate.passed


@dataclass
class LabelledSet:
    """A training set made from a logged window: where it is, its rows, and what the reviewer did."""

    examples: Path
    rows: int
    labelling: Labelling


def train_gate_register(data: Path, note: str, world: World, cfgs: LoopConfigs, work: Path) -> Candidate:
    """Train on ``data``, evaluate on the full test set, gate against the champion, register if passed."""
    reports = work / "reports"
    trained, md = train_step(data, cfgs.data, cfgs.train, cfgs.registry, work)
    write_reports(reports, "train", trained, md)
    gated = gate_step(
        trained.artifact, "auto", data, "test", data_cfg=cfgs.data, gate_cfg=cfgs.gate, reg_cfg=cfgs.registry
    )
    gate_file = write_reports(reports, "gate", gated, gated.markdown)
    test = world.plan.test
    scores = evaluate(IntentPredictor.load(Path(trained.artifact)), test, cfgs.data.oos_label)
    version = None
    if gated.passed:
        registered, reg_md = register_step(Path(trained.artifact), gate_file, cfgs.registry)
        write_reports(reports, "register", registered, reg_md)
        version = registered.version
    offline = OfflineScore(
        test_accuracy=scores.accuracy,
        macro_f1=scores.macro_f1,
        test_set=f"{len(test)} test rows of all {len(world.intents.known_at_start + world.intents.held_back)} intents",
        model_version=NOT_REGISTERED if version is None else str(version),
    )
    return Candidate(trained=trained, gate=GateOutcome(result=gated, data=note), offline=offline, version=version)


def labelled_training_set(snapshot: Path, strategy: str, world: World, cfgs: LoopConfigs, work: Path) -> LabelledSet:
    """The training set made from the logged window ``snapshot`` and the reviewer's labels (``strategy``)."""
    loop_cfg, reports, plan, users = cfgs.loop, work / "reports", world.plan, world.users
    known, held_back = world.intents.known_at_start, world.intents.held_back
    _check_or_refuse("the exported window", prep_cfg=cfgs.prepare, cfgs=cfgs, reports=reports, events=snapshot)
    # the held-back intents, and entity types only they use, are new to the seed set: declared, not typos
    new_types = sorted(types_of(plan.pool) - types_of(plan.seed))
    prep_cfg = dataclasses.replace(cfgs.prepare, new_intents=list(held_back), new_entity_types=new_types)
    # the review queue alone first (nothing logged to MLflow, no labels to check): what the reviewer is handed
    queue_cfg = dataclasses.replace(prep_cfg, log_to_mlflow=False, label_check=False)
    datasets, labels_dir = work / "datasets", work / "labels"
    queue_run, _ = _prepare(
        snapshot, None, datasets / f"queue-{strategy}", world, prep_cfg=queue_cfg, cfgs=cfgs, work=work
    )
    queue = pd.read_csv(queue_run.review_queue["csv"], dtype={"request_id": str, "conversation_id": str})
    found = discovery_figures(queue_run.review_queue["new_intent_candidates_json"], users.truth, set(held_back))
    seed = loop_cfg.seed  # the reviewer's picks (random strategy) and mistakes
    intents = sorted(set(known) | set(held_back)) + [cfgs.data.oos_label]
    names, clusters = _named_clusters(
        queue_run, strategy, intents, truth=users.truth, seed=seed, loop_cfg=loop_cfg,
        path=labels_dir / f"{strategy}-clusters.csv",
    )  # fmt: skip
    # the named clusters' messages are labelled already: the one-by-one labels go to the rest
    unnamed = queue[~queue["text"].isin(clusters.pop("named_texts", []))]
    budget = loop_cfg.label_budget - clusters.get("clusters_judged", 0)
    items = annotator.pick(unnamed, read_snapshot(snapshot), budget, strategy, seed)
    entities = annotator.true_entities(users.sent, plan.pool)
    labelled, stats = annotator.label(items, users.truth, intents, loop_cfg.annotator_error_rate, seed, entities)
    labels = annotator.write_labels(labelled, labels_dir / f"{strategy}.csv")
    prepared, prep_md = _prepare(
        snapshot, labels, datasets / f"retrain-{strategy}", world,
        prep_cfg=prep_cfg, cfgs=cfgs, work=work, cluster_names=names,
    )  # fmt: skip
    write_reports(reports, "prepare", prepared, prep_md)
    examples = Path(prepared.snapshot)
    _check_or_refuse(
        "the prepared training set", prep_cfg=prep_cfg, cfgs=cfgs, reports=reports,
        training=examples, reference=world.seed_csv,
    )  # fmt: skip
    labelling = Labelling(
        strategy=strategy,
        budget=loop_cfg.label_budget,
        queue_length=len(queue),
        **stats,
        new_intent_labels=int(labelled["intent"].isin(held_back).sum()),
        new_intents_waiting_for_labels=prepared.labelling["new_intents_waiting_for_labels"],
        discovery=found,
        **clusters,
        label_check=prepared.label_check,
        label_check_score=_recheck_score(prepared, labelled, users.truth),
    )
    return LabelledSet(examples=examples, rows=prepared.rows, labelling=labelling)


def _named_clusters(
    queue_run: Prepared,
    strategy: str,
    intents: list[str],
    *,
    truth: dict[str, str],
    seed: int,
    loop_cfg: LoopConfig,
    path: Path,
) -> tuple[Path | None, dict]:
    """With ``cluster_decisions`` and the queue strategy, the candidates CSV the reviewer named (and what
    that cost and labelled: ``annotator.name_clusters``); else nothing."""
    decisions = min(loop_cfg.cluster_decisions, loop_cfg.label_budget)
    if strategy != "queue" or decisions <= 0:
        return None, {}
    files = queue_run.review_queue
    table = pd.read_csv(files["new_intent_candidates"], dtype=str, keep_default_na=False)
    candidates = json.loads(Path(files["new_intent_candidates_json"]).read_text())
    named, stats = annotator.name_clusters(
        table, candidates, truth, intents, decisions=decisions, error_rate=loop_cfg.annotator_error_rate, seed=seed
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    named.to_csv(path, index=False)
    return path, stats


def _recheck_score(prepared: Prepared, labelled: pd.DataFrame, truth: dict[str, str]) -> dict:
    """``annotator.recheck_score`` of the reviewer's labels against the human rows prepare flagged."""
    recheck = pd.read_csv(prepared.review_queue["recheck_csv"], dtype=str, keep_default_na=False)
    flagged = recheck.loc[recheck["source"] == "human", "text"].tolist()
    true = [truth[r] for r in labelled["request_id"]]
    return annotator.recheck_score(flagged, labelled["text"].tolist(), labelled["intent"].tolist(), true)


def _prepare(
    snapshot: Path,
    labels: Path | None,
    out: Path,
    world: World,
    *,
    prep_cfg: PrepareConfig,
    cfgs: LoopConfigs,
    work: Path,
    cluster_names: Path | None = None,
) -> tuple[Prepared, str]:
    """``flywheel prepare`` on the window and the seed set, into ``out``."""
    return prepare_step(
        snapshot,
        world.seed_csv,
        labels,
        out,
        data_cfg=cfgs.data,
        prep_cfg=prep_cfg,
        pii_cfg=cfgs.pii,
        reg_cfg=cfgs.registry,
        work=work,
        cluster_names=cluster_names,
    )


def _check_or_refuse(
    what: str,
    *,
    prep_cfg: PrepareConfig,
    cfgs: LoopConfigs,
    reports: Path,
    events: Path | None = None,
    training: Path | None = None,
    reference: Path | None = None,
) -> None:
    """``flywheel check-data``; the loop stops where a real pipeline would."""
    docs = reports / "data-docs"
    _, md, ok = check_data(
        events, training, reference, data_cfg=cfgs.data, prep_cfg=prep_cfg, cfg=cfgs.checks, docs_dir=docs
    )
    if not ok:
        raise FlywheelError(f"check-data refused {what} {events or training}:\n{md}")
