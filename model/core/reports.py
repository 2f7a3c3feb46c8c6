"""Write a step's result as ``<step>.json`` plus ``<step>.md`` (the pull-request body): the edge where a
typed outcome becomes JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from model.core.files import write_text


def as_json(value: Any) -> Any:
    """``value`` as JSON data: a dataclass field by field (or by its own ``to_dict``, where it has one),
    mappings and sequences item by item, a path as its text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if callable(getattr(value, "to_dict", None)):
            return as_json(value.to_dict())
        return {f.name: as_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_reports(report_dir: Path, step: str, outcome: Any, markdown: str) -> Path:
    """Each file goes through a temporary name and a rename, so a reader never sees half of it."""
    write_text(report_dir / f"{step}.json", json.dumps(as_json(outcome), indent=2, default=str) + "\n")
    write_text(report_dir / f"{step}.md", markdown)
    return report_dir / f"{step}.json"
