"""Write a step's result as ``<step>.json`` plus ``<step>.md`` (the pull-request body)."""

from __future__ import annotations

import json
from pathlib import Path

from model.core.files import write_text


def write_reports(report_dir: Path, step: str, result: dict, markdown: str) -> Path:
    """Each file goes through a temporary name and a rename, so a reader never sees half of it."""
    write_text(report_dir / f"{step}.json", json.dumps(result, indent=2, default=str) + "\n")
    write_text(report_dir / f"{step}.md", markdown)
    return report_dir / f"{step}.json"
