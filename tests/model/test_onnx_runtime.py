"""The ONNX Runtime path on a tiny random BERT: export checked at packaging, sealed by the manifest,
the same probabilities as PyTorch, PyTorch when the artifact has no model.onnx, and the server on both.
(The int8 copy and its parity check: tests/test_int8_runtime.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch

from model.artifact.manifest import MANIFEST, verify, write_manifest
from model.artifact.onnx_runtime import OPSET, OnnxLogits
from model.artifact.predictor import IntentPredictor
from model.core.config import TrainConfig
from model.core.errors import FlywheelError
from model.train import onnx_export
from model.train.package import write_artifact
from model.train.runtimes import torch_only
from tests.helpers.artifacts import fit_result, meta_without_runtimes
from tests.helpers.artifacts import repackage as repackaged
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
    ort = IntentPredictor.load(tiny_artifact["artifact"], runtime="onnx-fp32")
    pt = IntentPredictor.load(tiny_artifact["artifact"], runtime="torch")
    assert (ort.runtime, ort.meta["runtime"], ort.model) == ("onnx-fp32", "onnx-fp32", None)
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
    for runtime in ("onnx-int8", "onnx-fp32", "torch"):  # the manifest covers it whichever runtime would run
        with pytest.raises(FlywheelError, match="model.onnx: sha256 does not match"):
            IntentPredictor.load(artifact, runtime=runtime)


def test_artifact_without_model_onnx_loads_with_torch(artifact, tiny_artifact):
    (artifact / "model.onnx").unlink()
    with pytest.raises(FlywheelError, match="model.onnx: listed in MANIFEST.sha256 but missing"):
        IntentPredictor.load(artifact)
    (artifact / "model.int8.onnx").unlink()  # an artifact packaged before int8, without ONNX: names no runtime
    meta = json.loads((artifact / "meta.json").read_text())
    (artifact / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "served_runtime"}))
    write_manifest(artifact)
    predictor = IntentPredictor.load(artifact)
    assert predictor.runtime == "torch" and predictor.meta["runtime"] == "torch"
    reference = IntentPredictor.load(tiny_artifact["artifact"], runtime="onnx-fp32").probabilities(TEXTS)
    np.testing.assert_allclose(predictor.probabilities(TEXTS), reference, atol=1e-4, rtol=0)


def test_a_sealed_but_unreadable_model_onnx_is_named(artifact):
    (artifact / "model.onnx").write_bytes(b"not a protobuf")
    write_manifest(artifact)  # sealed as it is: the manifest says nothing about what is inside
    with pytest.raises(FlywheelError, match="model.onnx: ONNX Runtime cannot load it"):
        IntentPredictor.load(artifact, runtime="onnx-fp32")
    assert IntentPredictor.load(artifact, runtime="torch").runtime == "torch"


def test_unknown_runtime_is_refused(tiny_artifact):
    with pytest.raises(FlywheelError, match="unknown runtime 'tensorrt'"):
        IntentPredictor.load(tiny_artifact["artifact"], runtime="tensorrt")


def repackage(source: Path, target: Path, cfg: TrainConfig | None = None, texts: list[str] = TEXTS) -> str:
    """Package ``source``'s weights again into ``target`` as training does: ONNX export, int8 copy, parity
    check on ``texts`` (with the source's calibrated thresholds), then the sealed artifact (its digest)."""
    return repackaged(source, target, pd.DataFrame({"text": texts}), cfg or TrainConfig())[1]


def test_write_artifact_exports_onnx_from_the_weights(tmp_path, tiny_artifact):
    source = Path(tiny_artifact["artifact"])
    target = tmp_path / "repackaged"
    repackage(source, target)
    verify(target)
    assert json.loads((target / "meta.json").read_text())["onnx"]["max_abs_probability_diff"] < 1e-4
    np.testing.assert_allclose(
        IntentPredictor.load(target, runtime="onnx-fp32").probabilities(TEXTS),
        IntentPredictor.load(source, runtime="torch").probabilities(TEXTS),
        atol=1e-4,
        rtol=0,
    )


def test_an_export_that_differs_from_pytorch_stops_the_artifact(tmp_path, tiny_artifact, monkeypatch):
    """An exporter that gets the graph wrong (here: a head vector off by a little) must never be sealed."""
    real_export = onnx_export.export

    def wrong_export(model, *args):
        broken = fit_result(Path(tiny_artifact["artifact"])).model
        with torch.no_grad():
            broken.head.weight[0] += 0.05
        real_export(broken, *args)

    monkeypatch.setattr(onnx_export, "export", wrong_export)
    source = Path(tiny_artifact["artifact"])
    target = tmp_path / "never"
    with pytest.raises(FlywheelError, match="ONNX export differs from PyTorch: probabilities differ by up to"):
        repackage(source, target)
    assert not target.exists()
    assert not (tmp_path / "never-exports" / "model.onnx").exists()
    assert not list(tmp_path.glob(".never.*")), "the staging folder is removed"


def test_export_can_be_switched_off(tmp_path, tiny_artifact):
    source = Path(tiny_artifact["artifact"])
    meta = meta_without_runtimes(source)
    meta["config"]["train"]["export_onnx"] = False
    served = torch_only(IntentPredictor.load(source, runtime="torch"))
    write_artifact(
        fit_result(source), tmp_path / "plain", threshold=0.5, meta=meta, metrics_markdown="-", served=served
    )
    assert not list((tmp_path / "plain").glob("*.onnx"))
    assert IntentPredictor.load(tmp_path / "plain").runtime == "torch"
    assert "Served runtime: `torch`" in (tmp_path / "plain" / "MODEL_CARD.md").read_text()


@pytest.mark.parametrize("runtime, access_log", [("onnx-fp32", "false"), ("torch", "true")])
def test_server_answers_v1_and_v2_with_either_runtime(tiny_artifact, tmp_path, runtime, access_log):
    """Each runtime's server answers what the other runtime computes in process; no per-request log
    lines unless asked for (kserve's timing line never)."""
    other = IntentPredictor.load(tiny_artifact["artifact"], runtime="torch" if runtime == "onnx-fp32" else "onnx-fp32")
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
