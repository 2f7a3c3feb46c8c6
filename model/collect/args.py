"""The flags of ``flywheel export-events`` (``flywheel collect`` has none of its own: its config section
says everything), apart from the step so that the step table (``scripts/cli.py``) names them without
importing the step's dependencies."""

from __future__ import annotations

from dataclasses import dataclass

from model.core.config import setting


@dataclass
class ExportEventsArgs:
    start: str | None = setting(
        None, "window start, ISO 8601 (e.g. 2026-11-01T00:00:00Z); events before it are left out"
    )
    end: str | None = setting(None, "window end, ISO 8601, exclusive (unset: now)")
    days: float | None = setting(None, "instead of --start: the window is the last N days before --end")
    request: str | None = setting(
        None, "instead of --start: a retrain request (flywheel request-retrain's JSON), or their folder (the newest)"
    )
    out: str | None = setting(None, "snapshot file to write (unset: <work dir>/snapshots/events-<start>-<end>.parquet)")
