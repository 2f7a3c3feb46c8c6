"""The datasheet of a prepared training set: what went in, what each step removed, labelled and
capped, the candidate new intents, and what came out (per intent, and per entity type where the examples have spans), as
``datasheet.json``, as ``DATASHEET.md`` and, with ``log_to_mlflow``, as a ``prepare`` run whose
input is the snapshot (tagged with the digest that training runs carry)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from model.artifact.manifest import sha256_file
from model.core.config import DataConfig, PrepareConfig, RegistryConfig
from model.data.entities import load_spans
from model.prepare.labelling import Labelled


def input_summary(
    snapshot: Path, logs: pd.DataFrame, data: Path, training_rows: int, labels: Path | None, human_labels: int
) -> dict:
    """The datasheet's ``inputs`` section: the snapshot (digest, window, model versions), training set, labels."""
    return {
        "snapshot": str(snapshot),
        "snapshot_sha256": sha256_file(snapshot),
        "events": len(logs),
        "window": [str(logs["timestamp"].min()), str(logs["timestamp"].max())],
        "model_versions": sorted(map(str, logs["model_version"].unique())),
        "training_set": str(data),
        "training_rows": training_rows,
        "labels": str(labels) if labels else None,
        "human_labels": human_labels,
    }


def labelling_summary(
    labelled: Labelled,
    examples: pd.DataFrame,
    *,
    exported: int,
    cleaned_logs: int,
    known_intents: set[str],
    waiting: dict[str, int],
    oos_label: str,
) -> dict:
    """The datasheet's ``labelling`` section: where labels came from, what was queued, new intents."""
    return {
        "auto_labelled": len(labelled.auto),
        "auto_labels_over_limit": labelled.auto_over_limit,
        "human_new": len(labelled.new_human),
        "human_relabelled": labelled.relabelled,
        "human_conflicts_kept": labelled.conflicts,
        "review_candidates": len(labelled.review),
        "review_exported": exported,
        "unused_unrated_or_unsure": int(
            cleaned_logs - len(labelled.auto) - labelled.auto_over_limit - len(labelled.review)
        ),
        "new_intents": sorted(set(examples["intent"]) - known_intents - {oos_label}),
        "new_intents_waiting_for_labels": waiting,
    }


def entity_summary(examples: pd.DataFrame, floor: int) -> dict:
    """The datasheet's ``entities`` section: spans per type and split, and the types under ``floor``
    (reported, not dropped, as intents under theirs). Empty for examples without spans."""
    counts: dict[str, dict[str, int]] = {}
    cells = examples["entities"] if "entities" in examples.columns else []
    for cell, split in zip(cells, examples["split"]):
        for span in load_spans(cell):
            by_split = counts.setdefault(span["type"], {})
            by_split[split] = by_split.get(split, 0) + 1
    if not counts:
        return {}
    totals = {kind: sum(by_split.values()) for kind, by_split in sorted(counts.items())}
    return {
        "floor": floor,
        "by_type_and_split": {kind: dict(sorted(counts[kind].items())) for kind in totals},
        "below_floor": {kind: n for kind, n in totals.items() if n < floor},
    }


def datasheet(
    examples: pd.DataFrame,
    digest: str,
    *,
    inputs: dict,
    pii_found: dict[str, dict],
    removed: dict[str, int],
    labelling: dict,
    balancing: dict,
    prep_cfg: PrepareConfig,
    data_cfg: DataConfig,
) -> dict:
    entities = entity_summary(examples, prep_cfg.entity_floor)
    return {
        "dataset_digest": digest,
        "rows": len(examples),
        "inputs": inputs,
        "pii_found": pii_found,
        "removed": removed,
        "labelling": labelling,
        "balancing": balancing,
        "counts": {
            "by_intent_and_source": _nested(examples.groupby(["intent", "source"]).size()),
            "by_split": {k: int(v) for k, v in examples["split"].value_counts().items()},
            "by_intent_and_split": _nested(examples.groupby(["intent", "split"]).size()),
        },
        **({"entities": entities} if entities else {}),  # intent-only data: the datasheet as it always was
        "conversation_ids": int((examples["conversation_id"] != "").sum()),
        "config": {"prepare": dataclasses.asdict(prep_cfg), "data": dataclasses.asdict(data_cfg)},
    }


def _nested(series: pd.Series) -> dict:
    out: dict = {}
    for (a, b), n in series.items():
        out.setdefault(a, {})[b] = int(n)
    return out


def log_to_mlflow(df: pd.DataFrame, target: Path, sheet: dict, markdown: str, reg_cfg: RegistryConfig) -> str:
    """A ``prepare`` run whose input is the snapshot (digest tag = the one training runs carry)."""
    # MLflow takes seconds to import and a run with log_to_mlflow off never needs it.
    import mlflow

    from model.registry import store, tracking

    store.connect(reg_cfg)
    with mlflow.start_run(run_name=f"prepare-{sheet['dataset_digest'][:8]}") as run:
        mlflow.set_tags(
            {
                "flywheel_step": "prepare",
                "dataset_digest": sheet["dataset_digest"],
                "snapshot_sha256": sheet["inputs"]["snapshot_sha256"],
                "git_sha": tracking.git_sha(),
            }
        )
        ds = mlflow.data.from_pandas(
            df, source=str(target / "examples.parquet"), name="prepared-intents", digest=sheet["dataset_digest"][:32]
        )
        mlflow.log_input(ds, context="prepared")
        mlflow.log_metrics(
            {
                "rows": len(df),
                "auto_labelled": sheet["labelling"]["auto_labelled"],
                "review_candidates": sheet["labelling"]["review_candidates"],
                "label_check_flagged": sum(sheet.get("label_check", {}).get("flagged", {}).values()),
                **{f"removed_{k}": v for k, v in sheet["removed"].items()},
                **{f"pii_{src}_{k}": v for src, c in sheet["pii_found"].items() for k, v in c.items()},
            }
        )
        # Which conversations the examples came from: the link from a model version back to its logs.
        ids = sorted(set(df["conversation_id"]) - {""})
        mlflow.log_text("\n".join(ids) + ("\n" if ids else ""), "conversation_ids.txt")
        mlflow.log_text(markdown, "DATASHEET.md")
        mlflow.log_dict({k: v for k, v in sheet.items() if k != "review_queue"}, "datasheet.json")
        return run.info.run_id


def render_datasheet(sheet: dict) -> str:
    lab, bal, inp = sheet["labelling"], sheet["balancing"], sheet["inputs"]
    lines = [
        f"## Datasheet: prepared training set `{sheet['dataset_digest'][:12]}`",
        "",
        f"{sheet['rows']} examples from {inp['training_rows']} existing + {inp['events']} logged events "
        f"({inp['window'][0]} to {inp['window'][1]}, model versions {', '.join(inp['model_versions'])}).",
        "",
        "| personal data redacted | "
        + " | ".join(f"{src}: {sum(c.values())}" for src, c in sheet["pii_found"].items())
        + " |",
        "|---|" + "---|" * len(sheet["pii_found"]),
        "",
        "| cleaning rule | removed |",
        "|---|---:|",
        *[f"| {rule} | {n} |" for rule, n in sheet["removed"].items()],
        "",
        f"Labelling: {lab['auto_labelled']} auto-labelled"
        + (
            f" ({lab['auto_labels_over_limit']} more trusted answers past auto_label_limit left out)"
            if lab.get("auto_labels_over_limit")
            else ""
        )
        + f", {lab['human_new']} new human labels, "
        f"{lab['human_relabelled']} relabelled by humans, "
        f"{lab['human_conflicts_kept']} conflicts with earlier human labels "
        f"(earlier kept), {lab['review_candidates']} to review ({lab['review_exported']} exported).",
        "",
    ]
    if sheet.get("label_check"):
        lines += render_label_check(sheet["label_check"])
    if lab["new_intents"]:
        lines += [f"New intents: {', '.join(lab['new_intents'])}", ""]
    if lab.get("new_intents_waiting_for_labels"):
        waiting = ", ".join(f"{k} ({v})" for k, v in lab["new_intents_waiting_for_labels"].items())
        lines += [f"**New intents left out until they have more labels** (labels so far): {waiting}", ""]
    if sheet.get("new_intent_candidates"):
        lines += [*render_candidates(sheet["new_intent_candidates"]), ""]
    if bal["below_floor"]:
        lines += [
            f"**Intents below the floor of {bal['floor']} examples** (kept; label more): "
            + ", ".join(f"{k} ({v})" for k, v in sorted(bal["below_floor"].items())),
            "",
        ]
    if bal["capped"]:
        lines += [
            f"Capped at {bal['cap']}: " + ", ".join(f"{k} (-{v} auto)" for k, v in sorted(bal["capped"].items())),
            "",
        ]
    lines += [
        "| intent | " + " | ".join(("seed", "human", "auto")) + " | train | val | test |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    by_src, by_split = sheet["counts"]["by_intent_and_source"], sheet["counts"]["by_intent_and_split"]
    for intent in sorted(by_src):
        s, p = by_src[intent], by_split.get(intent, {})
        lines.append(
            f"| {intent} | {s.get('seed', 0)} | {s.get('human', 0)} | {s.get('auto', 0)} | "
            f"{p.get('train', 0)} | {p.get('val', 0)} | {p.get('test', 0)} |"
        )
    if sheet.get("entities"):
        lines += ["", *render_entities(sheet["entities"])]
    return "\n".join(lines) + "\n"


SHOWN_CANDIDATES = 20  # rows of the datasheet's candidates table; the CSV has them all


def render_candidates(candidates: list[dict]) -> list[str]:
    """The datasheet's candidate new intents: the biggest uncertain clusters, one line each."""
    lines = [
        f"**Candidate new intents**: {len(candidates)} clusters of messages the model did not handle. To name "
        "one, write its name in `review/new_intent_candidates.csv` (column `name`) and pass the file to "
        "`flywheel prepare --cluster-names`: all its messages get that intent.",
        "",
        "| cluster | suggested name | messages | traffic | the model said | a typical message |",
        "|---:|---|---:|---:|---|---|",
    ]
    for c in candidates[:SHOWN_CANDIDATES]:
        said = ", ".join(f"{k} {v:.0%}" for k, v in c["model_said"].items())
        typical = c["typical_messages"][0].replace("|", "\\|") if c["typical_messages"] else ""
        lines.append(
            f"| {c['cluster']} | {c['suggested_name']} | {c['messages']} | {c['traffic']} | {said} | {typical} |"
        )
    if len(candidates) > SHOWN_CANDIDATES:
        lines.append(f"\n({len(candidates) - SHOWN_CANDIDATES} more in the CSV)")
    return lines


def render_entities(section: dict) -> list[str]:
    """The datasheet's entity lines: types under the floor, then spans per type and split."""
    lines = []
    if section["below_floor"]:
        lines += [
            f"**Entity types below the floor of {section['floor']} spans** (kept; annotate more): "
            + ", ".join(f"{k} ({v})" for k, v in section["below_floor"].items()),
            "",
        ]
    lines += ["| entity type | spans | train | val | test |", "|---|---:|---:|---:|---:|"]
    for kind, p in section["by_type_and_split"].items():
        lines.append(f"| {kind} | {sum(p.values())} | {p.get('train', 0)} | {p.get('val', 0)} | {p.get('test', 0)} |")
    return lines


def render_label_check(section: dict) -> list[str]:
    """The datasheet's label-check line: what was flagged per source, or why nothing was checked."""
    if not section["enabled"]:
        return ["Label check: off.", ""]
    if section["skipped"]:
        lines = [f"Label check: not run ({section['skipped']})."]
    else:
        checked = sum(section["checked"].values())
        flagged = sum(section["flagged"].values())
        flags = section["flagged"]
        per_source = ", ".join(f"{src} {flags.get(src, 0)} of {n}" for src, n in section["checked"].items())
        lines = [
            f"Label check ({section['method']}, {section['folds']} folds): "
            f"**{flagged} of {checked} new labels flagged** ({per_source}), "
            "left out until a second look confirms them (review/recheck.csv)."
        ]
    if section["confirmed_kept"]:
        lines.append(f"{section['confirmed_kept']} labels confirmed by a second look kept unchecked.")
    if section["unchecked_intents"]:
        lines.append(
            "Intents too small to check: " + ", ".join(f"{k} ({v})" for k, v in section["unchecked_intents"].items())
        )
    return [" ".join(lines), ""]
