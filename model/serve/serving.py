"""Serving: intent models on the real ``kserve.ModelServer`` until SIGTERM (``flywheel serve`` starts it
from ``model.deploy.serve_step``, which first resolves ``models:/`` URIs to artifact folders).

One server hosts the stable model as ``NAME``, optionally a canary as ``NAME-canary`` (the local
stand-in for KServe's traffic split: the caller picks the arm), and optionally a shadow model that
predicts on every request of both arms without ever answering: its predictions only reach the
prediction log and the metrics, so agreement with the primary can be measured before a rollout.
Every model is loaded and verified before anything listens. Both of KServe's REST protocols are
answered (``protocol``); each model is an ``IntentModel`` (``predictor``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from timing_asgi import TimingMiddleware  # kserve's own dependency

from model.core.config import ServeConfig
from model.core.http_guard import BodyLimit, ensure_can_listen
from model.core.kserve_sdk import kserve, kserve_server
from model.serve.catalog import ResponseCatalog
from model.serve.logger import LocalLogger
from model.serve.metrics import ServingMetrics
from model.serve.prediction_log import PredictionLog
from model.serve.predictor import IntentModel, ModelSource
from model.serve.protocol import CANARY, SHADOW, STABLE, check_v2_binary


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


@dataclass(frozen=True)
class Arms:
    """What one server hosts: the stable model, optionally a canary and a shadow."""

    stable: ModelSource
    canary: ModelSource | None = None
    shadow: ModelSource | None = None
    stable_sha256: str = ""  # from the manifest: refuse to become ready unless the stable artifact is this one


@dataclass(frozen=True)
class Served:
    """What a predictor served until it stopped: each endpoint's arm, version, runtime and source."""

    endpoints: dict[str, dict]  # endpoint -> arm, model_version, runtime, source
    address: str
    prediction_log: str | None
    logger_url: str | None
    uptime_s: float


def build_models(arms: Arms, cfg: ServeConfig, metrics: ServingMetrics, log: PredictionLog | None) -> list[IntentModel]:
    """Load and verify every model before anything listens; a bad artifact stops the start."""
    catalog = ResponseCatalog.load(cfg.catalog)
    parts = {"cfg": cfg, "catalog": catalog, "metrics": metrics, "log": log}
    shadow = None
    if arms.shadow:
        shadow = IntentModel(f"{cfg.endpoint}-shadow", SHADOW, arms.shadow, **parts)
        shadow.load()
    models = [
        IntentModel(cfg.endpoint, STABLE, arms.stable, **parts, shadow=shadow, expected_sha256=arms.stable_sha256)
    ]
    if arms.canary:
        models.append(IntentModel(f"{cfg.endpoint}-canary", CANARY, arms.canary, **parts, shadow=shadow))
    for model in models:
        model.load()
    return models


def serve_step(arms: Arms, cfg: ServeConfig) -> tuple[Served, str]:
    """Run the predictor until SIGTERM/SIGINT; return what was served."""
    ensure_can_listen(cfg.host, cfg.http_port)
    log_path = Path(cfg.prediction_log) if cfg.prediction_log_max_bytes else None
    metrics = ServingMetrics()
    log = PredictionLog(log_path, cfg.prediction_log_max_bytes) if log_path else None
    models = build_models(arms, cfg, metrics, log)
    if cfg.logger_url:
        logger = LocalLogger(cfg.logger_url, cfg.endpoint)
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
        if log is not None:
            log.close()
    return _report(models, cfg, str(log_path) if log_path else None, round(time.time() - started, 1))


def _report(
    models: list[IntentModel], cfg: ServeConfig, prediction_log: str | None, uptime_s: float
) -> tuple[Served, str]:
    """What was served (each endpoint's arm, version, runtime and source), as the step's result and markdown."""
    served = {m.name: _served(m) for m in models}
    if models[0].shadow is not None:
        served[models[0].shadow.name] = _served(models[0].shadow)
    result = Served(served, f"http://{cfg.host}:{cfg.http_port}", prediction_log, cfg.logger_url, uptime_s)
    rows = "\n".join(
        f"| `{n}` | {v['arm']} | {v['model_version']} | {v['runtime']} | `{v['source']}` |" for n, v in served.items()
    )
    md = (
        f"## Predictor on {result.address}\n\n| endpoint | arm | version | runtime | source |\n"
        f"|---|---|---|---|---|\n{rows}\n"
    )
    return result, md


def _served(model: IntentModel) -> dict:
    return {
        "arm": model.arm,
        "model_version": model.version,
        "runtime": model.predictor.runtime,
        "source": model.source,
    }
