"""``flywheel prepare``: logged conversations + the current training set -> the next training set.

Steps, in order, each a function returning its data: ``read_inputs``; ``redact`` personal data
(before anything else touches the text); ``clean_inputs`` (each rule counts what it removed);
``label`` (human labels first and never overwritten; auto-labels only from confident,
non-fallback, thumbs-up answers; the rest of the interesting answers go to the review queue, in
turns from clusters of similar messages, the clusters also proposed as new intents:
``model.prepare.clusters``, ``model.prepare.discovery``);
``check_new_labels`` (cross-validated confident learning flags likely-wrong new labels: left out
until a second look confirms them, in the review queue's recheck section); ``balance_examples``
(per-intent cap on auto-labels, intents under the floor reported; entity types under theirs are
reported in the datasheet);
``split_examples`` (old examples keep their split; new human labels join test by the text-hash rule
with ``grow_test``, auto-labels never); and ``write_prepared``: a Parquet snapshot with its digest, a ``datasheet`` and
the review queue, all at once.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from data_checks.embeddings import Embedder
from data_checks.pii import Scanner
from model.core.config import DataConfig, PiiConfig, PrepareConfig, RegistryConfig
from model.core.errors import FlywheelError
from model.core.files import replacing
from model.core.steps import StepResult
from model.data.conversations import read_snapshot
from model.data.examples import assign_splits, dataset_digest, load_examples
from model.prepare.args import PrepareArgs
from model.prepare.balancing import balance_examples, split_examples
from model.prepare.cleaning import clean_inputs, exact_key
from model.prepare.clusters import POOLED, cluster_review, diverse_order, embed
from model.prepare.datasheet import datasheet, input_summary, labelling_summary, log_to_mlflow, render_datasheet
from model.prepare.discovery import candidate_summary, propose_intents, read_cluster_names, write_candidates
from model.prepare.entity_labels import types_of
from model.prepare.label_check import LabelCheck, check_new_labels
from model.prepare.labelling import Labelled, label
from model.prepare.recheck import second_look_texts, write_recheck
from model.prepare.review_queue import order_queue, read_labels, write_queue


@dataclass(frozen=True)
class Prepared:
    """The next training set: where it is, what went in and out, and what waits for a reviewer."""

    snapshot: str  # examples.parquet
    dataset_digest: str
    rows: int
    datasheet: str  # datasheet.json beside the snapshot
    mlflow_run_id: str | None  # with prepare.log_to_mlflow
    removed: dict[str, int]  # rows each cleaning rule removed
    pii_found: dict[str, dict]  # per input, personal data found and redacted, by type
    labelling: dict  # human and auto labels, the review queue's length, intents waiting for labels
    below_floor: dict[str, int]  # intent -> examples, for intents under the floor
    entity_types_below_floor: dict | None  # None for intent-only data
    capped: dict[str, int]  # intent -> auto-labels left out by the cap
    label_check: dict  # the cross-validated check of the new labels
    review_queue: dict[str, str]  # the review folder's files, by kind
    seconds: float


def prepare_command(
    args: PrepareArgs,
    *,
    data: DataConfig,
    prepare: PrepareConfig,
    pii: PiiConfig,
    registry: RegistryConfig,
    work: Path,
) -> StepResult[Prepared]:
    """Turn logged conversations into the next training set (redact, clean, label, balance, split)."""
    labels, out, names = (Path(p) if p else None for p in (args.labels, args.out, args.cluster_names))
    return StepResult(
        *prepare_step(
            Path(args.snapshot),
            Path(args.data),
            labels,
            out,
            data_cfg=data,
            prep_cfg=prepare,
            pii_cfg=pii,
            reg_cfg=registry,
            work=work,
            cluster_names=names,
        )
    )


def prepare_step(
    snapshot: Path,
    data: Path,
    labels: Path | None = None,
    out: Path | None = None,
    *,
    data_cfg: DataConfig,
    prep_cfg: PrepareConfig,
    pii_cfg: PiiConfig,
    reg_cfg: RegistryConfig,
    work: Path,
    cluster_names: Path | None = None,
) -> tuple[Prepared, str]:
    """The steps in order (module docstring); returns the step's outcome and its markdown (the datasheet).

    ``cluster_names``: a candidates CSV with names filled in (``model.prepare.discovery``)."""
    started = time.perf_counter()
    raw = read_inputs(snapshot, data, labels, data_cfg, prep_cfg, cluster_names)
    with_labels = labels is not None or cluster_names is not None
    inputs, pii_found = redact(raw, Scanner(pii_cfg), with_labels=with_labels)
    cleaned = clean_inputs(inputs.base, inputs.human, inputs.logs, prep_cfg)
    entity_types = inputs.entity_types | set(prep_cfg.new_entity_types)
    labelled = label(cleaned.base, cleaned.human, cleaned.logs, inputs.known_intents, prep_cfg, entity_types)
    queue, candidates = review_queue(labelled, prep_cfg, work)
    embed = Embedder(prep_cfg.label_check_encoder, work / "embeddings")  # loads the encoder only if called
    checked = check_new_labels(labelled, cleaned.human, embed, prep_cfg, data_cfg.oos_label)
    balanced = balance_examples(checked.kept, inputs.known_intents, data_cfg, prep_cfg)
    examples, overlaps = split_examples(balanced.examples, data_cfg, prep_cfg)
    removed = {**cleaned.removed, "overlaps_test_set": overlaps, "case_duplicates_in_training_set": cleaned.case_twins}
    digest = dataset_digest(examples)
    target = Path(out) if out else work / "datasets" / (time.strftime("%Y%m%d-%H%M%S-") + digest[:8])
    if target.exists():
        raise FlywheelError(f"{target}: already exists; refusing to overwrite a prepared snapshot")
    sheet = datasheet(
        examples,
        digest,
        inputs={
            **input_summary(snapshot, inputs.logs, data, len(cleaned.base), labels, len(cleaned.human)),
            "cluster_names": str(cluster_names) if cluster_names else None,
        },
        pii_found=pii_found,
        removed=removed,
        labelling={
            **labelling_summary(
                labelled,
                examples,
                exported=len(queue),
                cleaned_logs=len(cleaned.logs),
                known_intents=inputs.known_intents,
                waiting=balanced.waiting,
                oos_label=data_cfg.oos_label,
            ),
            **labelled.entity_summary(),
        },
        balancing=balanced.summary(prep_cfg),
        prep_cfg=prep_cfg,
        data_cfg=data_cfg,
    )
    sheet["new_intent_candidates"] = candidate_summary(candidates)
    sheet["label_check"] = checked.summary(prep_cfg)
    vocabulary = (sorted(inputs.known_intents | set(prep_cfg.new_intents)), labelled.entity_types)
    review, log_run = (queue, candidates, checked), prep_cfg.log_to_mlflow
    sheet, markdown = write_prepared(
        target, examples, sheet, review=review, vocabulary=vocabulary, log_run=log_run, reg_cfg=reg_cfg
    )
    result = Prepared(
        snapshot=str(target / "examples.parquet"),
        dataset_digest=digest,
        rows=len(examples),
        datasheet=str(target / "datasheet.json"),
        mlflow_run_id=sheet.get("mlflow_run_id"),
        removed=removed,
        pii_found=pii_found,
        labelling=sheet["labelling"],
        below_floor=balanced.below_floor,
        entity_types_below_floor=sheet["entities"]["below_floor"] if "entities" in sheet else None,
        capped=balanced.capped,
        label_check=sheet["label_check"],
        review_queue=sheet["review_queue"],
        seconds=round(time.perf_counter() - started, 1),
    )
    return result, f"Prepared `{target / 'examples.parquet'}`\n\n{markdown}"


@dataclass
class Inputs:
    base: pd.DataFrame  # the current training set, with its splits
    logs: pd.DataFrame  # the snapshot's events
    human: pd.DataFrame  # human labels (text, intent, entities); none without a labels file
    known_intents: set[str]  # the training set's intents, out-of-scope aside
    entity_types: set[str]  # the training set's entity types (none for intent-only data)


def read_inputs(
    snapshot: Path,
    data: Path,
    labels: Path | None,
    data_cfg: DataConfig,
    prep_cfg: PrepareConfig,
    cluster_names: Path | None = None,
) -> Inputs:
    """The training set (split by its texts as they are), the snapshot's events and the human labels
    (one by one from ``labels``; by cluster from ``cluster_names``, where ``labels`` has no label)."""
    base = assign_splits(load_examples(data, data_cfg), data_cfg)
    known_intents = set(base["intent"]) - {data_cfg.oos_label}
    logs = read_snapshot(snapshot)
    if logs.empty:
        raise FlywheelError(f"{snapshot}: snapshot holds no events (empty window); nothing to prepare")
    entity_types = types_of(base)
    human = pd.DataFrame(columns=["text", "intent", "entities"])
    if labels:
        allowed = known_intents | set(prep_cfg.new_intents) | {data_cfg.oos_label}
        human = read_labels(labels, allowed, entity_types | set(prep_cfg.new_entity_types))
        # a second look from the recheck section confirms its label; placed last, so it wins over the first look
        human = human.assign(second_look=human["text"].isin(second_look_texts(labels)))
        human = human.sort_values("second_look", kind="stable").reset_index(drop=True)
    if cluster_names:
        named = read_cluster_names(cluster_names).assign(second_look=False)
        named = named[~named["text"].map(exact_key).isin(set(human["text"].map(exact_key)))]
        human = pd.concat([human, named], ignore_index=True)
    return Inputs(base, logs, human, known_intents, entity_types)


def review_queue(labelled: Labelled, cfg: PrepareConfig, work: Path) -> tuple[pd.DataFrame, list[dict]]:
    """The review queue (clusters in turns, at most ``review_limit``) and the clusters as candidate intents.

    Only the first ``cluster_max_messages`` candidates (``order_queue``'s order, the ones clustered)
    are embedded; the rest follow pooled, as ``cluster_review`` pools them."""
    ordered = order_queue(labelled.review)
    head, rest = ordered.iloc[: cfg.cluster_max_messages], ordered.iloc[cfg.cluster_max_messages :]
    vectors = embed(list(head["text"]), cfg, work) if cfg.review_encoder and len(head) else None
    clustered, vectors = cluster_review(head, vectors, cfg)
    clustered = pd.concat([clustered, rest.assign(cluster=POOLED)], ignore_index=True)
    candidates = propose_intents(clustered, vectors, cfg, labelled.entity_types)
    return diverse_order(clustered, cfg).head(cfg.review_limit), candidates


def redact(inputs: Inputs, scanner: Scanner, *, with_labels: bool) -> tuple[Inputs, dict[str, dict]]:
    """Every input's texts with personal data replaced by placeholders, and what was found in each."""
    frames = {"training_set": inputs.base, "snapshot": inputs.logs}
    if with_labels:
        frames["labels"] = inputs.human
    pii_found: dict[str, dict] = {}
    for source, frame in frames.items():
        texts, found = scanner.redact_many(frame["text"])
        frames[source], pii_found[source] = frame.assign(text=texts), dict(found)
    redacted = dataclasses.replace(
        inputs, base=frames["training_set"], logs=frames["snapshot"], human=frames.get("labels", inputs.human)
    )
    return redacted, pii_found


def write_prepared(
    target: Path,
    examples: pd.DataFrame,
    sheet: dict,
    *,
    review: tuple[pd.DataFrame, list[dict], LabelCheck],
    vocabulary: tuple[list[str], list[str]],
    log_run: bool,
    reg_cfg: RegistryConfig,
) -> tuple[dict, str]:
    """Write the snapshot, review queue and datasheet to a temporary folder and move it to ``target``.

    ``review``: the review queue, the candidate new intents and the label check, whose flagged rows
    are the queue's recheck section; ``vocabulary``: the intents and entity types the review queue offers.

    Returns the datasheet as written (with the review queue's files and the MLflow run) and its markdown.
    """
    with replacing(target) as tmp:
        tmp.mkdir()
        examples.to_parquet(tmp / "examples.parquet", index=False)
        queue, candidates, checked = review
        written = {**write_queue(queue, tmp / "review", *vocabulary), **write_candidates(candidates, tmp / "review")}
        written |= write_recheck(checked.flagged, tmp / "review", vocabulary[1])
        sheet = {**sheet, "review_queue": {k: str(target / "review" / Path(v).name) for k, v in written.items()}}
        markdown = render_datasheet(sheet)
        if log_run:
            sheet["mlflow_run_id"] = log_to_mlflow(examples, target, sheet, markdown, reg_cfg)
        (tmp / "datasheet.json").write_text(json.dumps(sheet, indent=2, default=str) + "\n")
        (tmp / "DATASHEET.md").write_text(markdown)
    return sheet, markdown
