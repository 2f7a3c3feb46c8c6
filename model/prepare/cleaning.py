"""Cleaning rules for logged utterances; each returns what it kept and how many it removed.

Order matters and is fixed in ``clean``: normalise, then drop empty, noise, out-of-bounds
lengths, exact duplicates and near-duplicates. Duplicates are not lost information: their count
becomes the kept row's ``traffic``, which orders the review queue. ``clean_inputs`` is prepare's
cleaning step: the same normalisation for the training set and the human labels, then the rules
on the logs.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import pandas as pd

from model.core.config import PrepareConfig
from model.prepare.review_queue import needs_review

_SPACE = re.compile(r"\s+")
_PLACEHOLDER = re.compile(r"<[A-Z]+>")
_NOT_WORD = re.compile(r"[^\w<>]+")
_DIGITS = re.compile(r"\d+")
# Zero-width and BOM characters survive NFKC and make identical-looking texts differ.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"), None)


def per_text(texts: pd.Series, rule) -> pd.Series:
    """``rule`` of each text, computed once per distinct text: a window repeats its messages."""
    distinct = texts.unique()
    return texts.map(dict(zip(distinct, map(rule, distinct))))


def normalise(text: str) -> str:
    """NFKC (full-width letters, ligatures, non-breaking spaces), no invisible characters, single spaces."""
    text = unicodedata.normalize("NFKC", str(text)).translate(_INVISIBLE)
    return _SPACE.sub(" ", text).strip()


def exact_key(text: str) -> str:
    return text.casefold()


def near_key(text: str) -> str:
    """Texts with the same key differ only in case, punctuation, spacing or numbers.

    "Where is my order 123??" and "where is my order 456" are one question asked twice; keeping
    both teaches the model nothing and would let one of them sit in test while the other trains.
    Word order is kept: "return, not exchange" and "exchange, not return" are different requests.
    """
    return " ".join(_NOT_WORD.sub(" ", _DIGITS.sub("0", text.casefold())).split())


def is_noise(text: str, min_letters: int) -> bool:
    """Too few letters to carry an intent once placeholders are set aside ("???", "ok", "<EMAIL>", "1234")."""
    return sum(map(str.isalpha, _PLACEHOLDER.sub(" ", text))) < min_letters


def clean(
    df: pd.DataFrame,
    *,
    min_letters: int,
    min_chars: int,
    max_chars: int,
    known_texts: set[str] | None = None,
    known_near: set[str] | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Apply every rule to ``df['text']``; return kept rows (with ``traffic``) and removed counts per rule.

    ``known_texts``/``known_near`` are the keys of the current training set: a logged message that
    repeats a training example adds nothing and is dropped as a duplicate of it.
    Rows are expected in priority order (the first of a duplicate group is the one kept).
    """
    removed: dict[str, int] = {}
    df = df.copy()
    df["text"] = per_text(df["text"], normalise)

    def drop(rule: str, mask: pd.Series) -> None:
        nonlocal df
        removed[rule] = int(mask.sum())
        df = df[~mask]

    drop("empty", df["text"] == "")
    drop("noise", per_text(df["text"], lambda t: is_noise(t, min_letters)).astype(bool))
    drop("too_short", df["text"].str.len() < min_chars)
    drop("too_long", df["text"].str.len() > max_chars)
    df = df.assign(_exact=per_text(df["text"], exact_key), _near=per_text(df["text"], near_key))
    df["traffic"] = df.groupby("_near")["_near"].transform("size").astype(int)
    drop("duplicate_of_training_set", df["_exact"].isin(known_texts or set()))
    drop("near_duplicate_of_training_set", df["_near"].isin(known_near or set()))
    drop("exact_duplicate", df["_exact"].duplicated())
    drop("near_duplicate", df["_near"].duplicated())
    return df.drop(columns=["_exact", "_near"]).reset_index(drop=True), removed


@dataclass
class Cleaned:
    base: pd.DataFrame  # the training set, normalised, one row per text (compared case-blind)
    human: pd.DataFrame  # human labels, normalised, the last one per text
    logs: pd.DataFrame  # the logged messages every rule kept, with ``traffic``
    removed: dict[str, int]  # cleaning rule -> logged messages it removed
    case_twins: int  # training-set rows left out for differing from an earlier one only in case


def clean_inputs(base: pd.DataFrame, human: pd.DataFrame, logs: pd.DataFrame, cfg: PrepareConfig) -> Cleaned:
    """Normalise the training set and human labels as ``clean`` normalises logs, then clean the logs.

    A repeated logged message keeps its review-worthy copy, else the latest; one that repeats a
    training example is dropped. Training texts that differ only in case are one example: the first
    is kept (they would otherwise straddle splits).
    """
    base = base.assign(text=base["text"].map(normalise))
    human = human.assign(text=human["text"].map(normalise)).drop_duplicates(subset="text", keep="last")
    logs = logs.assign(_review=needs_review(logs))
    logs = logs.sort_values(["_review", "timestamp"], ascending=[False, False], kind="stable")
    kept, removed = clean(
        logs,
        min_letters=cfg.min_letters,
        min_chars=cfg.min_chars,
        max_chars=cfg.max_chars,
        known_texts=set(base["text"].map(exact_key)),
        known_near=set(base["text"].map(near_key)),
    )
    case_twins = base["text"].map(exact_key).duplicated()
    return Cleaned(base[~case_twins].reset_index(drop=True), human, kept, removed, int(case_twins.sum()))
