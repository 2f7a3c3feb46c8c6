"""The online predictor: intent models served by the real ``kserve.ModelServer``.

One server hosts the stable model as ``NAME``, optionally a canary as ``NAME-canary`` (the local
stand-in for KServe's traffic split: the caller picks the arm), and optionally a shadow model that
predicts on every request of both arms without ever answering: its predictions only reach the
prediction log and the metrics, so agreement with the primary can be measured before a rollout.

Both of KServe's REST protocols are answered:
- V1: ``POST /v1/models/NAME:predict`` with ``{"instances": ["text", ...]}`` (or ``[{"text": ...}]``);
  the answer is ``{"predictions": [{"intent", "confidence", "fallback", "reply", "model_version",
  "request_id", "arm"}, ...]}``.
- V2 (Open Inference Protocol): ``POST /v2/models/NAME/infer`` with one BYTES input named ``text``;
  the outputs are ``intent``, ``reply`` (BYTES), ``confidence`` (FP32) and ``fallback`` (BOOL), the
  response ``id`` is the request id and ``parameters`` carry ``model_version`` and ``arm``.

The request id is the caller's ``ce-id`` header when present (the join key of KServe's logger, see
the collector), else ``x-request-id``, else the V2 request's ``id``, else a new UUID.

Concurrent requests are micro-batched: each model has one inference thread that takes whatever
texts are waiting (up to ``max_batch_size``, waiting at most ``max_batch_wait_ms`` for company), so a
busy server runs one forward pass for many users instead of many passes that compete for the CPU.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from timing_asgi import TimingMiddleware  # kserve's own dependency

from model.artifact.predictor import IntentPredictor, Prediction
from model.core.config import RegistryConfig, ServeConfig, required, setting
from model.core.errors import FlywheelError
from model.core.http_guard import BodyLimit, ensure_can_listen
from model.core.kserve_sdk import InferOutput, InferRequest, InferResponse, InvalidInput, kserve, kserve_server
from model.core.steps import StepResult
from model.serve.catalog import ResponseCatalog

STABLE, CANARY, SHADOW = "stable", "canary", "shadow"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
CONFIDENCE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 10)) + (0.95, 0.99, 1.0)
_ROUTE = re.compile(r"^/v[12]/models/([^/:]+)")


class ServingMetrics:
    """Prometheus series, labelled by model version and traffic arm (served by kserve at /metrics)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY):
        labels = ["model_version", "arm"]
        # names and labels are what the alert rules, the dashboard and canary analysis query
        self.requests = Counter(
            "flywheel_requests", "requests to a model, by HTTP status", labels + ["code"], registry=registry
        )
        self.latency = Histogram(
            "flywheel_request_duration_seconds",
            "time from request parsed to prediction ready",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.predictions = Counter(
            "flywheel_predictions", "predictions per intent", labels + ["intent"], registry=registry
        )
        self.confidence = Histogram(
            "flywheel_prediction_confidence",
            "confidence of the predicted intent",
            labels,
            buckets=CONFIDENCE_BUCKETS,
            registry=registry,
        )
        self.fallbacks = Counter("flywheel_fallbacks", "predictions handed off to a human", labels, registry=registry)
        self.errors = Counter(
            "flywheel_errors", "requests answered with an error status", labels + ["status"], registry=registry
        )
        self.batch_size = Histogram(
            "flywheel_batch_texts",
            "texts per forward pass",
            labels,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=registry,
        )
        self.shadow_agreement = Counter(
            "flywheel_shadow_agreement",
            "shadow predictions, by agreement with the primary",
            ["model_version", "primary_version", "agree"],
            registry=registry,
        )
        self._arms: dict[str, tuple[str, str]] = {}

    def add_endpoint(self, name: str, version: str, arm: str) -> None:
        self._arms[name] = (version, arm)

    def observe_status(self, path: str, status: int) -> None:
        """Count model requests and error answers per arm; models not served count as version and arm "unknown"."""
        match = _ROUTE.match(path)
        name = match.group(1) if match else ""
        version, arm = self._arms.get(name, ("unknown", "unknown"))
        if match:
            self.requests.labels(version, arm, str(status)).inc()
        if status >= 400:
            self.errors.labels(version, arm, str(status)).inc()

    def observe(self, version: str, arm: str, preds: list[Prediction], seconds: float) -> None:
        self.latency.labels(version, arm).observe(seconds)
        for p in preds:
            self.predictions.labels(version, arm, p.intent).inc()
            self.confidence.labels(version, arm).observe(p.confidence)
            if p.fallback:
                self.fallbacks.labels(version, arm).inc()


class PredictionLog:
    """Append-only JSON lines, one per prediction (shadow ones included), flushed per request.

    Texts are not written here: they reach the conversation store through the collector only.
    """

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = open(path, "a", encoding="utf-8")

    def write(self, records: list[dict]) -> None:
        self._fh.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future


class MicroBatcher:
    """Collects texts from concurrent requests into one forward pass on a dedicated thread."""

    def __init__(self, predict, max_batch_size: int, max_wait_s: float, on_batch=None):
        self._predict = predict
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_wait_s = max(0.0, float(max_wait_s))
        self._on_batch = on_batch
        self._pending: deque[_Job] = deque()
        self._pending_texts = 0
        self._last_jobs = 0
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flywheel-infer")

    async def predict(self, texts: list[str]) -> list[Prediction]:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._arrived = asyncio.Event()
            self._worker = loop.create_task(self._run())
        job = _Job(texts, loop.create_future())
        self._pending.append(job)
        self._pending_texts += len(texts)
        self._arrived.set()
        return await job.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            # A lone caller (one request waiting, and the last pass served only one) does not wait for
            # company that is not coming; under concurrency requests also pile up while the model runs.
            alone = len(self._pending) == 1 and self._last_jobs <= 1
            deadline = loop.time() + (0.0 if alone else self.max_wait_s)
            while self._pending_texts < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
            jobs, count = [], 0
            while self._pending and (not jobs or count + len(self._pending[0].texts) <= self.max_batch_size):
                job = self._pending.popleft()
                jobs.append(job)
                count += len(job.texts)
            self._pending_texts -= count
            self._last_jobs = len(jobs)
            texts = [t for job in jobs for t in job.texts]
            try:
                preds = await loop.run_in_executor(self._executor, self._predict, texts)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request, which answers 500
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            if self._on_batch:
                self._on_batch(len(texts))
            start = 0
            for job in jobs:
                if not job.future.done():
                    job.future.set_result(preds[start : start + len(job.texts)])
                start += len(job.texts)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class ParsedRequest:
    texts: list[str]
    protocol: str  # "v1" or "v2"
    request_id: str
    conversation_id: str
    started: float = field(default_factory=time.perf_counter)
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class LocalLogger:
    """Posts each call as KServe's request/response logger does: two binary-mode CloudEvents sharing ``ce-id``.

    Only for local mode, where no KServe logger proxy runs in front of the model. Like KServe's, its
    queue is bounded and a full queue makes the request wait; an event the collector does not accept
    is counted (``flywheel_logger_events_total{outcome}``), not retried.
    """

    def __init__(self, url: str, registry: CollectorRegistry = REGISTRY, max_pending: int = 100):
        self.url = url
        self.max_pending = max_pending
        self.outcomes = Counter(
            "flywheel_logger_events", "events posted to the collector", ["outcome"], registry=registry
        )
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    async def log(self, model: IntentModel, request: ParsedRequest, request_body: dict, response_body: dict) -> None:
        if self._worker is None or self._worker.done():
            self._queue = self._queue or asyncio.Queue(self.max_pending)
            self._worker = asyncio.get_running_loop().create_task(self._run())
        common = {
            "ce-specversion": "1.0",
            "ce-id": request.request_id,
            "ce-source": f"http://flywheel-serve/{model.name}",
            "ce-inferenceservicename": model.name,
            "ce-namespace": "local",
            "ce-component": "predictor",
            "ce-endpoint": "canary" if model.arm == CANARY else "default",
            "content-type": "application/json",
        }
        if request.conversation_id:
            common["ce-metadata"] = json.dumps({"X-Conversation-Id": [request.conversation_id]})
        answered = datetime.now(UTC)
        for kind, body, moment in (
            ("request", request_body, request.received_at),
            ("response", response_body, answered),
        ):
            headers = {**common, "ce-type": f"org.kubeflow.serving.inference.{kind}", "ce-time": moment.isoformat()}
            await self._queue.put((headers, json.dumps(body).encode()))

    async def _run(self) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                headers, body = await self._queue.get()
                try:
                    resp = await client.post(self.url, content=body, headers=headers)
                    self.outcomes.labels("accepted" if resp.status_code == 200 else f"refused_{resp.status_code}").inc()
                except httpx.HTTPError:
                    self.outcomes.labels("unreachable").inc()


def model_version(source: str, predictor: IntentPredictor, reg_cfg: RegistryConfig) -> str:
    """The MLflow version number for a ``models:/`` URI, else ``sha-<artifact digest prefix>``."""
    match = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@(.+))", source)
    if match and match.group(2):
        return match.group(2)
    if match:
        from model.registry import versions

        version = versions.alias_version(replace(reg_cfg, model_name=match.group(1)), match.group(3))
        if version is not None:
            return str(version)
    return f"sha-{predictor.digest[:12]}"


class IntentModel(kserve.Model):
    """One served model (one arm): parses V1/V2 requests, predicts in micro-batches, replies from the catalog."""

    def __init__(
        self,
        name: str,
        arm: str,
        source: str,
        cfg: ServeConfig,
        reg_cfg: RegistryConfig,
        catalog: ResponseCatalog,
        metrics: ServingMetrics,
        log: PredictionLog,
        shadow: IntentModel | None = None,
    ):
        super().__init__(name)
        self.arm, self.source, self.cfg, self.reg_cfg = arm, source, cfg, reg_cfg
        self.catalog, self.metrics, self.log, self.shadow = catalog, metrics, log, shadow
        self.predictor: IntentPredictor | None = None
        self.version = ""
        self._batcher: MicroBatcher | None = None
        self._background: set[asyncio.Task] = set()
        self.logger: LocalLogger | None = None  # set by serve_step in local mode
        self.expected_sha256 = ""  # set from the manifest: a different artifact never becomes ready
        self.pinned_version = ""  # the registry version the manifest names (a mounted folder does not know it)

    def load(self) -> bool:
        """Ready only once the artifact's manifest verified and the catalog covers every intent."""
        from model.registry.versions import open_model

        self.predictor = open_model(self.source, self.reg_cfg, self.cfg.runtime)
        if self.expected_sha256 and self.predictor.digest != self.expected_sha256:
            raise FlywheelError(
                f"{self.arm} model {self.source}: artifact digest {self.predictor.digest} is not "
                f"{self.expected_sha256}, the one the manifest records"
            )
        self.catalog.check_covers(self.predictor.labels, f"{self.arm} model {self.source}")
        self.version = self.pinned_version or model_version(self.source, self.predictor, self.reg_cfg)
        self._batcher = MicroBatcher(
            self.predictor.predict,
            self.cfg.max_batch_size,
            self.cfg.max_batch_wait_ms / 1000,
            on_batch=lambda n: self.metrics.batch_size.labels(self.version, self.arm).observe(n),
        )
        self.metrics.add_endpoint(self.name, self.version, self.arm)
        self.ready = True
        return self.ready

    def start(self) -> None:
        """ModelServer calls this for every model; readiness stays what load() decided."""

    def stop(self) -> None:
        if self._batcher:
            self._batcher.close()
        self.ready = False

    def validate(self, payload):
        return payload  # checked in preprocess, with messages that name the problem

    async def preprocess(self, payload, headers: dict[str, str] | None = None) -> ParsedRequest:
        headers = headers or {}
        if isinstance(payload, InferRequest):
            texts, protocol, body_id = self._v2_texts(payload), "v2", payload.id
        else:
            texts, protocol, body_id = self._v1_texts(payload), "v1", None
        self._check_texts(texts)
        request_id = headers.get("ce-id") or headers.get("x-request-id") or body_id or str(uuid.uuid4())
        return ParsedRequest(texts, protocol, str(request_id)[:200], str(headers.get("x-conversation-id", ""))[:200])

    def _v1_texts(self, payload) -> list[str]:
        if isinstance(payload, (bytes, str)):
            raise InvalidInput("expected a JSON body (content-type application/json) with 'instances'")
        if not isinstance(payload, dict):
            raise InvalidInput(f"expected a JSON object with 'instances', got a JSON {type(payload).__name__}")
        if "instances" not in payload:
            raise InvalidInput('missing \'instances\': send {"instances": ["text", ...]}')
        instances = payload["instances"]
        if not isinstance(instances, list):
            raise InvalidInput(f"'instances' must be a list of texts, got {type(instances).__name__}")
        texts = []
        for i, item in enumerate(instances):
            text = item.get("text") if isinstance(item, dict) else item
            if not isinstance(text, str):
                raise InvalidInput(f'instances[{i}]: expected a text or {{"text": ...}}, got {type(text).__name__}')
            texts.append(text)
        return texts

    def _v2_texts(self, request: InferRequest) -> list[str]:
        if len(request.inputs) != 1 or request.inputs[0].name != "text":
            names = [i.name for i in request.inputs]
            raise InvalidInput(f"expected exactly one input named 'text', got {names}")
        tensor = request.inputs[0]
        if tensor.datatype != "BYTES":
            raise InvalidInput(f"input 'text' must have datatype BYTES, got {tensor.datatype}")
        shape = list(tensor.shape or [])
        if not shape or any(not isinstance(d, int) or d < 0 for d in shape) or int(np.prod(shape)) != shape[0]:
            raise InvalidInput(f"input 'text' must have shape [N] or [N, 1], got {shape}")
        if tensor._raw_data is not None:
            try:
                values = [v.decode("utf-8") if isinstance(v, bytes) else v for v in tensor.as_numpy().reshape(-1)]
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidInput(f"input 'text': binary data does not match shape {shape}: {exc}") from exc
        else:
            values = list(np.asarray(tensor.data, dtype=object).reshape(-1)) if isinstance(tensor.data, list) else None
            if values is None:
                raise InvalidInput("input 'text': 'data' must be a list of texts")
        if len(values) != shape[0]:
            raise InvalidInput(f"input 'text': shape {shape} says {shape[0]} texts, data has {len(values)}")
        bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
        if bad:
            raise InvalidInput(f"input 'text': element {bad[0]} is {type(values[bad[0]]).__name__}, expected a text")
        return values

    def _check_texts(self, texts: list[str]) -> None:
        if not texts:
            raise InvalidInput("no texts to classify: send at least one instance")
        if len(texts) > self.cfg.max_instances:
            raise InvalidInput(f"too many instances: {len(texts)}, the limit is {self.cfg.max_instances} per request")
        for i, text in enumerate(texts):
            if not text.strip():
                raise InvalidInput(f"text {i} is empty")
            if len(text) > self.cfg.max_text_chars:
                raise InvalidInput(f"text {i} is {len(text)} characters long, the limit is {self.cfg.max_text_chars}")

    async def predict(self, request: ParsedRequest, headers: dict[str, str] | None = None, response_headers=None):
        preds = await self._batcher.predict(request.texts)
        seconds = time.perf_counter() - request.started
        self.metrics.observe(self.version, self.arm, preds, seconds)
        self.log.write(self._records(request, preds, seconds))
        if self.shadow is not None:
            task = asyncio.get_running_loop().create_task(self.shadow.shadow_predict(request, preds, self.version))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        replies = [self.catalog.reply(p.intent, p.fallback) for p in preds]
        if request.protocol == "v2":
            response = self._v2_response(request, preds, replies)
        else:
            response = {
                "predictions": [
                    {
                        "intent": p.intent,
                        "confidence": round(p.confidence, 6),
                        "fallback": p.fallback,
                        "reply": reply,
                        "model_version": self.version,
                        "arm": self.arm,
                        "request_id": request.request_id,
                    }
                    for p, reply in zip(preds, replies)
                ]
            }
        if self.logger is not None:
            await self.logger.log(self, request, *self._logged_bodies(request, response, preds, replies))
        return response

    def _logged_bodies(self, request: ParsedRequest, response, preds: list[Prediction], replies: list[str]):
        """The request and response as JSON, as KServe's logger would have read them off the wire."""
        if request.protocol == "v1":
            return {"instances": request.texts}, response
        n = [len(preds)]
        request_body = {
            "id": request.request_id,
            "inputs": [{"name": "text", "shape": n, "datatype": "BYTES", "data": request.texts}],
        }
        response_body = {
            "id": request.request_id,
            "model_name": self.name,
            "model_version": self.version,
            "outputs": [
                {"name": "intent", "shape": n, "datatype": "BYTES", "data": [p.intent for p in preds]},
                {"name": "confidence", "shape": n, "datatype": "FP32", "data": [p.confidence for p in preds]},
                {"name": "fallback", "shape": n, "datatype": "BOOL", "data": [p.fallback for p in preds]},
                {"name": "reply", "shape": n, "datatype": "BYTES", "data": replies},
            ],
            "parameters": {"model_version": self.version, "arm": self.arm},
        }
        return request_body, response_body

    def _v2_response(self, request: ParsedRequest, preds: list[Prediction], replies: list[str]) -> InferResponse:
        n = [len(preds)]
        outputs = [
            InferOutput("intent", n, "BYTES", [p.intent for p in preds]),
            InferOutput("confidence", n, "FP32", [p.confidence for p in preds]),
            InferOutput("fallback", n, "BOOL", [p.fallback for p in preds]),
            InferOutput("reply", n, "BYTES", replies),
        ]
        return InferResponse(
            request.request_id,
            self.name,
            outputs,
            model_version=self.version,
            parameters={"model_version": self.version, "arm": self.arm},
        )

    async def shadow_predict(self, request: ParsedRequest, primary: list[Prediction], primary_version: str) -> None:
        """Predict the same texts; log and count, never answer. A failing shadow never hurts the user."""
        started = time.perf_counter()
        try:
            preds = await self._batcher.predict(request.texts)
        except Exception as exc:  # noqa: BLE001
            self.metrics.errors.labels(self.version, self.arm, "shadow_failed").inc()
            kserve.logging.logger.error("shadow model %s failed: %s", self.version, exc)
            return
        seconds = time.perf_counter() - started
        self.metrics.observe(self.version, self.arm, preds, seconds)
        records = self._records(request, preds, seconds)
        for record, mine, theirs in zip(records, preds, primary):
            agree = mine.intent == theirs.intent and mine.fallback == theirs.fallback
            record.update(primary_version=primary_version, primary_intent=theirs.intent, agrees_with_primary=agree)
            self.metrics.shadow_agreement.labels(self.version, primary_version, str(agree).lower()).inc()
        self.log.write(records)

    def _records(self, request: ParsedRequest, preds: list[Prediction], seconds: float) -> list[dict]:
        now = datetime.now(UTC).isoformat()
        return [
            {
                "request_id": request.request_id,
                "index": i,
                "conversation_id": request.conversation_id,
                "timestamp": now,
                "predicted_intent": p.intent,
                "confidence": round(p.confidence, 6),
                "fallback": p.fallback,
                "model_version": self.version,
                "arm": self.arm,
                "endpoint": self.name,
                "latency_ms": round(seconds * 1000, 3),
            }
            for i, p in enumerate(preds)
        ]


def check_v2_binary(path: str, headers: dict[bytes, bytes], body: bytes) -> str | None:
    """Decode a binary-extension V2 request up front: kserve's own decoding answers 500 on a malformed one."""
    length = headers.get(b"inference-header-content-length")
    content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    if length is None or not path.endswith("/infer") or content_type in (b"application/json", b""):
        return None
    if not length.isdigit() or int(length) > len(body):
        return f"inference-header-content-length {length.decode('latin-1')!r} is not a length within the body"
    try:
        request = InferRequest.from_bytes(body, int(length), "check")
        for tensor in request.inputs:
            tensor.as_numpy()
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the request's fault
        return f"malformed binary inference request: {type(exc).__name__}: {exc}"
    return None


class LoopbackModelServer(kserve.ModelServer):
    """kserve's ModelServer with the listen address chosen by us (kserve hard-codes 0.0.0.0), and without
    kserve's per-request timing log (two getrusage calls and one log line per request: measured at a
    quarter of the event loop's time under load; ``flywheel_request_duration_seconds`` times requests)."""

    def __init__(self, host: str, **kwargs):
        super().__init__(**kwargs)
        self.host = host

    async def _serve(self):
        rest = self._rest_server
        if rest is not None:
            rest.config.host = self.host  # read by uvicorn when the coroutine starts serving
            add_kserve_middlewares = rest._add_middlewares

            def add_middlewares(app):  # runs when the coroutine starts, before the first request builds the stack
                add_kserve_middlewares(app)
                app.user_middleware[:] = [m for m in app.user_middleware if m.cls is not TimingMiddleware]

            rest._add_middlewares = add_middlewares
        await super()._serve()


def build_models(
    stable: str,
    canary: str,
    shadow: str,
    cfg: ServeConfig,
    reg_cfg: RegistryConfig,
    metrics: ServingMetrics,
    log: PredictionLog,
    stable_sha256: str = "",
    stable_version: str = "",
) -> list[IntentModel]:
    """Load and verify every model before anything listens; a bad artifact stops the start."""
    if not stable:
        raise FlywheelError("--stable is required: an artifact folder or a models:/ URI")
    catalog = ResponseCatalog.load(cfg.catalog)
    shadow_model = None
    if shadow:
        shadow_model = IntentModel(f"{cfg.endpoint}-shadow", SHADOW, shadow, cfg, reg_cfg, catalog, metrics, log)
        shadow_model.load()
    models = [IntentModel(cfg.endpoint, STABLE, stable, cfg, reg_cfg, catalog, metrics, log, shadow_model)]
    models[0].expected_sha256, models[0].pinned_version = stable_sha256, stable_version
    if canary:
        models.append(
            IntentModel(f"{cfg.endpoint}-canary", CANARY, canary, cfg, reg_cfg, catalog, metrics, log, shadow_model)
        )
    for model in models:
        model.load()
    return models


@dataclass
class ServeArgs:
    stable: str = required(
        "stable model: artifact folder (as KServe mounts it, /mnt/models) or models:/<name>@<alias> URI"
    )
    canary: str | None = setting(None, "canary model, served as <endpoint>-canary (the caller picks the arm)")
    shadow: str | None = setting(None, "shadow model: predicts on every request, logged and measured, never answers")
    stable_sha256: str | None = setting(
        None, "refuse to become ready unless the --stable artifact's manifest digest is this (the manifest records it)"
    )
    stable_version: str | None = setting(
        None,
        "registry version of the --stable model for logs and metrics (unset: from a models:/ URI, else sha-<digest>)",
    )


def serve_command(args: ServeArgs, *, serve: ServeConfig, registry: RegistryConfig) -> StepResult:
    """Serve stable/canary/shadow models with the KServe ModelServer (V1 and V2 REST) until SIGTERM."""
    return StepResult(
        *serve_step(
            args.stable, args.canary or "", args.shadow or "", serve, registry,
            args.stable_sha256 or "", args.stable_version or "",
        )
    )  # fmt: skip


def serve_step(
    stable: str,
    canary: str,
    shadow: str,
    cfg: ServeConfig,
    reg_cfg: RegistryConfig,
    stable_sha256: str = "",
    stable_version: str = "",
) -> tuple[dict, str]:
    """Run the predictor until SIGTERM/SIGINT; return what was served."""
    ensure_can_listen(cfg.host, cfg.http_port)
    log_path = Path(cfg.prediction_log)
    metrics = ServingMetrics()
    log = PredictionLog(log_path)
    models = build_models(stable, canary, shadow, cfg, reg_cfg, metrics, log, stable_sha256, stable_version)
    if cfg.logger_url:
        logger = LocalLogger(cfg.logger_url)
        for model in models:
            model.logger = logger
    kserve_server.app.add_middleware(
        BodyLimit, max_body_bytes=cfg.max_body_bytes, on_status=metrics.observe_status, check=check_v2_binary
    )
    server = LoopbackModelServer(
        cfg.host,
        http_port=cfg.http_port,
        enable_grpc=False,
        workers=1,
        enable_latency_logging=False,
        enable_docs_url=False,
    )
    if not cfg.access_log:
        # uvicorn writes an access line only while its logger has a handler (checked per connection)
        logging.getLogger("uvicorn.access").handlers = []
        logging.getLogger("uvicorn.access").propagate = False
    started = time.time()
    try:
        server.start(models)
    finally:
        log.close()
    served = {m.name: _served(m) for m in models}
    if models[0].shadow is not None:
        served[models[0].shadow.name] = _served(models[0].shadow)
    result = {
        "endpoints": served,
        "address": f"http://{cfg.host}:{cfg.http_port}",
        "prediction_log": str(log_path),
        "logger_url": cfg.logger_url,
        "uptime_s": round(time.time() - started, 1),
    }
    rows = "\n".join(
        f"| `{n}` | {v['arm']} | {v['model_version']} | {v['runtime']} | `{v['source']}` |" for n, v in served.items()
    )
    md = (
        f"## Predictor on {result['address']}\n\n| endpoint | arm | version | runtime | source |\n"
        f"|---|---|---|---|---|\n{rows}\n"
    )
    return result, md


def _served(model: IntentModel) -> dict:
    runtime = model.predictor.runtime
    return {"arm": model.arm, "model_version": model.version, "runtime": runtime, "source": model.source}
