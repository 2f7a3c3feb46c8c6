"""The predictor: one served intent model (one arm) as a ``kserve.Model``.

It follows KServe's Model contract, one job per step: ``preprocess`` parses a V1 or V2 request into
texts (``protocol``), ``predict`` runs the model on them, micro-batched with the texts of concurrent
requests, and ``postprocess`` builds the V1 or V2 answer with the catalog's replies. Around them hang
small parts: the metrics and the prediction log record each prediction, a shadow model (if any)
predicts the same texts in the background without ever answering, and in local mode the stand-in
for KServe's logger posts each call to the collector.

Micro-batching: each model has one inference thread that takes whatever texts are waiting (up to
``max_batch_size``, waiting at most ``max_batch_wait_ms`` for company), so a busy server runs one
forward pass for many users instead of many passes that compete for the CPU.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from model.artifact.predictor import IntentPredictor, Prediction
from model.core.batching import AsyncBatcher
from model.core.config import ServeConfig
from model.core.errors import FlywheelError
from model.core.kserve_sdk import kserve
from model.serve.catalog import ResponseCatalog
from model.serve.logger import LocalLogger
from model.serve.metrics import ServingMetrics
from model.serve.prediction_log import PredictionLog, prediction_records
from model.serve.protocol import (
    Endpoint,
    ParsedRequest,
    parse_request,
    request_wire_body,
    response_wire_body,
    v1_response,
    v2_response,
)


class MicroBatcher:
    """Texts of concurrent requests joined into one forward pass on a dedicated thread.

    An ``AsyncBatcher`` of requests, each weighing its number of texts: ``max_batch_size`` counts texts.
    """

    def __init__(self, predict: Callable[[list[str]], list[Prediction]], max_batch_size: int, max_wait_s: float):
        self._predict = predict
        self._batcher = AsyncBatcher(
            self._predict_requests, max_batch_size, max_wait_s, weight=len, thread_name="flywheel-infer"
        )

    async def predict(self, texts: list[str]) -> list[Prediction]:
        return await self._batcher.submit(texts)

    def _predict_requests(self, requests: list[list[str]]) -> list[list[Prediction]]:
        preds = self._predict([text for texts in requests for text in texts])
        out, start = [], 0
        for texts in requests:
            out.append(preds[start : start + len(texts)])
            start += len(texts)
        return out

    def close(self) -> None:
        self._batcher.close()


@dataclass
class PredictedRequest:
    """What ``predict`` hands ``postprocess``: the request and its predictions."""

    request: ParsedRequest
    predictions: list[Prediction]


@dataclass(frozen=True)
class ModelSource:
    """A model as the server gets it: an artifact folder (KServe's storage initializer puts it at
    /mnt/models), the registry version to report, and where it came from. A ``models:/`` URI is
    resolved to its folder and version where serving starts (``model.deploy.serve_step``), so this
    package never talks to MLflow."""

    folder: str
    version: str = ""  # unset: sha-<artifact digest prefix> (a folder does not know its registry version)
    origin: str = ""  # what the user named, e.g. models:/flywheel-intent@champion (unset: the folder)

    @property
    def label(self) -> str:
        return self.origin or self.folder


def open_artifact(folder: Path, runtime: str) -> IntentPredictor:
    """The predictor of an artifact folder, its manifest verified (``IntentPredictor.load``)."""
    return IntentPredictor.load(folder, runtime=runtime)


class IntentModel(kserve.Model):
    """One served model (one arm): parses V1/V2 requests, predicts in micro-batches, replies from the catalog."""

    def __init__(
        self,
        name: str,
        arm: str,
        model: ModelSource,
        *,
        cfg: ServeConfig,
        catalog: ResponseCatalog,
        metrics: ServingMetrics,
        log: PredictionLog | None,
        shadow: IntentModel | None = None,
        expected_sha256: str = "",
    ):
        super().__init__(name)
        self.arm, self.model, self.source, self.cfg = arm, model, model.label, cfg
        self.catalog, self.metrics, self.log, self.shadow = catalog, metrics, log, shadow
        self.expected_sha256 = expected_sha256  # from the manifest: a different artifact never becomes ready
        self.predictor: IntentPredictor | None = None
        self.version = ""
        self.logger: LocalLogger | None = None  # set by serve_step in local mode
        self._batcher: MicroBatcher | None = None
        self._background: set[asyncio.Task] = set()

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.name, self.version, self.arm)

    def load(self) -> bool:
        """Ready only once the artifact's manifest verified and the catalog covers every intent."""
        self.predictor = open_artifact(Path(self.model.folder), self.cfg.runtime)
        if self.expected_sha256 and self.predictor.digest != self.expected_sha256:
            raise FlywheelError(
                f"{self.arm} model {self.source}: artifact digest {self.predictor.digest} is not "
                f"{self.expected_sha256}, the one the manifest records"
            )
        self.catalog.check_covers(self.predictor.labels, f"{self.arm} model {self.source}")
        self.version = self.model.version or f"sha-{self.predictor.digest[:12]}"
        self._batcher = MicroBatcher(self._forward, self.cfg.max_batch_size, self.cfg.max_batch_wait_ms / 1000)
        self.metrics.add_endpoint(self.name, self.version)
        self.ready = True
        return self.ready

    def _forward(self, texts: list[str]) -> list[Prediction]:
        """One forward pass (on the inference thread), counted by its number of texts."""
        preds = self.predictor.predict(texts)
        self.metrics.batch_size.labels(self.version).observe(len(texts))
        return preds

    def start(self) -> None:
        """ModelServer calls this for every model; readiness stays what load() decided."""

    def stop(self) -> None:
        if self._batcher:
            self._batcher.close()
        self.ready = False

    def validate(self, payload):
        return payload  # checked in preprocess, with messages that name the problem

    async def preprocess(self, payload, headers: dict[str, str] | None = None) -> ParsedRequest:
        request = parse_request(payload, headers or {}, self.cfg.max_instances, self.cfg.max_text_chars)
        if self.logger is not None:  # logged before predicting: a call that then fails has no response event
            await self.logger.log("request", request, request_wire_body(request))
        return request

    async def predict(self, request: ParsedRequest, headers=None, response_headers=None) -> PredictedRequest:
        preds = await self._batcher.predict(request.texts)
        records = self._observed(request, preds, time.perf_counter() - request.started)
        if self.log is not None:
            self.log.write(records)
        if self.shadow is not None:
            self._in_background(self.shadow.shadow_predict(request, preds, self.version))
        return PredictedRequest(request, preds)

    async def postprocess(self, result: PredictedRequest, headers=None, response_headers=None):
        request, preds, endpoint = result.request, result.predictions, self.endpoint
        replies = [self.catalog.reply(p.intent, p.fallback) for p in preds]
        build = v2_response if request.protocol == "v2" else v1_response
        response = build(endpoint, request, preds, replies)
        if self.logger is not None:
            body = response_wire_body(endpoint, request, response, preds, replies)
            await self.logger.log("response", request, body)
        return response

    def _observed(self, request: ParsedRequest, preds: list[Prediction], seconds: float) -> list[dict]:
        """Count the predictions in the metrics; their prediction log records."""
        self.metrics.observe(self.version, preds, seconds)
        return prediction_records(self.endpoint, request, preds, seconds)

    def _in_background(self, work) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)  # held until done: the loop keeps only a weak reference to a task
        task.add_done_callback(self._background.discard)

    async def shadow_predict(self, request: ParsedRequest, primary: list[Prediction], primary_version: str) -> None:
        """Predict the same texts; log and count, never answer. A failing shadow never hurts the user."""
        started = time.perf_counter()
        try:
            preds = await self._batcher.predict(request.texts)
        except Exception as exc:  # noqa: BLE001
            self.metrics.errors.labels(self.version, "shadow_failed").inc()
            kserve.logging.logger.error("shadow model %s failed: %s", self.version, exc)
            return
        records = self._observed(request, preds, time.perf_counter() - started)
        for record, mine, theirs in zip(records, preds, primary):
            agree = mine.intent == theirs.intent and mine.fallback == theirs.fallback
            record.update(primary_version=primary_version, primary_intent=theirs.intent, agrees_with_primary=agree)
            self.metrics.shadow_agreement.labels(self.version, primary_version, str(agree).lower()).inc()
        if self.log is not None:
            self.log.write(records)
