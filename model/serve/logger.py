"""The local stand-in for KServe's request/response logger: each call posted to the collector.

In a cluster KServe's logger proxy sits in front of the predictor and posts every call; locally
(``--logger_url``) none does, so the predictor posts the same two binary-mode CloudEvents itself.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import httpx
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from model.serve.protocol import CANARY, Endpoint, ParsedRequest


class LocalLogger:
    """Posts each call as KServe's request/response logger does: two binary-mode CloudEvents sharing ``ce-id``.

    Like KServe's, its queue is bounded and a full queue makes the request wait; an event the
    collector does not accept is counted (``flywheel_logger_events_total{outcome}``), not retried.
    """

    def __init__(self, url: str, registry: CollectorRegistry = REGISTRY, max_pending: int = 100):
        self.url = url
        self.max_pending = max_pending
        self.outcomes = Counter(
            "flywheel_logger_events", "events posted to the collector", ["outcome"], registry=registry
        )
        # made with the worker, on the running loop: the logger is built before the server's loop runs
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    async def log(self, endpoint: Endpoint, request: ParsedRequest, request_body: dict, response_body: dict) -> None:
        """Queue the request and the response event of one call (waits while the queue is full)."""
        if self._worker is None or self._worker.done():
            self._queue = self._queue or asyncio.Queue(self.max_pending)
            self._worker = asyncio.get_running_loop().create_task(self._run())
        answered = datetime.now(UTC)
        common = _common_headers(endpoint, request)
        for kind, body, moment in (
            ("request", request_body, request.received_at),
            ("response", response_body, answered),
        ):
            headers = {**common, "ce-type": f"org.kubeflow.serving.inference.{kind}", "ce-time": moment.isoformat()}
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


def _common_headers(endpoint: Endpoint, request: ParsedRequest) -> dict[str, str]:
    """The CloudEvent headers both events of a call carry, named as KServe's logger names them."""
    headers = {
        "ce-specversion": "1.0",
        "ce-id": request.request_id,
        "ce-source": f"http://flywheel-serve/{endpoint.name}",
        "ce-inferenceservicename": endpoint.name,
        "ce-namespace": "local",
        "ce-component": "predictor",
        "ce-endpoint": "canary" if endpoint.arm == CANARY else "default",
        "content-type": "application/json",
    }
    if request.conversation_id:
        headers["ce-metadata"] = json.dumps({"X-Conversation-Id": [request.conversation_id]})
    return headers
