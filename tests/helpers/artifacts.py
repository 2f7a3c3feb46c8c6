"""A sealed artifact taken apart again: its weights as training's ``FitResult``, and its meta.json without
what packaging adds (the ONNX and int8 checks, the served runtime), to package the same weights anew."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from model.artifact.network import build_from_artifact
from model.train.fit import FitResult


def fit_result(folder: Path) -> FitResult:
    """The artifact's weights, tokenizer and labels as the training run handed them to packaging."""
    label_map = json.loads((folder / "labels.json").read_text())
    labels, tags = label_map["labels"], label_map.get("entity_tags", [])
    model, tokenizer = build_from_artifact(folder, len(labels), len(tags))
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return FitResult(model.eval(), tokenizer, labels, "cpu", tags=tags)


def meta_without_runtimes(folder: Path) -> dict:
    """meta.json less what packaging writes (ONNX check, int8 parity, served runtime, fallback threshold)."""
    meta = json.loads((folder / "meta.json").read_text())
    return {k: v for k, v in meta.items() if k not in ("onnx", "int8", "served_runtime", "fallback_threshold")}
