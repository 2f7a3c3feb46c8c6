"""Export a time window of the conversation store as a conversation snapshot (``flywheel export-events``).

The snapshot is exactly ``model.data.conversations.SNAPSHOT_SCHEMA``: one row per answered request, with
the feedback that refers to it folded into ``thumbs``/``abandoned``/``escalated``/``resolved``, so
``check-data --events``, ``prepare --snapshot`` and ``drift --current`` read the export directly.
How requests, multi-text requests and feedback become rows is documented in that module and
``model.collect.snapshot_rows``; ``model.collect.streamed_export`` does it for a window of any
length in flat memory (a batch of ``export_batch_rows`` events at a time, DuckDB folding and sorting).

The digest is a sha256 of the rows' content in request-id order, written into the file's metadata with
the window and returned, so a training run or drift check can name exactly the data it read.
``window_rows`` holds a short window in memory, for the canary analysis and the local loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from model.collect.args import ExportEventsArgs
from model.collect.snapshot_rows import _utc, answer_version, answered_rows, content_digest, feedback_ids
from model.collect.store import open_store, read_feedback, read_inference
from model.collect.streamed_export import export_streamed
from model.core.config import CollectorConfig
from model.core.errors import FlywheelError
from model.core.steps import StepResult
from model.data.conversations import DIGEST_KEY, WINDOW_KEYS

__all__ = [
    "DIGEST_KEY",
    "Exported",
    "answer_version",
    "answered_rows",
    "content_digest",
    "export_step",
    "export_window",
]


def window_rows(engine: sa.Engine, start: datetime, end: datetime) -> tuple[list[dict], list[dict], dict]:
    """The window's stored inference events, its snapshot rows (feedback folded in), what was skipped."""
    events = read_inference(engine, start, end)
    request_ids, conversations = feedback_ids(events)
    rows, skipped = answered_rows(events, read_feedback(engine, request_ids, conversations))
    return events, rows, skipped


@dataclass(frozen=True)
class Exported:
    """A window of logged conversations written as a snapshot: where, how much, and its content digest."""

    path: str
    rows: int  # answered requests (one row per text)
    requests: int  # logged calls
    content_digest: str
    window: dict[str, str]  # start, end (ISO 8601; the end excluded)
    rated: int  # rows with a thumbs up or down
    with_feedback: int  # rows with any feedback
    skipped: dict[str, int]  # what was left out, by reason


def export_window(
    engine: sa.Engine, start: datetime, end: datetime, out: Path, cfg: CollectorConfig | None = None
) -> Exported:
    """Write the window's answered requests to ``out`` as a conversation snapshot (temporary file + rename)."""
    cfg = cfg or CollectorConfig()
    start, end = _utc(start), _utc(end)
    if end <= start:
        raise FlywheelError(f"export window is empty: end {end.isoformat()} is not after start {start.isoformat()}")
    metadata = dict(zip(WINDOW_KEYS, (t.isoformat().encode() for t in (start, end))))
    written = export_streamed(engine, start, end, Path(out), metadata, cfg.export_batch_rows, cfg.export_memory_mib)
    return Exported(
        path=str(out),
        rows=written["rows"],
        requests=written["requests"],
        content_digest=written["content_digest"],
        window={"start": start.isoformat(), "end": end.isoformat()},
        rated=written["rated"],
        with_feedback=written["with_feedback"],
        skipped=written["skipped"],
    )


def _when(value: str, flag: str) -> datetime:
    try:
        return _utc(datetime.fromisoformat(value))
    except ValueError as exc:
        raise FlywheelError(f"{flag} must be an ISO 8601 timestamp (e.g. 2026-11-01T00:00:00Z): {exc}") from exc


def request_window(path: Path) -> tuple[datetime, datetime]:
    """The window of a retrain request (``flywheel request-retrain``'s JSON), or of the newest in a folder."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.json"))  # named <UTC time>.json by request-retrain: the last is the newest
        if not found:
            raise FlywheelError(f"{path}: no retrain request (*.json) in this folder")
        path = found[-1]
    try:
        window = json.loads(path.read_text())["window"]
        start, end = window["start"], window["end"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FlywheelError(f"{path}: not a retrain request with a window {{start, end}}: {exc!r}") from exc
    return _when(start, f"{path}: window start"), _when(end, f"{path}: window end")


def export_command(args: ExportEventsArgs, *, collect: CollectorConfig, work: Path) -> StepResult[Exported]:
    """Export a window of logged conversations as a snapshot (model/data/conversations.py) with a content digest."""
    return StepResult(
        *export_step(
            collect,
            work,
            start=args.start or "",
            end=args.end or "",
            days=args.days or 0,
            request=args.request or "",
            out=args.out or "",
        )
    )


def export_step(
    cfg: CollectorConfig,
    work: Path,
    *,
    start: str = "",
    end: str = "",
    days: float = 0,
    request: str = "",
    out: str = "",
) -> tuple[Exported, str]:
    """Pick the window (exactly one of ``start``, ``days``, ``request``), export it, describe it."""
    chosen = [name for name, given in (("--start", start), ("--days", days > 0), ("--request", request)) if given]
    if len(chosen) != 1:
        raise FlywheelError(
            "give exactly one of --start (ISO 8601), --days (the last N days) or --request (a retrain request), "
            f"got {', '.join(chosen) or 'none'}"
        )
    if request:
        if end:
            raise FlywheelError("--end does not go with --request: the request names its window")
        t0, t1 = request_window(Path(request))
    else:
        t1 = _when(end, "--end") if end else datetime.now(UTC)
        t0 = _when(start, "--start") if start else t1 - timedelta(days=days)
    target = Path(out) if out else work / "snapshots" / f"events-{t0:%Y%m%dT%H%M%S}-{t1:%Y%m%dT%H%M%S}.parquet"
    engine = open_store(cfg.store_url)
    try:
        result = export_window(engine, t0, t1, target, cfg)
    finally:
        engine.dispose()
    left_out = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in result.skipped.items()) or "nothing"
    md = (
        f"## Logged conversations {result.window['start']} to {result.window['end']}\n\n"
        f"{result.rows} answered requests ({result.rated} rated, {result.with_feedback} with feedback) "
        f"from {result.requests} logged calls in `{result.path}`, content digest "
        f"`{result.content_digest}`. Left out: {left_out}.\n"
    )
    return result, md
