"""The int8 copy on a tiny random BERT: written at packaging beside model.onnx, sealed by the manifest,
served only when it passes the parity check on validation; an artifact whose int8 copy fails it serves
fp32, says why in its model card, and the gate measures fp32. Evaluation, the gate, MLflow and the
prediction log name the runtime (the prediction log's: tests/test_serving.py, shadow test)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

from model.artifact.manifest import MANIFEST, verify
from model.artifact.onnx_runtime import INT8_FILE
from model.artifact.predictor import IntentPredictor
from model.core.config import DataConfig, GateConfig, TrainConfig
from model.core.errors import FlywheelError
from model.data.examples import load_split
from model.evaluate.evaluation import evaluate
from model.evaluate.steps import evaluate_step, gate_step
from model.train import onnx_export, runtimes
from tests.helpers.artifacts import fit_result, repackage
from tests.helpers.registry import local_registry


def _validation(tiny_artifact) -> pd.DataFrame:
    """The tiny artifact's in-scope validation texts (text, intent, entities): what training checks parity on."""
    df = load_split(Path(tiny_artifact["data"]), DataConfig())
    return df[(df["split"] == "val") & (df["intent"] != "oos")]


def _package(tiny_artifact, target: Path, cfg: TrainConfig) -> runtimes.ServedRuntime:
    """The tiny artifact's weights packaged again into ``target`` as training does, with ``cfg``'s thresholds."""
    return repackage(Path(tiny_artifact["artifact"]), target, _validation(tiny_artifact), cfg)[0]


def test_packaging_writes_an_int8_copy_that_agrees_with_fp32_under_the_manifest(tiny_artifact):
    folder = Path(tiny_artifact["artifact"])
    meta = json.loads((folder / "meta.json").read_text())
    assert INT8_FILE in (folder / MANIFEST).read_text().split()
    int8 = meta["int8"]
    assert meta["served_runtime"] == tiny_artifact["served_runtime"] == "onnx-int8"
    assert int8["accepted"] and int8["file"] == INT8_FILE
    assert int8["intent_agreement"] >= TrainConfig().int8_min_intent_agreement
    assert int8["checked_texts"] == len(_validation(tiny_artifact)) and int8["entity_spans"] > 0
    # int8 weights indeed: integer matrix products, and int8 initializers where model.onnx has float ones
    graph = onnx.load(str(folder / INT8_FILE)).graph
    assert "MatMulInteger" in {n.op_type for n in graph.node}
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)
    card = (folder / "MODEL_CARD.md").read_text()
    assert "Served runtime: `onnx-int8`: ONNX Runtime with int8 weights (every MatMul quantized): top-1 intent" in card
    assert "| runtime | onnx-int8 |" in card  # the card's metrics are the served runtime's


def test_the_served_runtime_is_what_loads_evaluates_and_reaches_mlflow(tiny_artifact):
    from mlflow import MlflowClient

    folder = Path(tiny_artifact["artifact"])
    predictor = IntentPredictor.load(folder)
    assert (predictor.runtime, predictor.served_runtime, predictor.meta["runtime"]) == ("onnx-int8",) * 3
    report, md = evaluate_step(str(folder), Path(tiny_artifact["data"]), "test", DataConfig(), local_registry(folder))
    assert (report.runtime, report.served_runtime) == ("onnx-int8", "onnx-int8")
    assert report.to_dict()["runtime"] == "onnx-int8" and "| runtime | onnx-int8 |" in md
    # training measured the same runtime: the artifact's metrics are the evaluation's
    assert report.accuracy == pytest.approx(tiny_artifact["metrics"]["accuracy"])
    run = MlflowClient(f"sqlite:///{folder.parent / 'work' / 'mlflow.db'}").get_run(tiny_artifact["mlflow_run_id"])
    assert run.data.tags["served_runtime"] == "onnx-int8"
    assert run.data.metrics["int8_accepted"] == 1.0 and run.data.metrics["int8_intent_agreement"] >= 0.995


def _quantize_a_broken_network(tiny_artifact):
    """A quantization that gets the graph wrong: the int8 copy of a network whose intent rows are rolled."""
    real_quantize = runtimes.quantize

    def broken(fp32: Path, int8: Path, keep_fp32: str | None = None) -> dict:
        fitted = fit_result(Path(tiny_artifact["artifact"]))
        with torch.no_grad():
            fitted.model.head.weight.copy_(fitted.model.head.weight.roll(1, dims=0))  # each intent answers as another
        wrong = fp32.with_name("wrong.onnx")
        onnx_export.export(fitted.model, fitted.tokenizer, _validation(tiny_artifact)["text"].tolist(), 64, wrong)
        return real_quantize(wrong, int8, keep_fp32)

    return broken


def _failing_quantization(fp32: Path, int8: Path, keep_fp32: str | None = None) -> dict:
    raise RuntimeError("unsupported opset")


FAILURES = {
    # an impossible entity threshold: int8 would have to beat fp32's span F1 by 100 points
    "entity F1": (TrainConfig(int8_max_entity_f1_drop=-1.0), None, "points lower (at most -100.0)"),
    "corrupted quantization": (TrainConfig(), "broken", "top-1 intent agreement with fp32"),
    "quantizer error": (TrainConfig(), _failing_quantization, "quantization failed: RuntimeError: unsupported opset"),
}


@pytest.mark.parametrize("case", FAILURES, ids=list(FAILURES))
def test_an_int8_copy_that_fails_parity_serves_fp32_says_why_and_the_gate_measures_fp32(
    case, tiny_artifact, tmp_path, monkeypatch
):
    cfg, quantize, expected = FAILURES[case]
    if quantize == "broken":
        quantize = _quantize_a_broken_network(tiny_artifact)
    if quantize is not None:
        monkeypatch.setattr(runtimes, "quantize", quantize)
    target = tmp_path / "fp32-served"
    served = _package(tiny_artifact, target, cfg)
    verify(target)
    meta = json.loads((target / "meta.json").read_text())
    assert served.runtime == meta["served_runtime"] == "onnx-fp32"
    assert not (target / INT8_FILE).exists() and meta["int8"]["accepted"] is False and meta["int8"]["file"] is None
    assert expected in meta["int8"]["reason"]
    assert all(f"{name}: " in meta["int8"]["reason"] for name in runtimes.KEEP_FP32)  # each quantization tried
    card = (target / "MODEL_CARD.md").read_text()
    assert "Served runtime: `onnx-fp32`: ONNX Runtime fp32: every int8 copy failed the parity check (" in card
    assert expected in card
    assert IntentPredictor.load(target).runtime == "onnx-fp32"
    with pytest.raises(
        FlywheelError, match="no model.int8.onnx, so no onnx-int8 runtime. ONNX Runtime fp32: every int8"
    ):
        IntentPredictor.load(target, runtime="onnx-int8")
    gated = gate_step(
        str(target), "", Path(tiny_artifact["data"]),
        data_cfg=DataConfig(), gate_cfg=GateConfig(), reg_cfg=local_registry(tmp_path / "work"),
    )  # fmt: skip
    (check,) = [c for c in gated.decision.checks if c.name == "served runtime"]
    assert check.passed and check.detail == "measured on onnx-fp32, the runtime the artifact serves"
    assert gated.decision.challenger.runtime == "onnx-fp32" and "(measured on onnx-fp32)" in gated.markdown
    # the gate's figures are fp32's: the same as evaluating model.onnx by name
    test = load_split(Path(tiny_artifact["data"]), DataConfig())
    fp32 = evaluate(IntentPredictor.load(target, runtime="onnx-fp32"), test[test["split"] == "test"])
    assert gated.decision.challenger.accuracy == fp32.accuracy


def test_a_quantization_that_fails_parity_gives_way_to_the_next(tiny_artifact, tmp_path, monkeypatch):
    """The first quantization of KEEP_FP32 fails parity (a broken network), the second passes: int8 serves,
    and the model card names which one."""
    broken = _quantize_a_broken_network(tiny_artifact)
    real_quantize = runtimes.quantize

    def first_broken(fp32: Path, int8: Path, keep_fp32: str | None = None) -> dict:
        return (broken if keep_fp32 is None else real_quantize)(fp32, int8, keep_fp32)

    monkeypatch.setattr(runtimes, "quantize", first_broken)
    target = tmp_path / "second"
    served = _package(tiny_artifact, target, TrainConfig())
    meta = json.loads((target / "meta.json").read_text())
    assert served.runtime == meta["served_runtime"] == "onnx-int8" and (target / INT8_FILE).is_file()
    assert meta["int8"]["quantization"]["name"] == "feed-forward outputs in fp32"
    assert meta["int8"]["quantization"]["kept_fp32"] == 2  # the tiny BERT's two layers
    assert "(feed-forward outputs in fp32)" in (target / "MODEL_CARD.md").read_text()


def test_parity_counts_top1_disagreements_against_the_threshold(tiny_artifact, tmp_path):
    """The check's arithmetic on real predictors: fp32 against itself agrees fully; against a copy
    whose intent rows are rolled, on hardly any text; the threshold decides."""
    source = Path(tiny_artifact["artifact"])
    check = _validation(tiny_artifact)
    fp32 = IntentPredictor.load(source, runtime="onnx-fp32")
    same = runtimes.parity(fp32, fp32, check, TrainConfig())
    assert (same.intent_agreement, same.failures) == (1.0, [])
    assert same.entity_spans > 0 and same.entity_f1_fp32 == same.entity_f1_int8
    shifted = IntentPredictor.load(source, runtime="torch")
    with torch.no_grad():
        shifted.model.head.weight.copy_(shifted.model.head.weight.roll(1, dims=0))
    worse = runtimes.parity(fp32, shifted, check, TrainConfig(int8_min_intent_agreement=0.5))
    assert worse.intent_agreement < 0.5 and len(worse.failures) == 1
    assert worse.failures[0].startswith(
        f"top-1 intent agreement with fp32 {worse.intent_agreement:.2%} on {len(check)}"
    )
    intents_only = runtimes.parity(fp32, fp32, check.drop(columns="entities"), TrainConfig())
    assert intents_only.entity_spans == 0 and intents_only.entity_f1_fp32 is None  # no true span: no entity check


def test_int8_probabilities_stay_close_to_fp32(tiny_artifact):
    """Not a parity threshold (that is the top-1 check): int8 rounding moves probabilities a little, never wildly."""
    folder = Path(tiny_artifact["artifact"])
    texts = _validation(tiny_artifact)["text"].tolist()
    int8, fp32 = (IntentPredictor.load(folder, runtime=r).probabilities(texts) for r in ("onnx-int8", "onnx-fp32"))
    assert not np.array_equal(int8, fp32)  # it is another model
    assert np.abs(int8 - fp32).max() < 0.1


def test_an_artifact_naming_an_unknown_runtime_is_refused(tmp_path, tiny_artifact):
    from model.artifact.manifest import write_manifest

    copy = tmp_path / "copy"
    shutil.copytree(tiny_artifact["artifact"], copy)
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps({**meta, "served_runtime": "tensorrt"}))
    write_manifest(copy)
    with pytest.raises(FlywheelError, match="meta.json names served runtime 'tensorrt'"):
        IntentPredictor.load(copy)
