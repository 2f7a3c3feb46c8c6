"""The ONNX Runtime path on a tiny random BERT: export checked at packaging, sealed by the manifest,
the same probabilities as PyTorch, PyTorch when the artifact has no model.onnx, and the server on both."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model.artifact.manifest import MANIFEST, verify, write_manifest
from model.artifact.network import build_from_artifact
from model.artifact.onnx_runtime import OPSET, OnnxLogits
from model.artifact.predictor import IntentPredictor
from model.core.errors import FlywheelError
from model.train import onnx_export
from model.train.fit import FitResult
from model.train.package import write_artifact
from tests.helpers.serving import NAME, free_port, server_output, start_server, stop_server, wait_ready

# one word to far past max_length (64 tokens): every batch below mixes lengths, so it is padded,
# and the longest is truncated
TEXTS = [
    "refund",
    "where is my order",
    "I was charged twice for the same thing last week, can you fix it",
    "cancel",
    "my card keeps getting declined when I try to pay for the blue kettle",
    " ".join(["please help me track the parcel I ordered"] * 12),
    "reset password",
    "hi, the item arrived broken and I would like a replacement or my money back",
    "invoice",
    "can I change the delivery address of an order that already shipped?",
]


@pytest.fixture
def artifact(tmp_path, tiny_artifact) -> Path:
    """A private copy of the session's tiny artifact, free to be changed."""
    copy = tmp_path / "artifact"
    shutil.copytree(tiny_artifact["artifact"], copy)
    return copy


def test_packaging_writes_a_checked_model_onnx_under_the_manifest(tiny_artifact):
    folder = Path(tiny_artifact["artifact"])
    assert "model.onnx" in (folder / MANIFEST).read_text().split()
    check = json.loads((folder / "meta.json").read_text())["onnx"]
    assert check["file"] == "model.onnx" and check["opset"] == OPSET
    assert check["max_abs_probability_diff"] <= tiny_artifact["train_cfg"].onnx_tolerance
    assert check["checked_texts"] >= 2 and check["argmax_agreement"] == 1.0


def test_onnx_and_torch_give_the_same_predictions_on_padded_batches(tiny_artifact):
    ort = IntentPredictor.load(tiny_artifact["artifact"])
    pt = IntentPredictor.load(tiny_artifact["artifact"], runtime="torch")
    assert (ort.runtime, ort.meta["runtime"], ort.model) == ("onnx", "onnx", None)
    assert (pt.runtime, pt.meta["runtime"]) == ("torch", "torch")
    assert ort.temperature == pt.temperature and ort.threshold == pt.threshold
    reference = pt.probabilities(TEXTS, batch_size=1)  # one text per pass: no padding at all
    for batch_size in (1, 3, 4, 64):
        for predictor in (ort, pt):
            probs = predictor.probabilities(TEXTS, batch_size=batch_size)
            np.testing.assert_allclose(probs, reference, atol=1e-4, rtol=0)
    assert [(p.intent, p.fallback) for p in ort.predict(TEXTS)] == [(p.intent, p.fallback) for p in pt.predict(TEXTS)]
    assert ort.predict([]) == [] and ort.probabilities([]).shape == (0, len(ort.labels))


@pytest.mark.parametrize("texts, chunk", [(0, 1), (1, 1), (2, 1), (8, 4), (12, 6), (20, 5), (32, 8), (33, 6), (64, 8)])
def test_onnx_chunks_keep_every_core_busy(tiny_artifact, texts, chunk):
    predictor = IntentPredictor.load(tiny_artifact["artifact"])
    predictor.onnx = OnnxLogits(Path(tiny_artifact["artifact"]) / "model.onnx", threads=2)
    assert predictor._chunk_size(texts) == chunk


def test_tampered_model_onnx_refuses_to_load(artifact):
    path = artifact / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    for runtime in ("onnx", "torch"):  # the manifest covers it whichever runtime would run
        with pytest.raises(FlywheelError, match="model.onnx: sha256 does not match"):
            IntentPredictor.load(artifact, runtime=runtime)


def test_artifact_without_model_onnx_loads_with_torch(artifact, tiny_artifact):
    (artifact / "model.onnx").unlink()
    with pytest.raises(FlywheelError, match="model.onnx: listed in MANIFEST.sha256 but missing"):
        IntentPredictor.load(artifact)
    write_manifest(artifact)  # an artifact packaged without ONNX (older, or train.export_onnx: false)
    predictor = IntentPredictor.load(artifact)
    assert predictor.runtime == "torch" and predictor.meta["runtime"] == "torch"
    reference = IntentPredictor.load(tiny_artifact["artifact"]).probabilities(TEXTS)
    np.testing.assert_allclose(predictor.probabilities(TEXTS), reference, atol=1e-4, rtol=0)


def test_a_sealed_but_unreadable_model_onnx_is_named(artifact):
    (artifact / "model.onnx").write_bytes(b"not a protobuf")
    write_manifest(artifact)  # sealed as it is: the manifest says nothing about what is inside
    with pytest.raises(FlywheelError, match="model.onnx: ONNX Runtime cannot load it"):
        IntentPredictor.load(artifact)
    assert IntentPredictor.load(artifact, runtime="torch").runtime == "torch"


def test_unknown_runtime_is_refused(tiny_artifact):
    with pytest.raises(FlywheelError, match="unknown runtime 'tensorrt'"):
        IntentPredictor.load(tiny_artifact["artifact"], runtime="tensorrt")


def _fit_result(folder: Path) -> FitResult:
    label_map = json.loads((folder / "labels.json").read_text())
    labels, tags = label_map["labels"], label_map.get("entity_tags", [])
    model, tokenizer = build_from_artifact(folder, len(labels), len(tags))
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return FitResult(model.eval(), tokenizer, labels, "cpu", tags=tags)


def _meta(folder: Path) -> dict:
    meta = json.loads((folder / "meta.json").read_text())
    return {k: v for k, v in meta.items() if k not in ("onnx", "fallback_threshold")}


def test_write_artifact_exports_onnx_from_the_weights(tmp_path, tiny_artifact):
    source = Path(tiny_artifact["artifact"])
    target = tmp_path / "repackaged"
    write_artifact(
        _fit_result(source), target, threshold=0.5, meta=_meta(source), metrics_markdown="-", check_texts=TEXTS
    )
    verify(target)
    assert json.loads((target / "meta.json").read_text())["onnx"]["max_abs_probability_diff"] < 1e-4
    np.testing.assert_allclose(
        IntentPredictor.load(target).probabilities(TEXTS),
        IntentPredictor.load(source, runtime="torch").probabilities(TEXTS),
        atol=1e-4,
        rtol=0,
    )


def test_an_export_that_differs_from_pytorch_stops_the_artifact(tmp_path, tiny_artifact, monkeypatch):
    """An exporter that gets the graph wrong (here: a head vector off by a little) must never be sealed."""
    real_export = onnx_export.export

    def wrong_export(model, *args):
        broken = _fit_result(Path(tiny_artifact["artifact"])).model
        with torch.no_grad():
            broken.head.weight[0] += 0.05
        real_export(broken, *args)

    monkeypatch.setattr(onnx_export, "export", wrong_export)
    source = Path(tiny_artifact["artifact"])
    target = tmp_path / "never"
    with pytest.raises(FlywheelError, match="ONNX export differs from PyTorch: probabilities differ by up to"):
        write_artifact(
            _fit_result(source), target, threshold=0.5, meta=_meta(source), metrics_markdown="-", check_texts=TEXTS
        )
    assert not target.exists()
    assert not list(tmp_path.glob(".never.*")), "the staging folder is removed"


def test_export_can_be_switched_off(tmp_path, tiny_artifact):
    source = Path(tiny_artifact["artifact"])
    meta = _meta(source)
    meta["config"]["train"]["export_onnx"] = False
    write_artifact(_fit_result(source), tmp_path / "plain", threshold=0.5, meta=meta, metrics_markdown="-")
    assert not (tmp_path / "plain" / "model.onnx").exists()
    assert IntentPredictor.load(tmp_path / "plain").runtime == "torch"


@pytest.mark.parametrize("runtime, access_log", [("onnx", "false"), ("torch", "true")])
def test_server_answers_v1_and_v2_with_either_runtime(tiny_artifact, tmp_path, runtime, access_log):
    """Each runtime's server answers what the other runtime computes in process; no per-request log
    lines unless asked for (kserve's timing line never)."""
    other = IntentPredictor.load(tiny_artifact["artifact"], runtime="torch" if runtime == "onnx" else "onnx")
    expected = other.predict(TEXTS)
    work, port = tmp_path / "work", free_port()
    args = ["--stable", tiny_artifact["artifact"], "--runtime", runtime, "--access_log", access_log]
    proc = start_server(args, work, port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base, work)
        v1 = httpx.post(f"{base}/v1/models/{NAME}:predict", json={"instances": TEXTS}, timeout=30)
        assert v1.status_code == 200, v1.text
        v2 = httpx.post(
            f"{base}/v2/models/{NAME}/infer",
            json={"inputs": [{"name": "text", "shape": [len(TEXTS)], "datatype": "BYTES", "data": TEXTS}]},
            timeout=30,
        )
        assert v2.status_code == 200, v2.text
    finally:
        stop_server(proc)
    output = server_output(work)
    assert proc.returncode == 0, output
    assert ("POST /v1/models/" in output) == (access_log == "true"), output
    assert "kserve.io" not in output, output  # kserve's TimingMiddleware names its lines kserve.io.<route>
    served = json.loads((work / "reports" / "serve.json").read_text())["endpoints"][NAME]
    assert served["runtime"] == runtime
    preds = v1.json()["predictions"]
    outputs = {o["name"]: o["data"] for o in v2.json()["outputs"]}
    assert [p["intent"] for p in preds] == outputs["intent"] == [p.intent for p in expected]
    assert [p["fallback"] for p in preds] == outputs["fallback"] == [p.fallback for p in expected]
    np.testing.assert_allclose([p["confidence"] for p in preds], [p.confidence for p in expected], atol=1e-4)
    np.testing.assert_allclose(outputs["confidence"], [p.confidence for p in expected], atol=1e-4)
