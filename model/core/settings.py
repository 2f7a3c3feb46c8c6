"""Loading settings: YAML overrides checked against the config dataclasses, and the locations that
default to the work folder.

A YAML file holds overrides only (``model/configs/default.yaml`` holds none): one mapping per
section, each key a field of that section's dataclass, each value of the field's type. Anything
else is refused with the file, the key and what was expected (the CLI exits 2).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from model.core.config import DEFAULT_CONFIG, SECTIONS
from model.core.errors import FlywheelError


def read_yaml_config(path: Path) -> dict[str, dict[str, Any]]:
    """The overrides in a config YAML, per section, every key and value checked."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise FlywheelError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise FlywheelError(f"config {path}: expected a mapping of sections, got {type(raw).__name__}")
    for section, values in raw.items():
        if section not in SECTIONS:
            raise FlywheelError(f"config {path}: unknown section '{section}' (known: {', '.join(SECTIONS)})")
        if not isinstance(values or {}, dict):
            raise FlywheelError(f"config {path}: section '{section}' must be a mapping of keys to values")
        hints = typing.get_type_hints(SECTIONS[section])
        known = {f.name for f in dataclasses.fields(SECTIONS[section])}
        for key, value in (values or {}).items():
            if key not in known:
                raise FlywheelError(f"config {path}: unknown key '{section}.{key}' (known: {', '.join(sorted(known))})")
            problem = type_problem(value, hints[key])
            if problem:
                raise FlywheelError(f"config {path}: {section}.{key} = {value!r}: {problem}")
    return {k: dict(v or {}) for k, v in raw.items()}


def type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit the type ``hint`` (None when it does)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = [type_problem(value, a) for a in args if a is not type(None)]
        return None if any(p is None for p in problems) else problems[0]
    if origin is Literal:
        return None if value in args else f"expected one of {', '.join(map(str, args))}"
    if origin is list:
        if not isinstance(value, list):
            return "expected a list"
        return next((p for p in (type_problem(v, args[0]) for v in value) if p), None)
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else "expected a number"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "expected a whole number"
    if hint is bool:
        return None if isinstance(value, bool) else "expected true or false"
    if hint is str:
        return None if isinstance(value, str) else "expected a string (quote it)"
    return None


def load_config(section: str, path: Path | None = None, **overrides: Any):
    """One section's dataclass: defaults, then the YAML file's overrides, then ``overrides``."""
    values = read_yaml_config(path or DEFAULT_CONFIG).get(section, {})
    values.update(overrides)
    return SECTIONS[section](**values)


def resolve_locations(sections: dict[str, Any], work: Path) -> dict[str, Any]:
    """Fill the settings left unset that default to places in the work folder (or, for MLflow, to
    ``MLFLOW_TRACKING_URI``, MLflow's own convention)."""
    defaults = {
        "registry": {
            "tracking_uri": lambda: os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{work / 'mlflow.db'}"
        },
        "collect": {
            "store_url": lambda: f"sqlite:///{work / 'conversations.db'}",
            "spool_dir": lambda: str(work / "collector-spool"),
        },
        "serve": {"prediction_log": lambda: str(work / "serving" / "predictions.jsonl")},
    }
    resolved = dict(sections)
    for name, fields in defaults.items():
        if name in resolved:
            unset = {k: make() for k, make in fields.items() if getattr(resolved[name], k) is None}
            resolved[name] = dataclasses.replace(resolved[name], **unset)
    return resolved
