"""A sealed artifact taken apart again and packaged anew: its weights as training's ``FitResult``, its
meta.json without what packaging adds (the ONNX and int8 checks, the served runtime), and
``repackage``, which seals the same weights again as training does."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from safetensors.torch import load_file

from model.artifact.network import build_from_artifact
from model.artifact.predictor import IntentPredictor
from model.core.config import TrainConfig
from model.train.fit import FitResult
from model.train.package import write_artifact
from model.train.runtimes import ServedRuntime, export_runtimes


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


def repackage(source: Path, target: Path, check: pd.DataFrame, cfg: TrainConfig) -> tuple[ServedRuntime, str]:
    """``source``'s weights packaged again into ``target`` as training does: ONNX export, int8 copy and its
    parity check on ``check``'s texts with ``cfg``'s thresholds, then the sealed artifact (its digest)."""
    result, predictor = fit_result(source), IntentPredictor.load(source, runtime="torch")
    exports = target.with_name(target.name + "-exports")
    exports.mkdir()
    served = export_runtimes(result, predictor, check, exports, cfg)
    digest = write_artifact(
        result, target, threshold=predictor.threshold, meta=meta_without_runtimes(source), metrics_markdown="-",
        served=served,
    )  # fmt: skip
    return served, digest
