"""Load labelled utterances from the formats users have, check them, split them, digest them.

Every loader returns one DataFrame with the training-example contract of DESIGN.md:
``text``, ``intent``, ``entities`` (canonical JSON of the text's entity spans, ``[]`` for none;
format in ``model.data.entities``), ``source`` (seed/human/auto), ``conversation_id`` (may be
empty) and ``split`` (train/val/test, or empty where the file has none; ``assign_splits`` fills it).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from model.core.config import DataConfig
from model.core.errors import FlywheelError
from model.data.entities import dump_spans, follow_edit, has_inline, is_blank, parse_cell, parse_inline
from model.data.readers import TABLE_SUFFIXES, read_json, read_table

COLUMNS = ["text", "intent", "entities", "source", "conversation_id", "split"]
NO_ENTITIES = "[]"
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "dev": "val", "test": "test"}


def load_examples(path: str | Path, cfg: DataConfig | None = None) -> pd.DataFrame:
    """Read a dataset file or folder, normalise its columns and validate it.

    Accepted: the project's format (CSV/Parquet/JSONL with ``text,intent``, optional ``entities``),
    Banking77 CSV (``text,category``), CLINC150 JSON (``data_full.json``), a folder holding
    ``train.*`` and ``test.*`` (and optionally ``val.*``) files in any of those table formats, or
    the SNIPS benchmark's folder (``train_<Intent>_full.json``, ``validate_<Intent>.json``).
    """
    cfg = cfg or DataConfig()
    path = Path(path)
    if not path.exists():
        raise FlywheelError(f"{path}: no such file or folder")
    if path.is_dir() and _snips_files(path):
        df = _read_snips(path)
    elif path.is_dir():
        frames = []
        for split in ("train", "val", "validation", "test"):
            for suffix in TABLE_SUFFIXES:
                part = path / f"{split}{suffix}"
                if part.exists():
                    df = with_entities(_read_example_table(part), part)  # so a bad span names its file
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
            # "[]": CLINC150 marks no entities, so its texts are taken as they are, never as inline marks
            rows.append({"text": pair[0], "intent": pair[1], "entities": NO_ENTITIES, "split": split})
    if not rows:
        raise FlywheelError(f"{path}: file is empty (no examples)")
    return pd.DataFrame(rows)


def _snips_files(folder: Path) -> list[tuple[Path, str]]:
    """SNIPS' files with the split each is: ``train_*_full.json`` train, ``validate_*.json`` test.

    Its validation files are the benchmark's usual test set; validation is carved from train.
    """
    return [(p, "train") for p in sorted(folder.glob("train_*_full.json"))] + [
        (p, "test") for p in sorted(folder.glob("validate_*.json"))
    ]


def _read_snips(folder: Path) -> pd.DataFrame:
    """The SNIPS benchmark: ``{"<Intent>": [{"data": [{"text": ...}, {"text": ..., "entity": type}]}]}``.

    An utterance is its chunks joined; a chunk with ``entity`` is a span of that type (trimmed of
    the white space a few chunks carry at their edges).
    """
    rows = []
    for path, split in _snips_files(folder):
        raw = read_json(path)
        if not isinstance(raw, dict) or not raw:
            raise FlywheelError(f"{path}: not a SNIPS file (expected {{intent: [{{'data': [chunks]}}]}})")
        for intent, utterances in raw.items():
            if not isinstance(utterances, list):
                raise FlywheelError(f"{path}: '{intent}' must hold a list of utterances")
            for i, utterance in enumerate(utterances):
                chunks = utterance.get("data") if isinstance(utterance, dict) else None
                if not isinstance(chunks, list) or not all(isinstance(c, dict) and "text" in c for c in chunks):
                    raise FlywheelError(f"{path}: {intent} utterance {i} is not {{'data': [{{'text': ...}}]}}")
                text, spans = _snips_utterance(chunks)
                rows.append({"text": text, "intent": intent, "entities": dump_spans(spans), "split": split})
    return pd.DataFrame(rows)


def _snips_utterance(chunks: list[dict]) -> tuple[str, list]:
    parts, spans, length = [], [], 0
    for chunk in chunks:
        piece = str(chunk["text"])
        value = piece.strip()
        if chunk.get("entity") and value:
            start = length + len(piece) - len(piece.lstrip())
            spans.append({"start": start, "end": start + len(value), "type": chunk["entity"], "value": value})
        parts.append(piece)
        length += len(piece)
    return "".join(parts), spans


def validate_examples(df: pd.DataFrame, origin: Path, cfg: DataConfig) -> pd.DataFrame:
    """Normalise columns and refuse data a model cannot be trained or tested on."""
    if df.empty:
        raise FlywheelError(f"{origin}: file is empty (no examples)")
    df = df.copy()
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = "seed" if col == "source" else ""
    df = with_entities(df[COLUMNS], origin).fillna("")
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


def with_entities(df: pd.DataFrame, origin: Path | str) -> pd.DataFrame:
    """``df`` with its texts stripped and its ``entities`` checked and canonical (``[]`` for none).

    A text with inline marks and an empty cell becomes plain text and spans; spans move with the
    stripping of the text. Any bad span is refused, naming ``origin`` and the row.
    """
    df = df.copy()
    cells = df["entities"] if "entities" in df.columns else [None] * len(df)
    texts, canonical = [], []
    for row, raw, cell in zip(df.index, df["text"], cells):
        where = f"{origin}: row {row}"
        raw = "" if raw is None or (isinstance(raw, float) and raw != raw) else str(raw)
        if has_inline(raw) and is_blank(cell):
            raw, spans = parse_inline(raw, where)
        else:
            spans = parse_cell(cell, raw, where)
            if spans and has_inline(raw):
                raise FlywheelError(f"{where}: entities given both inline ([value](type)) and in 'entities'")
        text, spans, _ = follow_edit(str.strip, raw, spans)  # nothing is dropped: spans hold no edge space
        texts.append(text)
        canonical.append(dump_spans(spans))
    return df.assign(text=texts, entities=canonical)


def _unit_hash(text: str, salt: str) -> float:
    """A stable number in [0, 1) from the text alone, so a text keeps its split as data grows."""
    digest = hashlib.sha256(f"{salt}\x00{text.casefold()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_test_share(text: str, cfg: DataConfig) -> bool:
    """Whether the text-hash rule puts ``text`` in the test split (``assign_splits``, for a row with none)."""
    return _unit_hash(text, "split") < cfg.test_fraction


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
    """sha256 of the examples' content (text, intent, split, entities), independent of row order.

    A row without entities is hashed as (text, intent, split), as before entities existed, so data
    without any keeps its digest and the runs recorded before stay comparable.
    """
    cells = df["entities"] if "entities" in df.columns else [NO_ENTITIES] * len(df)
    rows = sorted(
        (text, intent, split) if is_blank(cell) or cell == NO_ENTITIES else (text, intent, split, cell)
        for text, intent, split, cell in zip(df["text"], df["intent"], df["split"], cells)
    )
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def load_split(data: Path, cfg: DataConfig) -> pd.DataFrame:
    return assign_splits(load_examples(data, cfg), cfg)
