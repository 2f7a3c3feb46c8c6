"""The predictor on the real kserve ModelServer, started by `flywheel serve` on a loopback port.

Callers are the KServe SDK's own REST client (V1 and V2) and plain HTTP for the bad inputs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import yaml
from prometheus_client import CollectorRegistry

from model.artifact.predictor import IntentPredictor
from model.collect.export import export_window
from model.collect.store import open_store
from model.core.config import PROJECT_ROOT, RESPONSE_CATALOG, DataConfig, ServeConfig
from model.core.errors import FlywheelError
from model.core.kserve_sdk import InferRequest, kserve  # kserve parses sys.argv when imported directly
from model.registry import register
from model.serve.logger import AGENT_SOURCE_URI
from model.serve.metrics import ServingMetrics
from model.serve.prediction_log import MIN_CAP_BYTES, PredictionLog, prediction_log_files
from model.serve.predictor import MicroBatcher, ModelSource
from model.serve.serving import Arms, build_models
from model.train.steps import train_step
from tests.helpers.data import write_subset
from tests.helpers.registry import local_registry
from tests.helpers.serving import (
    NAME,
    free_port,
    read_prediction_log,
    server_output,
    start_server,
    stop_server,
    version_of,
    wait_ready,
)

CE_ID = "3f1c5b2e-0000-4000-8000-000000000001"


def _other_model(tmp_path_factory, sample_df, tiny_train_cfg, name: str, n_intents: int, seed: int) -> str:
    """A tiny model other than the stable one (other intents, other seed), so each arm answers for itself."""
    root = tmp_path_factory.mktemp(name)
    data = write_subset(sample_df, root / "data.csv", n_intents=n_intents)
    cfg, work = dataclasses.replace(tiny_train_cfg, seed=seed), root / "work"
    return train_step(data, DataConfig(), cfg, local_registry(work), work, root / "artifact")[0].artifact


@pytest.fixture(scope="module")
def arms(tiny_artifact, tmp_path_factory, sample_df, tiny_train_cfg) -> dict[str, str]:
    """A different artifact per arm: stable (5 intents), canary (4 intents), shadow (6 intents)."""
    return {
        "stable": tiny_artifact["artifact"],
        "canary": _other_model(tmp_path_factory, sample_df, tiny_train_cfg, "canary-model", 4, seed=1),
        "shadow": _other_model(tmp_path_factory, sample_df, tiny_train_cfg, "shadow-model", 6, seed=2),
    }


def offline_predictions(artifact: str, texts: list[str]) -> list:
    """What the artifact predicts in this process: what its arm must answer."""
    return IntentPredictor.load(artifact).predict(texts)


@pytest.fixture(scope="module")
def server(arms, tmp_path_factory):
    """stable + canary + shadow, each its own model; small limits so every bad input is cheap to send."""
    work = tmp_path_factory.mktemp("serve-work")
    port = free_port()
    log = work / "predictions.jsonl"
    proc = start_server(
        [
            "--stable",
            arms["stable"],
            "--canary",
            arms["canary"],
            "--shadow",
            arms["shadow"],
            "--prediction_log",
            str(log),
            "--prediction_log_max_bytes",
            str(MIN_CAP_BYTES),  # the smallest cap: the rotation test passes it in a few hundred requests
            "--max_instances",
            "8",
            "--max_text_chars",
            "200",
            "--max_body_bytes",
            "4096",
            "--max_batch_wait_ms",
            "20",  # generous, so the batching test does not depend on how fast this machine is
        ],
        work,
        port,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base, work)
        yield {"base": base, "port": port, "log": log, "proc": proc, "work": work, "arms": arms}
    finally:
        stop_server(proc)
        assert proc.returncode == 0, server_output(work)  # a clean stop writes the serve report
        assert json.loads((work / "reports" / "serve.json").read_text())["endpoints"][NAME]["arm"] == "stable"


@pytest.fixture(scope="module")
def catalog():
    return yaml.safe_load(RESPONSE_CATALOG.read_text())


def labels_of(artifact: str) -> list[str]:
    return json.loads((Path(artifact) / "labels.json").read_text())["labels"]


def kserve_client(protocol: str):
    return kserve.InferenceRESTClient(kserve.RESTConfig(protocol=protocol, retries=0, timeout=30))


def test_v1_predict_with_kserve_client(server, tiny_artifact, catalog):
    async def call():
        client = kserve_client("v1")
        return await client.infer(
            server["base"],
            {"instances": ["where is my order", {"text": "I want a refund"}]},
            model_name=NAME,
            headers={"ce-id": CE_ID, "x-conversation-id": "conv-1"},
        )

    out = asyncio.run(call())
    preds = out["predictions"]
    assert len(preds) == 2
    labels = labels_of(tiny_artifact["artifact"])
    for p in preds:
        assert p["intent"] in labels
        assert 0.0 <= p["confidence"] <= 1.0
        assert isinstance(p["fallback"], bool)
        expected = catalog["fallback"] if p["fallback"] else catalog["intents"][p["intent"]]
        assert p["reply"] == " ".join(expected.split())
        assert p["request_id"] == CE_ID and "arm" not in p  # a revision cannot know its arm: it names its version
        assert p["entities"] == []  # trained without entity data: an empty list, nothing more
        assert p["model_version"] == f"sha-{tiny_artifact['artifact_digest'][:12]}"


def test_v2_infer_with_kserve_client(server, tiny_artifact):
    texts = ["cancel my order please", "my card was declined", "how do I reset my password"]

    async def call(binary: bool):
        tensor = kserve.InferInput("text", [len(texts)], "BYTES")
        if binary:
            tensor.set_data_from_numpy(np.array(texts, dtype=object), binary_data=True)
        else:
            tensor.data = texts
        request = InferRequest(NAME, [tensor], request_id=f"req-{binary}")
        return await kserve_client("v2").infer(server["base"], request, model_name=NAME)

    for binary in (False, True):
        resp = asyncio.run(call(binary))
        assert resp.id == f"req-{binary}"
        out = {o.name: o for o in resp.outputs}
        assert set(out) == {"intent", "confidence", "fallback", "reply", "entities"}
        assert [v.decode() if isinstance(v, bytes) else v for v in out["entities"].as_numpy().tolist()] == ["[]"] * 3
        intents = [v.decode() if isinstance(v, bytes) else v for v in out["intent"].as_numpy().tolist()]
        assert len(intents) == 3 and set(intents) <= set(labels_of(tiny_artifact["artifact"]))
        conf = out["confidence"].as_numpy()
        assert conf.shape == (3,) and ((conf >= 0) & (conf <= 1)).all()
        assert resp.parameters == {"model_version": f"sha-{tiny_artifact['artifact_digest'][:12]}"}


def test_v1_and_v2_agree_and_canary_answers_with_its_own_version(server):
    text = "is the blue kettle back in stock"
    v1 = httpx.post(f"{server['base']}/v1/models/{NAME}:predict", json={"instances": [text]}).json()["predictions"][0]
    v2 = httpx.post(
        f"{server['base']}/v2/models/{NAME}/infer",
        json={"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]},
    ).json()
    assert v2["outputs"][0]["data"][0] == v1["intent"]
    assert v2["model_version"] == v1["model_version"]
    assert v2["outputs"][1]["data"][0] == pytest.approx(v1["confidence"], abs=1e-5)
    own = offline_predictions(server["arms"]["stable"], [text])[0]
    assert v1["intent"] == own.intent and v1["confidence"] == pytest.approx(own.confidence, abs=1e-5)
    canary = httpx.post(f"{server['base']}/v1/models/{NAME}-canary:predict", json={"instances": [text]}).json()
    answer = canary["predictions"][0]
    own = offline_predictions(server["arms"]["canary"], [text])[0]  # the canary's model, not the stable one's
    assert answer["model_version"] == version_of(server["arms"]["canary"])
    assert answer["model_version"] != v1["model_version"]
    assert answer["intent"] == own.intent and answer["confidence"] == pytest.approx(own.confidence, abs=1e-5)


def _log_lines(path: Path, request_id: str, want: int, timeout: float = 10) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [r for r in read_prediction_log(path) if r["request_id"] == request_id]
        if len(found) >= want:
            return found
        time.sleep(0.1)
    return found


def test_shadow_predicts_too_and_both_are_logged(server):
    rid = "shadow-check-1"
    resp = httpx.post(
        f"{server['base']}/v1/models/{NAME}:predict",
        json={"instances": ["my parcel never arrived"]},
        headers={"x-request-id": rid},
    )
    assert resp.status_code == 200
    # the user only gets the primary's answer
    assert [p["model_version"] for p in resp.json()["predictions"]] == [version_of(server["arms"]["stable"])]
    records = _log_lines(server["log"], rid, want=2)
    by_arm = {r["arm"]: r for r in records}
    assert set(by_arm) == {"stable", "shadow"}
    stable, shadow = by_arm["stable"], by_arm["shadow"]
    assert shadow["model_version"] == version_of(server["arms"]["shadow"]) != stable["model_version"]
    assert (
        shadow["predicted_intent"]
        == offline_predictions(server["arms"]["shadow"], ["my parcel never arrived"])[0].intent
    )
    assert shadow["primary_intent"] == stable["predicted_intent"]
    assert stable["runtime"] == shadow["runtime"] == "onnx-int8"  # what each artifact's gate measured
    assert shadow["agrees_with_primary"] is (shadow["predicted_intent"] == stable["predicted_intent"])
    assert "text" not in by_arm["stable"]  # texts reach the store redacted, through the collector only


def test_the_prediction_log_stays_under_its_cap_when_driven_past_it(server):
    """Over twice the cap (--prediction_log_max_bytes, here the smallest allowed) of predictions through the real
    server: the log rotates, its files together stay under the cap, each under its quarter, every line whole;
    the newest predictions are kept and the oldest dropped."""
    texts = [f"where is my order number {i}" for i in range(8)]
    conversation = "c" * 200  # ids are logged whole, up to 200 characters: long lines pass the cap sooner
    ids = [f"rotation-{n:04d}-".ljust(200, "r") for n in range(200)]
    with httpx.Client(base_url=server["base"], timeout=30) as client:
        for rid in ids:
            headers = {"x-request-id": rid, "x-conversation-id": conversation}
            resp = client.post(f"/v1/models/{NAME}:predict", json={"instances": texts}, headers=headers)
            assert resp.status_code == 200, resp.text
    last = _log_lines(server["log"], ids[-1], want=16)  # its 8 stable and 8 shadow lines (the shadow's come later)
    assert len(last) == 16
    records = read_prediction_log(server["log"])  # every line of every file parses: rotation splits no line
    mine = [r for r in records if r["request_id"].startswith("rotation-")]
    produced = len(ids) * 16 * min(len(json.dumps(r, separators=(",", ":"))) + 1 for r in mine)
    assert produced > 2 * MIN_CAP_BYTES  # the requests logged more than twice what the cap keeps
    files = prediction_log_files(server["log"])
    sizes = [f.stat().st_size for f in files]
    assert [f.name for f in files] == [f"{server['log'].name}{s}" for s in (".3", ".2", ".1", "")]
    assert sum(sizes) <= MIN_CAP_BYTES and max(sizes) <= MIN_CAP_BYTES // 4, sizes
    kept = {r["request_id"] for r in mine}
    assert ids[0] not in kept and ids[-1] in kept


def test_a_prediction_log_cap_too_small_for_its_lines_is_refused(tmp_path):
    with pytest.raises(FlywheelError, match=f"too small: at least {MIN_CAP_BYTES}.*or 0 for no prediction log"):
        PredictionLog(tmp_path / "p.jsonl", MIN_CAP_BYTES - 1)
    assert not (tmp_path / "p.jsonl").exists()


BINARY_HEAD = json.dumps(
    {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 20}}]}
).encode()
# the binary extension: a 3-byte text (length-prefixed) after the JSON head
BINARY_TEXT_HEAD = json.dumps(
    {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 7}}]}
).encode()
BAD_INPUTS = [
    # (what, path suffix, body, headers, status, message fragment)
    (
        "malformed JSON v1",
        ":predict",
        b'{"instances": ["hi"',
        {"content-type": "application/json"},
        400,
        "Unrecognized request format",
    ),
    ("malformed JSON v2", "/infer", b'{"inputs": [', {"content-type": "application/json"}, 422, "json"),
    ("not JSON at all", ":predict", b"hello", {"content-type": "text/plain"}, 400, "expected a JSON body"),
    ("JSON list", ":predict", b'["hi"]', {"content-type": "application/json"}, 400, "got a JSON list"),
    (
        "missing instances",
        ":predict",
        b'{"texts": ["hi"]}',
        {"content-type": "application/json"},
        400,
        "missing 'instances'",
    ),
    (
        "instances not a list",
        ":predict",
        b'{"instances": "hi"}',
        {"content-type": "application/json"},
        400,
        "must be a list",
    ),
    ("number instance", ":predict", b'{"instances": [42]}', {"content-type": "application/json"}, 400, "instances[0]"),
    (
        "null text",
        ":predict",
        b'{"instances": [{"text": null}]}',
        {"content-type": "application/json"},
        400,
        "instances[0]",
    ),
    ("no instances", ":predict", b'{"instances": []}', {"content-type": "application/json"}, 400, "no texts"),
    ("empty text", ":predict", b'{"instances": ["   "]}', {"content-type": "application/json"}, 400, "text 0 is empty"),
    (
        "over-long text",
        ":predict",
        json.dumps({"instances": ["x" * 201]}).encode(),
        {"content-type": "application/json"},
        400,
        "201 characters",
    ),
    (
        "too many instances",
        ":predict",
        json.dumps({"instances": ["hi"] * 9}).encode(),
        {"content-type": "application/json"},
        400,
        "too many instances: 9",
    ),
    (
        "over-size body",
        ":predict",
        json.dumps({"instances": ["hi " * 60] * 30}).encode(),
        {"content-type": "application/json"},
        413,
        "too large",
    ),
    (
        "v2 wrong input name",
        "/infer",
        json.dumps({"inputs": [{"name": "query", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}).encode(),
        {"content-type": "application/json"},
        400,
        "named 'text'",
    ),
    (
        "v2 wrong datatype",
        "/infer",
        json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "INT32", "data": [1]}]}).encode(),
        {"content-type": "application/json"},
        400,
        "datatype BYTES",
    ),
    (
        "v2 shape mismatch",
        "/infer",
        json.dumps({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["hi"]}]}).encode(),
        {"content-type": "application/json"},
        400,
        "says 2 texts",
    ),
    (
        "v2 2-D shape",
        "/infer",
        json.dumps({"inputs": [{"name": "text", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}]}).encode(),
        {"content-type": "application/json"},
        400,
        "shape [N] or [N, 1]",
    ),
    (
        "v2 non-text element",
        "/infer",
        json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [7]}]}).encode(),
        {"content-type": "application/json"},
        400,
        "expected a text",
    ),
    ("v2 missing inputs", "/infer", b'{"id": "x"}', {"content-type": "application/json"}, 422, "inputs"),
    (
        "v2 binary without length header",
        "/infer",
        b"\x00\x01",
        {"content-type": "application/octet-stream"},
        400,
        "header is missing",
    ),
    (
        "v2 binary tensor garbage",
        "/infer",
        BINARY_HEAD + b"X" * 20,
        {"content-type": "application/octet-stream", "inference-header-content-length": str(len(BINARY_HEAD))},
        400,
        "malformed binary inference request",
    ),
    (
        "v2 binary length past the body",
        "/infer",
        BINARY_HEAD,
        {"content-type": "application/octet-stream", "inference-header-content-length": "99999"},
        400,
        "not a length within the body",
    ),
    (
        "v2 binary length not a number",
        "/infer",
        BINARY_HEAD,
        {"content-type": "application/octet-stream", "inference-header-content-length": "abc"},
        400,
        "not a length within the body",
    ),
    ("unknown model", ":predict", b'{"instances": ["hi"]}', {"content-type": "application/json"}, 404, "nope"),
    # a lone surrogate: a JSON \\u escape that decodes to no character (the bytes a client sends, escape and all)
    (
        "v2 lone surrogate",
        "/infer",
        rb'{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["\ud800"]}]}',
        {"content-type": "application/json"},
        400,
        "text 0 holds a lone UTF-16 surrogate (U+D800 at character 0)",
    ),
    (
        "v2 lone low surrogate in the second text",
        "/infer",
        rb'{"inputs":[{"name":"text","shape":[2],"datatype":"BYTES","data":["ok","where \udc00 is it"]}]}',
        {"content-type": "application/json"},
        400,
        "text 1 holds a lone UTF-16 surrogate (U+DC00 at character 6)",
    ),
    (
        "v1 lone surrogate",
        ":predict",
        rb'{"instances": ["hi \ud83d"]}',
        {"content-type": "application/json"},
        400,
        "surrogate",
    ),
    (
        "v1 lone surrogate form-encoded",  # `curl -d` sends JSON as application/x-www-form-urlencoded
        ":predict",
        rb'{"instances": [{"text": "\ud800"}]}',
        {"content-type": "application/x-www-form-urlencoded"},
        400,
        "text 0 holds a lone UTF-16 surrogate",
    ),
    (
        "v2 binary text not UTF-8",
        "/infer",
        BINARY_TEXT_HEAD + len(b"\xed\xa0\x80").to_bytes(4, "little") + b"\xed\xa0\x80",
        {"content-type": "application/octet-stream", "inference-header-content-length": str(len(BINARY_TEXT_HEAD))},
        400,
        "using UTF-8",  # the encoded surrogate D800 (ED A0 80), which UTF-8 forbids
    ),
]


@pytest.mark.parametrize(
    ("what", "suffix", "body", "headers", "status", "fragment"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_gets_4xx_naming_the_problem(server, what, suffix, body, headers, status, fragment):
    name = "nope" if what == "unknown model" else NAME
    url = (
        f"{server['base']}/v1/models/{name}{suffix}"
        if suffix == ":predict"
        else f"{server['base']}/v2/models/{name}{suffix}"
    )
    resp = httpx.post(url, content=body, headers=headers, timeout=30)
    assert resp.status_code == status, resp.text
    assert fragment.lower() in resp.text.lower()
    # and the server keeps serving
    ok = httpx.post(f"{server['base']}/v1/models/{NAME}:predict", json={"instances": ["hello"]}, timeout=30)
    assert ok.status_code == 200


def test_metrics_are_labelled_by_version_only(server, tiny_artifact):
    """No `arm` label: in a cluster each revision runs `serve --stable`; the collector's flywheel_arm_info says."""
    httpx.post(f"{server['base']}/v1/models/{NAME}:predict", json={"instances": ["where is my order"]})
    httpx.post(f"{server['base']}/v1/models/{NAME}:predict", json={"instances": []})
    text = httpx.get(f"{server['base']}/metrics").text
    version = f"sha-{tiny_artifact['artifact_digest'][:12]}"
    for series in (
        "flywheel_request_duration_seconds_bucket",
        "flywheel_predictions_total",
        "flywheel_prediction_confidence_bucket",
        "flywheel_batch_texts_bucket",
    ):
        assert any(line.startswith(series) and f'model_version="{version}"' in line for line in text.splitlines()), (
            series
        )
    shadow = version_of(server["arms"]["shadow"])
    assert any(line.startswith("flywheel_predictions_total") and shadow in line for line in text.splitlines())
    assert not [line for line in text.splitlines() if line.startswith("flywheel_") and "arm=" in line]
    assert any(line.startswith("flywheel_fallbacks_total") for line in text.splitlines())
    errors = [line for line in text.splitlines() if line.startswith("flywheel_errors_total") and 'status="400"' in line]
    assert errors and f'model_version="{version}"' in errors[0] and float(errors[0].rsplit(" ", 1)[1]) >= 1
    for code in ("200", "400"):  # every model request by status: the alert rules' error rate
        assert _metric(text, "flywheel_requests_total", model_version=version, code=code) >= 1


def test_listens_on_loopback_only(server):
    port_hex = f"{server['port']:04X}"
    listening = [
        line.split()[1]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        + Path("/proc/net/tcp6").read_text().splitlines()[1:]
        if line.split()[1].endswith(":" + port_hex) and line.split()[3] == "0A"
    ]
    assert listening == [f"0100007F:{port_hex}"]


def test_tampered_artifact_is_never_ready(tiny_artifact, tmp_path):
    art = tmp_path / "artifact"
    shutil.copytree(tiny_artifact["artifact"], art)
    with open(art / "labels.json", "a") as fh:
        fh.write(" ")
    port = free_port()
    proc = start_server(["--stable", str(art)], tmp_path / "work", port)
    proc.wait(timeout=120)
    out = server_output(tmp_path / "work")
    assert proc.returncode == 2
    assert "labels.json" in out and "sha256 does not match" in out
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1)


def test_catalog_must_cover_every_intent(tiny_artifact, tmp_path):
    catalog = yaml.safe_load(RESPONSE_CATALOG.read_text())
    missing = labels_of(tiny_artifact["artifact"])[0]
    del catalog["intents"][missing]
    path = tmp_path / "responses.yaml"
    path.write_text(yaml.safe_dump(catalog))
    proc = start_server(["--stable", tiny_artifact["artifact"], "--catalog", str(path)], tmp_path / "work", free_port())
    proc.wait(timeout=120)
    out = server_output(tmp_path / "work")
    assert proc.returncode == 2 and f"no reply for intent(s) {missing}" in out


def test_micro_batcher_joins_concurrent_requests_and_routes_answers():
    calls: list[list[str]] = []

    def slow_echo(texts):
        calls.append(list(texts))
        time.sleep(0.05)
        return [f"answer:{t}" for t in texts]

    async def run():
        batcher = MicroBatcher(slow_echo, max_batch_size=8, max_wait_s=0.01)
        results = await asyncio.gather(*(batcher.predict([f"q{i}", f"r{i}"]) for i in range(20)))
        batcher.close()
        return results

    results = asyncio.run(run())
    assert results == [[f"answer:q{i}", f"answer:r{i}"] for i in range(20)]
    assert len(calls) < 20 and max(len(c) for c in calls) <= 8
    assert sorted(t for c in calls for t in c) == sorted(t for i in range(20) for t in (f"q{i}", f"r{i}"))


def test_micro_batcher_error_reaches_every_waiting_request():
    def broken(texts):
        raise RuntimeError("model exploded")

    async def run():
        batcher = MicroBatcher(broken, max_batch_size=4, max_wait_s=0.0)
        out = await asyncio.gather(*(batcher.predict(["x"]) for _ in range(3)), return_exceptions=True)
        batcher.close()
        return out

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(run()))


def test_serves_an_mlflow_model_uri_with_its_registry_version(tiny_artifact, tmp_path, monkeypatch):
    work = tmp_path / "work"  # the registry and the server (started with --work-dir) share its MLflow store
    reg = local_registry(work)
    predictor = IntentPredictor.load(tiny_artifact["artifact"])
    version = register.register(reg, Path(tiny_artifact["artifact"]), predictor.meta, predictor.digest)
    register.promote(reg, version.version)
    port = free_port()
    proc = start_server(["--stable", "models:/flywheel-intent@champion"], work, port)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}", work)
        resp = httpx.post(
            f"http://127.0.0.1:{port}/v1/models/{NAME}:predict", json={"instances": ["where is my order"]}
        )
        assert resp.status_code == 200
        assert resp.json()["predictions"][0]["model_version"] == str(version.version)
    finally:
        stop_server(proc)


def _metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_concurrent_requests_all_go_through_counted_forward_passes(server):
    """32 concurrent users: every answer right, every text counted in exactly one forward pass. How many
    passes they took depends on how the requests interleave (the batching itself is tested above)."""
    base = server["base"]

    def counts() -> tuple[float, float]:
        text = httpx.get(f"{base}/metrics").text
        return tuple(
            _metric(text, f"flywheel_batch_texts_{k}", model_version=version_of(server["arms"]["stable"]))
            for k in ("count", "sum")
        )

    before = counts()

    async def burst():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post(f"{base}/v1/models/{NAME}:predict", json={"instances": [f"where is order {i}"]})
                    for i in range(32)
                )
            )

    answers = asyncio.run(burst())
    assert all(a.status_code == 200 for a in answers)
    expected = [
        p.intent for p in offline_predictions(server["arms"]["stable"], [f"where is order {i}" for i in range(32)])
    ]
    assert [a.json()["predictions"][0]["intent"] for a in answers] == expected
    passes, texts = (after - was for after, was in zip(counts(), before))
    assert texts == 32 and 1 <= passes <= 32


def test_local_logger_posts_calls_to_the_collector(arms, tmp_path):
    """Local mode: the predictor posts the CloudEvents KServe's logger would (empty ce-endpoint, the agent's
    fallback source http://localhost:9081/ from every model, each event's own time, the client's Content-Type)
    to `flywheel collect`, which attributes each answer's arm from its version and the mounted arms ConfigMap;
    the export joins them."""
    work, store = tmp_path / "work", f"sqlite:///{tmp_path / 'conversations.db'}"
    work.mkdir()
    arms_dir = tmp_path / "arms"  # the ConfigMap flywheel-arms as the kubelet mounts it
    arms_dir.mkdir()
    (arms_dir / "stable").write_text(version_of(arms["stable"]))
    (arms_dir / "canary").write_text(version_of(arms["canary"]))
    collector_port, port = free_port(), free_port()
    env = {**os.environ, "FLYWHEEL_WORK_DIR": str(work)}
    collector = subprocess.Popen(
        [sys.executable, "-m", "scripts.cli", "collect", "--http_port", str(collector_port), "--store_url", store,
         "--arms_dir", str(arms_dir), "--report_dir", str(work / "reports")],
        cwd=PROJECT_ROOT, env=env, stdout=open(work / "collector.log", "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    logger_url = f"http://127.0.0.1:{collector_port}/"
    proc = start_server(
        ["--stable", arms["stable"], "--canary", arms["canary"], "--logger_url", logger_url], work, port
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base, work)
        deadline = time.time() + 60  # the logger does not retry: the collector must be up before the first call
        while time.time() < deadline:
            try:
                if httpx.get(f"{logger_url}healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        v1 = httpx.post(
            f"{base}/v1/models/{NAME}:predict",
            json={"instances": ["where is my order"]},
            headers={"ce-id": "local-1", "x-conversation-id": "conv-local"},
        ).json()["predictions"][0]
        v2 = httpx.post(
            f"{base}/v2/models/{NAME}-canary/infer",
            json={"id": "local-2", "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]},
        ).json()
        form = httpx.post(  # JSON sent form-encoded, as `curl -d` does: the logger forwards that Content-Type
            f"{base}/v1/models/{NAME}-canary:predict",
            content=json.dumps({"instances": ["my card is blocked"]}),
            headers={"ce-id": "local-3", "content-type": "application/x-www-form-urlencoded"},
        )
        assert form.status_code == 200, form.text
        deadline = time.time() + 30
        while time.time() < deadline and 'outcome="accepted"} 6.0' not in httpx.get(f"{base}/metrics").text:
            time.sleep(0.2)
        now = datetime.now(UTC)
        engine = open_store(store)
        result = export_window(engine, now - timedelta(hours=1), now + timedelta(minutes=1), tmp_path / "x.parquet")
        with engine.connect() as conn:
            stored = [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM inference_events"))]
    finally:
        for p in (proc, collector):
            stop_server(p)
    assert result.rows == 4, (work / "collector.log").read_text()
    rows = {r["request_id"]: r for r in pq.read_table(tmp_path / "x.parquet").to_pylist()}
    first = rows["local-1"]
    assert (first["text"], first["predicted_intent"], first["arm"], first["conversation_id"]) == (
        "where is my order",
        v1["intent"],
        "stable",
        "conv-local",
    )
    assert first["model_version"] == v1["model_version"] == version_of(arms["stable"]) and first["latency_ms"] >= 0
    assert {r["entities"] for r in rows.values()} == {"[]"} and v1["entities"] == []  # an intent-only model
    assert [rows[f"local-2/{i}"]["predicted_intent"] for i in (0, 1)] == v2["outputs"][0]["data"]
    assert rows["local-2/1"]["arm"] == "canary" and rows["local-2/1"]["text"] == "b"
    # exactly what KServe's logger sends: no arm in the headers, one source for every revision
    assert {e["endpoint"] for e in stored} == {""} and len(stored) == 6
    assert {e["source"] for e in stored} == {AGENT_SOURCE_URI}
    assert rows["local-3"]["arm"] == "canary" and rows["local-3"]["text"] == "my card is blocked"
    by_call = {(e["event_id"], e["kind"]): e for e in stored}
    for call in ("local-1", "local-2", "local-3"):  # ce-time: the request's arrival, then its answer's completion
        assert by_call[call, "request"]["event_time"] <= by_call[call, "response"]["event_time"]
    assert by_call["local-2", "request"]["content_type"] == "application/json"
    assert by_call["local-3", "request"]["content_type"] == "application/x-www-form-urlencoded"
    assert by_call["local-3", "response"]["content_type"] == "application/x-www-form-urlencoded"
    assert json.loads(by_call["local-1", "request"]["metadata_json"]) == {"X-Conversation-Id": ["conv-local"]}
    assert json.loads(by_call["local-2", "request"]["metadata_json"]) == {}


def test_micro_batcher_does_not_make_a_lone_caller_wait():
    """A wait of an hour for company: a lone caller that waited at all would never finish in a minute,
    and one that does not wait finishes in milliseconds, on any machine."""

    async def run():
        batcher = MicroBatcher(lambda texts: list(texts), max_batch_size=8, max_wait_s=3600)
        try:
            for i in range(3):  # one caller at a time, as a single chat user
                assert await asyncio.wait_for(batcher.predict([f"t{i}"]), timeout=60) == [f"t{i}"]
        finally:
            batcher.close()

    asyncio.run(run())


def test_micro_batcher_joins_requests_that_arrive_while_the_model_runs():
    """While one pass runs, every request that arrives waits and then shares the next pass."""
    release, calls = threading.Event(), []

    def held_predict(texts):
        calls.append(list(texts))
        if len(calls) == 1:
            release.wait(60)  # the first pass is "slow" until all the others have queued
        return list(texts)

    async def run():
        batcher = MicroBatcher(held_predict, max_batch_size=64, max_wait_s=0.0)
        try:
            first = asyncio.ensure_future(batcher.predict(["first"]))
            while not calls:
                await asyncio.sleep(0.001)
            rest = [asyncio.ensure_future(batcher.predict([f"q{i}"])) for i in range(31)]
            await asyncio.sleep(0)  # let them queue
            release.set()
            return await first, await asyncio.gather(*rest)
        finally:
            batcher.close()

    first, rest = asyncio.run(run())
    assert first == ["first"] and rest == [[f"q{i}"] for i in range(31)]
    assert calls == [["first"], [f"q{i}" for i in range(31)]]  # 32 requests, two forward passes


def test_the_manifest_pins_the_stable_artifact_and_names_its_version(tiny_artifact, tmp_path):
    """In a cluster the manifest passes --stable-sha256/--stable-version: another artifact never gets ready."""
    art = tiny_artifact["artifact"]
    digest = IntentPredictor.load(art).digest

    def build(sha: str, version: str = ""):
        metrics = ServingMetrics(CollectorRegistry())
        return build_models(Arms(ModelSource(art, version), stable_sha256=sha), ServeConfig(), metrics, None)

    (model,) = build(digest, "12")
    assert model.ready and model.version == "12"
    with pytest.raises(FlywheelError, match=f"is not {'0' * 64}, the one the manifest records"):
        build("0" * 64)
    (unpinned,) = build("")
    assert unpinned.version == f"sha-{digest[:12]}"
    for m in (model, unpinned):
        m.stop()
