"""The local stand-in for KServe's request/response logger: each call posted to the collector.

In a cluster KServe's agent sits in front of the predictor and posts every call; locally
(``--logger_url``) none does, so the predictor posts the same two binary-mode CloudEvents itself,
with exactly the attributes the real one sends and nothing more. Read from kserve at commit
aaac4e294dae (v0.20.0-rc0-104): ``pkg/logger/handler.go`` (``ServeHTTP``) builds each ``LogRequest``,
``pkg/logger/worker.go`` (``sendHttpCloudEvent``) turns it into the event:

- ``ce-source`` is the agent's ``--source-uri``, which the pod webhook sets to ``pod.Name``
  (``pkg/webhook/admission/pod/agent_injector.go``); a ReplicaSet's pod (every Knative revision's)
  reaches the webhook before it has a name, so it is empty and the agent falls back to
  ``http://localhost:9081/`` (``cmd/agent/main.go``, ``startLogger``): every revision sends the same
  source, which therefore names no revision and no arm;
- ``ce-time`` is the call's own moment (``event.SetTime(logReq.OccurrenceTime)``): when the request
  arrived for the request event, when the answer was complete for the response event;
- ``ce-recordedtime`` is when the event was sent (``event.SetExtension(RecordedTimeAttr, time.Now())``,
  since kserve v0.18.0); both times as the CloudEvents Go SDK writes them, RFC 3339 in UTC with up
  to nine fractional digits and no trailing zeros (cloudevents sdk-go ``v2/types/value.go``, ``FormatTime``);
- ``ce-endpoint`` is empty (the controller never sets the pod label it comes from): the arm is not here;
- ``ce-metadata`` is the JSON of the forwarded request headers (``logger.metadataHeaders``), ``{}`` if none;
- ``Content-Type`` is the client's own, for both events, or none if the client sent none.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import httpx
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from model.serve.protocol import ParsedRequest

# what the agent sends as ce-source when the webhook gave it no pod name: always, for a Knative revision's pods
AGENT_SOURCE_URI = "http://localhost:9081/"


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

    async def log(self, kind: str, request: ParsedRequest, body: dict) -> None:
        """Queue one event of a call, ``request`` (on arrival) or ``response`` (only once answered with 200,
        as KServe's logger does); waits while the queue is full."""
        if self._worker is None or self._worker.done():
            self._queue = self._queue or asyncio.Queue(self.max_pending)
            self._worker = asyncio.get_running_loop().create_task(self._run())
        moment = request.received_at if kind == "request" else datetime.now(UTC)
        headers = {
            **_common_headers(self.inference_service, request),
            "ce-type": f"org.kubeflow.serving.inference.{kind}",
            "ce-time": cloudevents_time(moment),
        }
        await self._queue.put((headers, json.dumps(body).encode()))

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                headers, body = await self._queue.get()
                # the agent stamps each event as it sends it (worker.go, sendHttpCloudEvent)
                await self._send(client, {**headers, "ce-recordedtime": cloudevents_time(datetime.now(UTC))}, body)

    async def _send(self, client: httpx.AsyncClient, headers: dict[str, str], body: bytes) -> None:
        try:
            resp = await client.post(self.url, content=body, headers=headers)
            self.outcomes.labels("accepted" if resp.status_code == 200 else f"refused_{resp.status_code}").inc()
        except httpx.HTTPError:
            self.outcomes.labels("unreachable").inc()


def cloudevents_time(moment: datetime) -> str:
    """A timestamp as the CloudEvents Go SDK writes one: UTC, RFC 3339, fractional seconds without trailing zeros."""
    utc = moment.astimezone(UTC)
    fraction = f"{utc.microsecond:06d}".rstrip("0")
    return utc.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def _common_headers(inference_service: str, request: ParsedRequest) -> dict[str, str]:
    """The CloudEvent headers both events of a call carry, as KServe's logger sends them."""
    metadata = {"X-Conversation-Id": [request.conversation_id]} if request.conversation_id else {}
    headers = {
        "ce-specversion": "1.0",
        "ce-id": request.request_id,
        "ce-source": AGENT_SOURCE_URI,
        "ce-inferenceservicename": inference_service,
        "ce-namespace": "local",
        "ce-component": "predictor",
        "ce-endpoint": "",
        "ce-metadata": json.dumps(metadata),
    }
    if request.content_type:
        headers["content-type"] = request.content_type
    return headers
