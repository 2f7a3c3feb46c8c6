"""``flywheel prepare``: logged conversations + the current training set -> the next training set.

Steps, in order: redact personal data (before anything else touches the text), clean (each rule
counts what it removed), label (human labels first and never overwritten; auto-labels only from
confident, non-fallback, thumbs-up answers; the rest of the interesting answers go to the review
queue), balance (per-intent cap on auto-labels, intents under the floor reported), split (old
examples keep their split, new ones never enter the frozen test set unless ``grow_test``), and
write a Parquet snapshot with its digest, a datasheet and the review queue, all at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from model.artifact.manifest import sha256_file
from model.core.config import SAMPLE_DATA, DataConfig, PiiConfig, PrepareConfig, RegistryConfig, required, setting
from model.core.errors import FlywheelError
from model.core.files import replacing
from model.core.steps import StepResult
from model.data.conversations import read_snapshot
from model.data.examples import COLUMNS, assign_splits, dataset_digest, load_examples
from model.prepare.cleaning import clean, exact_key, near_key, normalise
from model.prepare.review_queue import read_labels, write_queue


def needs_review(logs: pd.DataFrame) -> pd.Series:
    """Answers a human should look at: the user or the bot said it went wrong."""
    return (logs["thumbs"] == "down") | logs["escalated"] | logs["abandoned"] | logs["fallback"]


def review_reasons(row) -> str:
    reasons = [
        name
        for name, hit in (
            ("thumbs_down", row.thumbs == "down"),
            ("escalated", row.escalated),
            ("abandoned", row.abandoned),
            ("fallback", row.fallback),
        )
        if hit
    ]
    return ";".join(reasons)


def may_auto_label(logs: pd.DataFrame, known_intents: set[str], cfg: PrepareConfig) -> pd.Series:
    return (
        ~needs_review(logs)
        & (logs["thumbs"] == "up")
        & (logs["confidence"] >= cfg.auto_label_min_confidence)
        & logs["predicted_intent"].isin(known_intents)
    )


def order_queue(queue: pd.DataFrame) -> pd.DataFrame:
    """Most worth labelling first: least confident (to the hundredth), then most frequent."""
    return (
        queue.assign(_conf=queue["confidence"].round(2))
        .sort_values(["_conf", "traffic", "text"], ascending=[True, False, True], kind="stable")
        .drop(columns="_conf")
        .reset_index(drop=True)
    )


def _stable_rank(texts: pd.Series) -> pd.Series:
    return texts.map(lambda t: hashlib.sha256(t.encode()).hexdigest())


def balance(df: pd.DataFrame, cfg: PrepareConfig, oos_label: str) -> tuple[pd.DataFrame, dict, dict]:
    """Cap each intent by leaving out auto-labels (never human, seed or test rows); report those under the floor."""
    counts = df.loc[df["intent"] != oos_label, "intent"].value_counts()
    capped: dict[str, int] = {}
    drop_idx: list = []
    for intent, n in counts.items():
        if n <= cfg.intent_cap:
            continue
        candidates = df[(df["intent"] == intent) & (df["source"] == "auto") & (df["split"] != "test")]
        excess = min(n - cfg.intent_cap, len(candidates))
        if excess:
            order = _stable_rank(candidates["text"]).sort_values().index[:excess]
            drop_idx.extend(order)
            capped[intent] = int(excess)
    df = df.drop(index=drop_idx)
    counts = df.loc[df["intent"] != oos_label, "intent"].value_counts()
    below = {k: int(v) for k, v in counts.items() if v < cfg.intent_floor}
    return df, capped, below


def hold_back_thin_new_intents(df: pd.DataFrame, known: set[str], cfg: DataConfig) -> tuple[pd.DataFrame, dict]:
    """Leave out new intents with fewer than ``min_examples_per_intent`` labels: too few to split and learn.

    Their labels stay in the labels file; a later run with more labels takes them in. Returns the kept
    rows and ``{intent: labels so far}`` for the datasheet.
    """
    counts = df.loc[~df["intent"].isin(known | {cfg.oos_label}), "intent"].value_counts()
    waiting = {k: int(v) for k, v in counts.items() if v < cfg.min_examples_per_intent}
    return df[~df["intent"].isin(waiting)].reset_index(drop=True), dict(sorted(waiting.items()))


@dataclass
class PrepareArgs:
    snapshot: str = required(
        "conversation snapshot (Parquet, the collector's export; schema in model/data/conversations.py)"
    )
    data: str = setting(str(SAMPLE_DATA), "current training set (any format `train` reads)")
    labels: str | None = setting(
        None, "human labels to merge: Label Studio JSON export or the review CSV with 'intent' filled in"
    )
    out: str | None = setting(
        None, "folder to create for the prepared snapshot (unset: <work dir>/datasets/<time>-<digest>)"
    )


def prepare_command(
    args: PrepareArgs,
    *,
    data: DataConfig,
    prepare: PrepareConfig,
    pii: PiiConfig,
    registry: RegistryConfig,
    work: Path,
) -> StepResult:
    """Turn logged conversations into the next training set (redact, clean, label, balance, split)."""
    labels, out = (Path(p) if p else None for p in (args.labels, args.out))
    return StepResult(
        *prepare_step(Path(args.snapshot), Path(args.data), labels, out, data, prepare, pii, registry, work)
    )


def prepare_step(
    snapshot: Path,
    data: Path,
    labels: Path | None,
    out: Path | None,
    data_cfg: DataConfig,
    prep_cfg: PrepareConfig,
    pii_cfg: PiiConfig,
    reg_cfg: RegistryConfig,
    work: Path,
) -> tuple[dict, str]:
    from data_checks.pii import Scanner  # Presidio is heavy: load it when the step runs

    started = time.perf_counter()
    scanner = Scanner(pii_cfg)
    pii_found: dict[str, dict] = {}

    # 1. Inputs, redacted before anything else reads them.
    base = assign_splits(load_examples(data, data_cfg), data_cfg)
    base["text"], found = scanner.redact_many(base["text"])
    pii_found["training_set"] = dict(found)
    base["text"] = base["text"].map(normalise)
    known_intents = set(base["intent"]) - {data_cfg.oos_label}

    logs = read_snapshot(snapshot)
    if logs.empty:
        raise FlywheelError(f"{snapshot}: snapshot holds no events (empty window); nothing to prepare")
    logs["text"], found = scanner.redact_many(logs["text"])
    pii_found["snapshot"] = dict(found)
    events = len(logs)

    human = pd.DataFrame(columns=["text", "intent"])
    if labels:
        allowed = known_intents | set(prep_cfg.new_intents) | {data_cfg.oos_label}
        human = read_labels(labels, allowed)
        human["text"], found = scanner.redact_many(human["text"])
        pii_found["labels"] = dict(found)
        human["text"] = human["text"].map(normalise)
        human = human.drop_duplicates(subset="text", keep="last")

    # 2. Clean the logged messages; a repeated message keeps its review-worthy copy, else the latest.
    logs["_review"] = needs_review(logs)
    logs = logs.sort_values(["_review", "timestamp"], ascending=[False, False], kind="stable")
    kept, removed = clean(
        logs,
        min_letters=prep_cfg.min_letters,
        min_chars=prep_cfg.min_chars,
        max_chars=prep_cfg.max_chars,
        known_texts=set(base["text"].map(exact_key)),
        known_near=set(base["text"].map(near_key)),
    )

    # 3. Labels. Human labels: replace seed/auto labels, never an earlier human one.
    # texts that differ only in case are one example: keep the first (they would otherwise straddle splits)
    case_twins = base["text"].map(exact_key).duplicated()
    removed_case_twins = int(case_twins.sum())
    base = base[~case_twins].reset_index(drop=True)
    human_keys = dict(zip(human["text"].map(exact_key), human["intent"]))
    base_keys = base["text"].map(exact_key)
    relabel = base_keys.isin(human_keys) & (base["source"] != "human")
    conflicts = int(
        (base_keys.isin(human_keys) & (base["source"] == "human") & (base_keys.map(human_keys) != base["intent"])).sum()
    )
    relabelled = int((relabel & (base_keys.map(human_keys) != base["intent"])).sum())
    base.loc[relabel, "intent"] = base_keys[relabel].map(human_keys)
    base.loc[relabel, "source"] = "human"
    conv_of = dict(zip(kept["text"].map(exact_key), kept["conversation_id"]))
    new_human = human[~human["text"].map(exact_key).isin(set(base_keys))].copy()
    new_human = new_human.assign(
        source="human", split="", conversation_id=new_human["text"].map(exact_key).map(conv_of).fillna("")
    )
    kept_keys = kept["text"].map(exact_key)
    auto_mask = may_auto_label(kept, known_intents, prep_cfg) & ~kept_keys.isin(human_keys)
    auto = kept[auto_mask].assign(intent=kept.loc[auto_mask, "predicted_intent"], source="auto", split="")
    queue_mask = kept["_review"] & ~kept_keys.isin(human_keys)
    queue_all = kept[queue_mask].copy()
    queue_all["reasons"] = [review_reasons(r) for r in queue_all.itertuples(index=False)]
    queue = order_queue(queue_all).head(prep_cfg.review_limit)

    # 4. Assemble, balance, split.
    combined = pd.concat([base[COLUMNS], new_human[COLUMNS], auto[COLUMNS]], ignore_index=True)
    combined, capped, below_floor = balance(combined, prep_cfg, data_cfg.oos_label)
    combined, waiting = hold_back_thin_new_intents(combined, known_intents, data_cfg)
    below_floor = {k: v for k, v in below_floor.items() if k not in waiting}
    split_cfg = data_cfg if prep_cfg.grow_test else dataclasses.replace(data_cfg, test_fraction=0.0)
    combined = assign_splits(combined.reset_index(drop=True), split_cfg)
    test_keys = set(combined.loc[combined["split"] == "test", "text"].map(exact_key))
    overlap = (combined["split"] != "test") & combined["text"].map(exact_key).isin(test_keys)
    removed["overlaps_test_set"] = int(overlap.sum())
    removed["case_duplicates_in_training_set"] = removed_case_twins
    combined = combined[~overlap].reset_index(drop=True)
    digest = dataset_digest(combined)

    # 5. Datasheet and files, written to a temporary folder and moved into place at the end.
    target = Path(out) if out else work / "datasets" / (time.strftime("%Y%m%d-%H%M%S-") + digest[:8])
    if target.exists():
        raise FlywheelError(f"{target}: already exists; refusing to overwrite a prepared snapshot")
    sheet = {
        "dataset_digest": digest,
        "rows": len(combined),
        "inputs": {
            "snapshot": str(snapshot),
            "snapshot_sha256": sha256_file(snapshot),
            "events": events,
            "window": [str(logs["timestamp"].min()), str(logs["timestamp"].max())],
            "model_versions": sorted(map(str, logs["model_version"].unique())),
            "training_set": str(data),
            "training_rows": len(base),
            "labels": str(labels) if labels else None,
            "human_labels": len(human),
        },
        "pii_found": pii_found,
        "removed": removed,
        "labelling": {
            "auto_labelled": len(auto),
            "human_new": len(new_human),
            "human_relabelled": relabelled,
            "human_conflicts_kept": conflicts,
            "review_candidates": len(queue_all),
            "review_exported": len(queue),
            "unused_unrated_or_unsure": int(len(kept) - len(auto) - len(queue_all)),
            "new_intents": sorted(set(combined["intent"]) - known_intents - {data_cfg.oos_label}),
            "new_intents_waiting_for_labels": waiting,
        },
        "balancing": {
            "floor": prep_cfg.intent_floor,
            "cap": prep_cfg.intent_cap,
            "capped": capped,
            "below_floor": below_floor,
        },
        "counts": {
            "by_intent_and_source": _nested(combined.groupby(["intent", "source"]).size()),
            "by_split": {k: int(v) for k, v in combined["split"].value_counts().items()},
            "by_intent_and_split": _nested(combined.groupby(["intent", "split"]).size()),
        },
        "conversation_ids": int((combined["conversation_id"] != "").sum()),
        "config": {"prepare": dataclasses.asdict(prep_cfg), "data": dataclasses.asdict(data_cfg)},
    }
    with replacing(target) as tmp:
        tmp.mkdir()
        combined.to_parquet(tmp / "examples.parquet", index=False)
        sheet["review_queue"] = {
            k: str(target / "review" / Path(v).name)
            for k, v in write_queue(queue, tmp / "review", sorted(known_intents | set(prep_cfg.new_intents))).items()
        }
        markdown = render_datasheet(sheet)
        if prep_cfg.log_to_mlflow:
            sheet["mlflow_run_id"] = _log_to_mlflow(combined, tmp, target, sheet, markdown, reg_cfg)
        (tmp / "datasheet.json").write_text(json.dumps(sheet, indent=2, default=str) + "\n")
        (tmp / "DATASHEET.md").write_text(markdown)
    result = {
        "snapshot": str(target / "examples.parquet"),
        "dataset_digest": digest,
        "rows": len(combined),
        "datasheet": str(target / "datasheet.json"),
        "mlflow_run_id": sheet.get("mlflow_run_id"),
        "removed": removed,
        "pii_found": pii_found,
        "labelling": sheet["labelling"],
        "below_floor": below_floor,
        "capped": capped,
        "review_queue": sheet["review_queue"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    return result, f"Prepared `{target / 'examples.parquet'}`\n\n{markdown}"


def _nested(series: pd.Series) -> dict:
    out: dict = {}
    for (a, b), n in series.items():
        out.setdefault(a, {})[b] = int(n)
    return out


def _log_to_mlflow(
    df: pd.DataFrame, folder: Path, target: Path, sheet: dict, markdown: str, reg_cfg: RegistryConfig
) -> str:
    """A ``prepare`` run whose input is the snapshot (digest tag = the one training runs carry)."""
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
        f"Labelling: {lab['auto_labelled']} auto-labelled, {lab['human_new']} new human labels, "
        f"{lab['human_relabelled']} relabelled by humans, "
        f"{lab['human_conflicts_kept']} conflicts with earlier human labels "
        f"(earlier kept), {lab['review_candidates']} to review ({lab['review_exported']} exported).",
        "",
    ]
    if lab["new_intents"]:
        lines += [f"New intents: {', '.join(lab['new_intents'])}", ""]
    if lab.get("new_intents_waiting_for_labels"):
        waiting = ", ".join(f"{k} ({v})" for k, v in lab["new_intents_waiting_for_labels"].items())
        lines += [f"**New intents left out until they have more labels** (labels so far): {waiting}", ""]
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
    return "\n".join(lines) + "\n"
