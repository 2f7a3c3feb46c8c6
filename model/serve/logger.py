"""The local stand-in for KServe's request/response logger: each call posted to the collector.

In a cluster KServe's logger proxy sits in front of the predictor and posts every call; locally
(``--logger_url``) none does, so the predictor posts the same two binary-mode CloudEvents itself,
with exactly the attributes the real one sends (kserve ``pkg/logger/worker.go`` sets them from
``pkg/logger/handler.go``'s LogRequest; ``shared/notes/kserve-logger.md``) and nothing more:

- ``ce-source`` is the pod name, which in Knative mode starts with the revision; locally each served
  model is a revision of its own, numbered by its model version (``<isvc>-predictor-0000N-deployment-...``);
- ``ce-endpoint`` is empty (the controller never sets the pod label it comes from): the arm is not here;
- ``ce-metadata`` is the JSON of the forwarded request headers (``logger.metadataHeaders``), ``{}`` if none;
- ``Content-Type`` is the client's own, for both events, or none if the client sent none.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime

import httpx
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from model.serve.protocol import Endpoint, ParsedRequest


class LocalLogger:
    """Posts each call as KServe's request/response logger does: two binary-mode CloudEvents sharing ``ce-id``.

    Like KServe's, its queue is bounded and a full queue makes the request wait; an event the
    collector does not accept is counted (``flywheel_logger_events_total{outcome}``), not retried.
    """

    def __init__(
        self, url: str, inference_service: str, registry: CollectorRegistry = REGISTRY, max_pending: int = 100
    ):
        self.url = url
        self.inference_service = inference_service  # the stable endpoint's name: the InferenceService's
        self.max_pending = max_pending
        self.outcomes = Counter(
            "flywheel_logger_events", "events posted to the collector", ["outcome"], registry=registry
        )
        # made with the worker, on the running loop: the logger is built before the server's loop runs
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    async def log(self, kind: str, endpoint: Endpoint, request: ParsedRequest, body: dict) -> None:
        """Queue one event of a call, ``request`` (on arrival) or ``response`` (only once answered with 200,
        as KServe's logger does); waits while the queue is full."""
        if self._worker is None or self._worker.done():
            self._queue = self._queue or asyncio.Queue(self.max_pending)
            self._worker = asyncio.get_running_loop().create_task(self._run())
        moment = request.received_at if kind == "request" else datetime.now(UTC)
        headers = {
            **_common_headers(self.inference_service, endpoint, request),
            "ce-type": f"org.kubeflow.serving.inference.{kind}",
            "ce-time": moment.isoformat(),
        }
        await self._queue.put((headers, json.dumps(body).encode()))

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                headers, body = await self._queue.get()
                try:
                    resp = await client.post(self.url, content=body, headers=headers)
                    self.outcomes.labels("accepted" if resp.status_code == 200 else f"refused_{resp.status_code}").inc()
                except httpx.HTTPError:
                    self.outcomes.labels("unreachable").inc()


def pod_name(inference_service: str, version: str) -> str:
    """A pod name as Knative makes them: <revision>-deployment-<replicaset hash>-<pod hash>, a revision per version."""
    number = int(version) if version.isdigit() else int(hashlib.sha256(version.encode()).hexdigest()[:4], 16)
    digest = hashlib.sha256(f"{inference_service}/{version}".encode()).hexdigest()
    return f"{inference_service}-predictor-{number:05d}-deployment-{digest[:9]}-{digest[9:14]}"


def _common_headers(inference_service: str, endpoint: Endpoint, request: ParsedRequest) -> dict[str, str]:
    """The CloudEvent headers both events of a call carry, as KServe's logger sends them."""
    metadata = {"X-Conversation-Id": [request.conversation_id]} if request.conversation_id else {}
    headers = {
        "ce-specversion": "1.0",
        "ce-id": request.request_id,
        "ce-source": pod_name(inference_service, endpoint.version),
        "ce-inferenceservicename": inference_service,
        "ce-namespace": "local",
        "ce-component": "predictor",
        "ce-endpoint": "",
        "ce-metadata": json.dumps(metadata),
    }
    if request.content_type:
        headers["content-type"] = request.content_type
    return headers
