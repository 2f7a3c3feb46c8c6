"""Write a step's result as ``<step>.json`` plus ``<step>.md`` (the pull-request body)."""

from __future__ import annotations

import json
from pathlib import Path


def write_reports(report_dir: Path, step: str, result: dict, markdown: str) -> Path:
    """Each file goes through a temporary name and a rename, so a reader never sees half of it."""
    report_dir.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(result, indent=2, default=str) + "\n"), (".md", markdown)):
        tmp = report_dir / f".{step}{suffix}.tmp"
        tmp.write_text(text)
        tmp.replace(report_dir / f"{step}{suffix}")
    return report_dir / f"{step}.json"
