"""Conversation snapshots for tests, in the collector's export schema (model/data/conversations.py).

Built from the sample data's texts with made-up predictions and feedback, so every labelling
path is exercised: confident thumbs-up answers (auto-label), thumbs-down, escalated, abandoned
and fallback answers (review queue), unrated ones (unused), plus noise, duplicates and planted PII.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pandas as pd

from model.data.conversations import COLUMNS


def event(
    text: str,
    intent: str,
    *,
    confidence: float = 0.95,
    fallback: bool = False,
    thumbs: str = "",
    escalated: bool = False,
    abandoned: bool = False,
    resolved: bool = False,
    i: int = 0,
    conversation: str | None = None,
    when: datetime | None = None,
) -> dict:
    return {
        "request_id": f"req-{i:05d}",
        "conversation_id": conversation or f"conv-{i // 3:05d}",
        "timestamp": when or datetime(2026, 11, 20, tzinfo=UTC) + timedelta(minutes=i),
        "text": text,
        "predicted_intent": intent,
        "confidence": confidence,
        "fallback": fallback,
        "model_version": "3",
        "arm": "stable" if i % 10 else "canary",
        "latency_ms": 12.5 + i % 7,
        "thumbs": thumbs,
        "abandoned": abandoned,
        "escalated": escalated,
        "resolved": resolved,
        "entities": "[]",
    }


def make_snapshot(sample_df: pd.DataFrame, n: int = 120, seed: int = 0) -> pd.DataFrame:
    """``n`` events whose texts are lightly varied sample utterances (so they are new to training)."""
    rng = random.Random(seed)
    rows = sample_df[sample_df["intent"] != "oos"].sample(n=n, random_state=seed).reset_index(drop=True)
    events = []
    for i, (text, intent) in enumerate(zip(rows["text"], rows["intent"])):
        text = f"{rng.choice(['hi, ', 'hello ', 'hey there, ', 'excuse me, ', 'quick question: '])}{text.lower()}"
        kind = i % 6
        if kind in (0, 1, 2):
            events.append(event(text, intent, confidence=0.93 + 0.01 * (i % 5), thumbs="up", i=i))
        elif kind == 3:
            events.append(event(text, intent, confidence=0.55 + 0.01 * (i % 30), thumbs="down", i=i))
        elif kind == 4:
            events.append(event(text, intent, confidence=0.3, fallback=True, escalated=i % 2 == 0, i=i))
        else:
            events.append(event(text, intent, confidence=0.8, i=i))  # unrated: neither labelled nor queued
    return pd.DataFrame(events)[COLUMNS]
