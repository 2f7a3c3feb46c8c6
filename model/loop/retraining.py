"""Making a model inside the loop, with the real steps: a logged window becomes a labelled training set
(checked, queued for review, labelled by the simulated reviewer within budget, prepared, checked again;
how many held-back intents the candidate new intents found is recorded with the labelling),
and a training set becomes a candidate (trained, gated against the champion, registered if it passed,
scored on the full test set). Each fills its section of the loop record.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from data_checks.validate import check_data
from model.artifact.predictor import IntentPredictor
from model.core.config import PrepareConfig
from model.core.errors import FlywheelError
from model.core.reports import write_reports
from model.data.conversations import read_snapshot
from model.evaluate.evaluation import evaluate
from model.evaluate.steps import gate_step
from model.loop import annotator
from model.loop.configs import LoopConfigs
from model.loop.record import GateOutcome, Labelling, LoopState, OfflineScore
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


def train_gate_register(data: Path, note: str, state: LoopState, cfgs: LoopConfigs, work: Path) -> Candidate:
    """Train on ``data``, evaluate on the full test set, gate against the champion, register if passed."""
    reports = work / "reports"
    trained, md = train_step(data, cfgs.data, cfgs.train, cfgs.registry, work)
    write_reports(reports, "train", trained, md)
    gated, gate_md, passed = gate_step(trained.artifact, "auto", data, "test", cfgs.data, cfgs.gate, cfgs.registry)
    gate_file = write_reports(reports, "gate", gated, gate_md)
    gate = state.record.gate = GateOutcome(step_result=gated, markdown=gate_md, data=note)
    test = state.plan.test
    scores = evaluate(IntentPredictor.load(Path(trained.artifact)), test, cfgs.data.oos_label)
    version = None
    if passed:
        registered, reg_md = register_step(Path(trained.artifact), gate_file, cfgs.registry)
        write_reports(reports, "register", registered, reg_md)
        version = registered.version
    offline = OfflineScore(
        test_accuracy=scores["accuracy"],
        macro_f1=scores["macro_f1"],
        test_set=f"{len(test)} test rows of all {len(state.known) + len(state.held_back)} intents",
        model_version=NOT_REGISTERED if version is None else str(version),
    )
    state.record.offline.append(offline)
    return Candidate(trained=trained, gate=gate, offline=offline, version=version)


def labelled_training_set(
    snapshot: Path, strategy: str, tag: str, label_seed: int, state: LoopState, cfgs: LoopConfigs, work: Path
) -> tuple[Path, int]:
    """The training set made from the logged window ``snapshot`` and the reviewer's labels: (its path, rows)."""
    loop_cfg, reports = cfgs.loop, work / "reports"
    _check_or_refuse(snapshot, None, None, cfgs.prepare, cfgs, reports, "the exported window")
    # the held-back intents, and entity types only they use, are new to the seed set: declared, not typos
    new_types = sorted(types_of(state.plan.pool) - types_of(state.plan.seed))
    prep_cfg = dataclasses.replace(cfgs.prepare, new_intents=list(state.held_back), new_entity_types=new_types)
    # the review queue alone first (nothing logged to MLflow, no labels to check): what the reviewer is handed
    queue_cfg = dataclasses.replace(prep_cfg, log_to_mlflow=False, label_check=False)
    queue_run, _ = _prepare(snapshot, None, "queue", tag, queue_cfg, state, cfgs, work)
    queue = pd.read_csv(queue_run.review_queue["csv"], dtype={"request_id": str, "conversation_id": str})
    found = discovery_figures(queue_run.review_queue["new_intent_candidates_json"], state.truth, set(state.held_back))
    seed = loop_cfg.seed + label_seed
    intents = sorted(set(state.known) | set(state.held_back)) + [cfgs.data.oos_label]
    names, clusters = _named_clusters(
        queue_run, strategy, intents, seed, state, cfgs, work / "labels" / f"{tag}-clusters.csv"
    )
    # the named clusters' messages are labelled already: the one-by-one labels go to the rest
    unnamed = queue[~queue["text"].isin(clusters.pop("named_texts", []))]
    budget = loop_cfg.label_budget - clusters.get("clusters_judged", 0)
    items = annotator.pick(unnamed, read_snapshot(snapshot), budget, strategy, seed)
    entities = annotator.true_entities(state.traffic, state.plan.pool)
    labelled, stats = annotator.label(items, state.truth, intents, loop_cfg.annotator_error_rate, seed, entities)
    labels = annotator.write_labels(labelled, work / "labels" / f"{tag}.csv")
    prepared, prep_md = _prepare(snapshot, labels, "retrain", tag, prep_cfg, state, cfgs, work, names)
    write_reports(reports, "prepare", prepared, prep_md)
    examples = Path(prepared.snapshot)
    _check_or_refuse(None, examples, state.seed_csv, prep_cfg, cfgs, reports, "the prepared training set")
    state.record.labelling = Labelling(
        strategy=strategy,
        budget=loop_cfg.label_budget,
        queue_length=len(queue),
        **stats,
        new_intent_labels=int(labelled["intent"].isin(state.held_back).sum()),
        new_intents_waiting_for_labels=prepared.labelling["new_intents_waiting_for_labels"],
        discovery=found,
        **clusters,
        label_check=prepared.label_check,
        label_check_score=_recheck_score(prepared, labelled, state),
    )
    return examples, prepared.rows


def _named_clusters(
    queue_run: Prepared, strategy: str, intents: list[str], seed: int, state: LoopState, cfgs: LoopConfigs, path: Path
) -> tuple[Path | None, dict]:
    """With ``cluster_decisions`` and the queue strategy, the candidates CSV the reviewer named (and what
    that cost and labelled: ``annotator.name_clusters``); else nothing."""
    decisions = min(cfgs.loop.cluster_decisions, cfgs.loop.label_budget)
    if strategy != "queue" or decisions <= 0:
        return None, {}
    files = queue_run.review_queue
    table = pd.read_csv(files["new_intent_candidates"], dtype=str, keep_default_na=False)
    candidates = json.loads(Path(files["new_intent_candidates_json"]).read_text())
    error_rate = cfgs.loop.annotator_error_rate
    named, stats = annotator.name_clusters(table, candidates, state.truth, intents, decisions, error_rate, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    named.to_csv(path, index=False)
    return path, stats


def _recheck_score(prepared: Prepared, labelled: pd.DataFrame, state: LoopState) -> dict:
    """``annotator.recheck_score`` of the reviewer's labels against the human rows prepare flagged."""
    recheck = pd.read_csv(prepared.review_queue["recheck_csv"], dtype=str, keep_default_na=False)
    flagged = recheck.loc[recheck["source"] == "human", "text"].tolist()
    true = [state.truth[r] for r in labelled["request_id"]]
    return annotator.recheck_score(flagged, labelled["text"].tolist(), labelled["intent"].tolist(), true)


def _prepare(
    snapshot: Path,
    labels: Path | None,
    kind: str,
    tag: str,
    prep_cfg: PrepareConfig,
    state: LoopState,
    cfgs: LoopConfigs,
    work: Path,
    cluster_names: Path | None = None,
) -> tuple[Prepared, str]:
    """``flywheel prepare`` on the window and the seed set, into ``datasets/<kind>-<tag>``."""
    out = work / "datasets" / f"{kind}-{tag}"
    return prepare_step(
        snapshot,
        state.seed_csv,
        labels,
        out,
        cfgs.data,
        prep_cfg,
        cfgs.pii,
        cfgs.registry,
        work,
        cluster_names=cluster_names,
    )


def _check_or_refuse(
    events: Path | None,
    training: Path | None,
    reference: Path | None,
    prep_cfg: PrepareConfig,
    cfgs: LoopConfigs,
    reports: Path,
    what: str,
) -> None:
    """``flywheel check-data``; the loop stops where a real pipeline would."""
    _, md, ok = check_data(events, training, reference, cfgs.data, prep_cfg, cfgs.checks, reports / "data-docs")
    if not ok:
        raise FlywheelError(f"check-data refused {what} {events or training}:\n{md}")
