"""The prediction log: one JSON line per prediction (shadow ones included), flushed per request.

Texts are not written here: they reach the conversation store through the collector only, redacted.
Entities likewise lose their ``text`` (it is the user's characters, maybe a phone number the model
tagged): each is ``{"type", "start", "end", "confidence"}``, offsets into the text the model saw;
an intent-only model logs ``[]``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from model.artifact.predictor import Entity, Prediction
from model.serve.protocol import Endpoint, ParsedRequest


class PredictionLog:
    """Append-only JSON lines in one file, opened when the server starts."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = open(path, "a", encoding="utf-8")

    def write(self, records: list[dict]) -> None:
        self._fh.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _without_text(entity: Entity) -> dict:
    return {k: v for k, v in entity.to_dict().items() if k != "text"}


def prediction_records(
    endpoint: Endpoint, request: ParsedRequest, preds: list[Prediction], seconds: float
) -> list[dict]:
    """One log record per text of a request: ids, prediction (entities included), who answered and how long it took."""
    now = datetime.now(UTC).isoformat()
    return [
        {
            "request_id": request.request_id,
            "index": i,
            "conversation_id": request.conversation_id,
            "timestamp": now,
            "predicted_intent": p.intent,
            "confidence": round(p.confidence, 6),
            "fallback": p.fallback,
            "entities": [_without_text(e) for e in p.entities],
            "model_version": endpoint.version,
            "arm": endpoint.arm,
            "endpoint": endpoint.name,
            "latency_ms": round(seconds * 1000, 3),
        }
        for i, p in enumerate(preds)
    ]
