"""Cleaning rules for logged utterances; each returns what it kept and how many it removed.

Order matters and is fixed in ``clean``: normalise, then drop empty, noise, out-of-bounds
lengths, exact duplicates and near-duplicates. Duplicates are not lost information: their count
becomes the kept row's ``traffic``, which orders the review queue.
"""

from __future__ import annotations

import re
import unicodedata

import pandas as pd

_SPACE = re.compile(r"\s+")
_PLACEHOLDER = re.compile(r"<[A-Z]+>")
_NOT_WORD = re.compile(r"[^\w<>]+")
_DIGITS = re.compile(r"\d+")
# Zero-width and BOM characters survive NFKC and make identical-looking texts differ.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"), None)


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
    letters = sum(ch.isalpha() for ch in _PLACEHOLDER.sub(" ", text))
    return letters < min_letters


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
    df["text"] = df["text"].map(normalise)

    def drop(rule: str, mask: pd.Series) -> None:
        nonlocal df
        removed[rule] = int(mask.sum())
        df = df[~mask]

    drop("empty", df["text"] == "")
    drop("noise", df["text"].map(lambda t: is_noise(t, min_letters)))
    drop("too_short", df["text"].str.len() < min_chars)
    drop("too_long", df["text"].str.len() > max_chars)
    df = df.assign(_exact=df["text"].map(exact_key), _near=df["text"].map(near_key))
    df["traffic"] = df.groupby("_near")["_near"].transform("size").astype(int)
    drop("duplicate_of_training_set", df["_exact"].isin(known_texts or set()))
    drop("near_duplicate_of_training_set", df["_near"].isin(known_near or set()))
    drop("exact_duplicate", df["_exact"].duplicated())
    drop("near_duplicate", df["_near"].duplicated())
    return df.drop(columns=["_exact", "_near"]).reset_index(drop=True), removed
