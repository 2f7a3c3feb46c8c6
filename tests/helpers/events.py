"""Events as the collector receives them: KServe's logger CloudEvents (binary mode, built with the
``cloudevents`` package), the chat front end's feedback, and the arms ConfigMap the collector reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from model.collect.events import FEEDBACK_TYPE, REQUEST_TYPE, RESPONSE_TYPE
from model.serve.logger import AGENT_SOURCE_URI, cloudevents_time

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
# what each arm serves, as the ConfigMap flywheel-arms says (the collector's --arms-dir)
VERSION_OF_ARM = {"stable": "7", "canary": "8"}


def inference_event(
    kind: str,
    request_id: str,
    body: dict | str,
    at: datetime,
    conversation: str = "",
    content_type: str | None = "application/json",
) -> tuple[dict, bytes]:
    """Headers and body of one logger event exactly as KServe's logger posts it (kserve pkg/logger/worker.go,
    sendHttpCloudEvent; shared/notes/kserve-logger.md): the agent's fallback source, the same from every revision
    (cmd/agent/main.go), the call's own time and the send time as the Go SDK writes them, the endpoint empty,
    the metadata a JSON object, the Content-Type the client's. Which version answered is in a response's body only."""
    attrs = {
        "type": REQUEST_TYPE if kind == "request" else RESPONSE_TYPE,
        "source": AGENT_SOURCE_URI,
        "id": request_id,
        "time": cloudevents_time(at),
        "recordedtime": cloudevents_time(at + timedelta(milliseconds=3)),
        "inferenceservicename": "support-bot",
        "namespace": "chat",
        "component": "predictor",
        "endpoint": "",
        "metadata": json.dumps({"X-Conversation-Id": [conversation]} if conversation else {}),
    }
    raw = body if isinstance(body, str) else json.dumps(body)
    headers, data = to_binary(CloudEvent(attrs, raw.encode()), data_marshaller=lambda d: d)
    headers.pop("content-type", None)
    if content_type is not None:
        headers["content-type"] = content_type
    return headers, data


def feedback_event(event_id: str, at: datetime, **payload) -> tuple[dict, bytes]:
    attrs = {"type": FEEDBACK_TYPE, "source": "chat-frontend", "id": event_id, "time": at.isoformat()}
    headers, data = to_binary(CloudEvent(attrs, json.dumps(payload).encode()), data_marshaller=lambda d: d)
    headers["content-type"] = "application/json"
    return headers, data


def v1_call(
    request_id: str, texts: list[str], intents: list[str], at: datetime, arm: str = "stable", conversation: str = ""
):
    """A V1 call answered by the model version ``arm`` serves: its request and response events."""
    version = VERSION_OF_ARM[arm]
    req = inference_event("request", request_id, {"instances": texts}, at, conversation)
    preds = [
        {
            "intent": i,
            "confidence": 0.9,
            "fallback": False,
            "reply": "...",
            "model_version": version,
            "request_id": request_id,
        }
        for i in intents
    ]
    resp = inference_event(
        "response", request_id, {"predictions": preds}, at + timedelta(milliseconds=12), conversation
    )
    return req, resp


def arms_folder(path, arms: dict[str, str]):
    """The ConfigMap flywheel-arms as the kubelet mounts it: one file per key."""
    path.mkdir(parents=True, exist_ok=True)
    for key, value in arms.items():
        (path / key).write_text(value)
    return path
