"""Load labelled utterances from the formats users have, check them, split them, digest them.

Every loader returns one DataFrame with the training-example contract of DESIGN.md:
``text``, ``intent``, ``source`` (seed/human/auto), ``conversation_id`` (may be empty) and
``split`` (train/val/test, or empty where the file has none; ``assign_splits`` fills it).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from model.core.config import DataConfig
from model.core.errors import FlywheelError
from model.data.readers import TABLE_SUFFIXES, read_json, read_table

COLUMNS = ["text", "intent", "source", "conversation_id", "split"]
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "dev": "val", "test": "test"}


def load_examples(path: str | Path, cfg: DataConfig | None = None) -> pd.DataFrame:
    """Read a dataset file or folder, normalise its columns and validate it.

    Accepted: the project's format (CSV/Parquet/JSONL with ``text,intent``), Banking77 CSV
    (``text,category``), CLINC150 JSON (``data_full.json``), or a folder holding ``train.*`` and
    ``test.*`` (and optionally ``val.*``) files in any of those table formats.
    """
    cfg = cfg or DataConfig()
    path = Path(path)
    if not path.exists():
        raise FlywheelError(f"{path}: no such file or folder")
    if path.is_dir():
        frames = []
        for split in ("train", "val", "validation", "test"):
            for suffix in TABLE_SUFFIXES:
                part = path / f"{split}{suffix}"
                if part.exists():
                    df = _read_example_table(part)
                    df["split"] = _SPLIT_ALIASES[split]
                    frames.append(df)
        if not frames:
            raise FlywheelError(f"{path}: folder holds no train/val/test file ({', '.join(TABLE_SUFFIXES)})")
        df = pd.concat(frames, ignore_index=True)
    elif path.suffix == ".json":
        df = _read_clinc(path)
    elif path.suffix in TABLE_SUFFIXES:
        df = _read_example_table(path)
    else:
        raise FlywheelError(f"{path}: unsupported format '{path.suffix}' (use CSV, Parquet, JSONL or CLINC150 JSON)")
    return validate_examples(df, path, cfg)


def _read_example_table(path: Path) -> pd.DataFrame:
    """A table with ``text`` and ``intent`` columns (Banking77's ``category`` is its ``intent``)."""
    df = read_table(path)
    if "intent" not in df.columns and "category" in df.columns:  # Banking77
        df = df.rename(columns={"category": "intent"})
    missing = [c for c in ("text", "intent") if c not in df.columns]
    if missing:
        raise FlywheelError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns)) or 'none'}"
        )
    return df


def _read_clinc(path: Path) -> pd.DataFrame:
    raw = read_json(path)
    if not isinstance(raw, dict) or not any(k in raw for k in ("train", "test", "val")):
        raise FlywheelError(f"{path}: not a CLINC150 file (expected keys train/val/test with [text, intent] pairs)")
    rows = []
    for key, pairs in raw.items():
        split = _SPLIT_ALIASES.get(key.removeprefix("oos_"))
        if split is None:
            continue
        for pair in pairs:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise FlywheelError(f"{path}: entry in '{key}' is not a [text, intent] pair: {pair!r}")
            rows.append({"text": pair[0], "intent": pair[1], "split": split})
    if not rows:
        raise FlywheelError(f"{path}: file is empty (no examples)")
    return pd.DataFrame(rows)


def validate_examples(df: pd.DataFrame, origin: Path, cfg: DataConfig) -> pd.DataFrame:
    """Normalise columns and refuse data a model cannot be trained or tested on."""
    if df.empty:
        raise FlywheelError(f"{origin}: file is empty (no examples)")
    df = df.copy()
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = "seed" if col == "source" else ""
    df = df[COLUMNS].fillna("")
    df["text"] = df["text"].astype(str).str.strip()
    df["intent"] = df["intent"].astype(str).str.strip()
    df["split"] = df["split"].astype(str).str.strip().str.lower().map(lambda s: _SPLIT_ALIASES.get(s, s))
    bad_split = sorted(set(df["split"]) - set(SPLITS) - {""})
    if bad_split:
        raise FlywheelError(f"{origin}: unknown split value(s) {bad_split}; use train, val or test")
    for col in ("text", "intent"):
        empty = df.index[df[col] == ""].tolist()
        if empty:
            raise FlywheelError(f"{origin}: empty '{col}' in {len(empty)} row(s), first at row {empty[0]}")
    too_long = df.index[df["text"].str.len() > cfg.max_text_chars].tolist()
    if too_long:
        raise FlywheelError(
            f"{origin}: {len(too_long)} text(s) longer than {cfg.max_text_chars} characters, first at row {too_long[0]}"
        )
    counts = df.loc[df["intent"] != cfg.oos_label, "intent"].value_counts()
    if counts.empty:
        raise FlywheelError(f"{origin}: no in-scope examples (only '{cfg.oos_label}')")
    rare = counts[counts < cfg.min_examples_per_intent]
    if not rare.empty:
        listed = ", ".join(f"{k} ({v})" for k, v in rare.items())
        raise FlywheelError(f"{origin}: intent(s) with fewer than {cfg.min_examples_per_intent} examples: {listed}")
    return df.reset_index(drop=True)


def _unit_hash(text: str, salt: str) -> float:
    """A stable number in [0, 1) from the text alone, so a text keeps its split as data grows."""
    digest = hashlib.sha256(f"{salt}\x00{text.casefold()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(df: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """Fill in missing splits deterministically from each text's hash.

    Rows that name a split keep it, except that ``val`` is carved out of ``train`` when the data
    has no validation rows of its own. Identical texts always land in the same split, so nothing
    leaks from train into test, and a text's split never changes when examples are added: the test
    set stays frozen across retrains. Out-of-scope examples are never trained on: they go to
    validation (to calibrate the fallback) or test.
    """
    df = df.copy()
    has_val = (df["split"] == "val").any()
    splits = []
    for text, split, intent in zip(df["text"], df["split"], df["intent"]):
        u = _unit_hash(text, "split")
        if split == "":
            split = "test" if u < cfg.test_fraction else "val" if u < cfg.test_fraction + cfg.val_fraction else "train"
        elif split == "train" and not has_val and _unit_hash(text, "val") < cfg.val_fraction:
            split = "val"
        if split == "train" and intent == cfg.oos_label:
            split = "val"
        splits.append(split)
    df["split"] = splits
    train_counts = df.loc[df["split"] == "train", "intent"].value_counts()
    intents = set(df.loc[df["intent"] != cfg.oos_label, "intent"])
    starved = sorted(i for i in intents if train_counts.get(i, 0) < 2)
    if starved:
        raise FlywheelError(f"intent(s) left with fewer than 2 training examples after the split: {', '.join(starved)}")
    return df


def dataset_digest(df: pd.DataFrame) -> str:
    """sha256 of the examples' content (text, intent, split), independent of row order."""
    rows = sorted(zip(df["text"], df["intent"], df["split"]))
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def load_split(data: Path, cfg: DataConfig) -> pd.DataFrame:
    return assign_splits(load_examples(data, cfg), cfg)
