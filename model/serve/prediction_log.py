"""The prediction log: one JSON line per prediction (shadow ones included), written as each request is
answered, in files that together stay under a byte cap.

Texts are not written here: they reach the conversation store through the collector only, redacted.
Entities likewise lose their ``text`` (it is the user's characters, maybe a phone number the model
tagged): each is ``{"type", "start", "end", "confidence"}``, offsets into the text the model saw;
an intent-only model logs ``[]``.

Rotation is the standard library's ``logging.handlers.RotatingFileHandler``: the cap is split over
``FILES`` files, ``predictions.jsonl`` and its rotated ``predictions.jsonl.1`` (newest) to ``.3``
(oldest); when the current file would pass its share it is renamed ``.1`` and the oldest dropped.
Each line is written whole, so every file holds complete lines. The shipped manifests turn the log
off (cap 0): on a pod it would only fill the ``/tmp`` emptyDir, while KServe's logger and the
collector already keep every call. ``prediction_log_files`` lists the files, oldest first.
A file that cannot be written (a full disk) is reported on stderr by the handler, never to the user.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path

from model.artifact.predictor import Entity, Prediction
from model.core.errors import FlywheelError
from model.serve.protocol import Endpoint, ParsedRequest

FILES = 4  # the current file and 3 rotated ones: a rotation drops at most a quarter of what is kept
# each file's share holds the longest line by far, so no file passes it: a 1000-character text has at most
# 500 words, each at most one entity of ~60 bytes in the line (~30 kB)
MIN_CAP_BYTES = FILES * 256 * 1024


class PredictionLog:
    """JSON lines appended to ``path``, rotated so that ``path`` and its rotated files stay under ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int):
        if max_bytes < MIN_CAP_BYTES:
            raise FlywheelError(
                f"prediction log cap {max_bytes} bytes is too small: at least {MIN_CAP_BYTES} "
                f"({FILES} files of {MIN_CAP_BYTES // FILES}), or 0 for no prediction log"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        self._files = RotatingFileHandler(path, maxBytes=max_bytes // FILES, backupCount=FILES - 1, encoding="utf-8")

    def write(self, records: list[dict]) -> None:
        """Append one line per record and flush: a line at a time, so a rotation never splits one."""
        for record in records:
            # ASCII JSON: the handler measures a line in characters, which are then bytes
            line = json.dumps(record, separators=(",", ":"), ensure_ascii=True)
            self._files.handle(logging.makeLogRecord({"msg": line}))

    def close(self) -> None:
        self._files.close()


def prediction_log_files(path: Path) -> list[Path]:
    """The log's files that exist, oldest first: ``path.3`` ... ``path.1``, then ``path``."""
    candidates = [path.with_name(f"{path.name}.{i}") for i in range(FILES - 1, 0, -1)] + [path]
    return [p for p in candidates if p.is_file()]


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
