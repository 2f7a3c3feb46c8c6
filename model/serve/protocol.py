"""KServe's two REST protocols for the intent model: requests parsed into texts, answers built back.

- V1: ``POST /v1/models/NAME:predict`` with ``{"instances": ["text", ...]}`` (or ``[{"text": ...}]``);
  the answer is ``{"predictions": [{"intent", "confidence", "fallback", "reply", "entities",
  "model_version", "request_id"}, ...]}``, where ``entities`` lists what the model found in that
  text, ``[{"type", "text", "start", "end", "confidence"}, ...]`` (character offsets into the text
  sent, ``end`` exclusive; ``[]`` for none, always so for a model trained without entities).
- V2 (Open Inference Protocol): ``POST /v2/models/NAME/infer`` with one BYTES input named ``text``;
  the outputs are ``intent``, ``reply`` (BYTES), ``confidence`` (FP32), ``fallback`` (BOOL) and
  ``entities`` (BYTES, shape [N]: element i is the JSON text of text i's entity list, as in V1,
  since a tensor of the Open Inference Protocol holds no nested objects); the response ``id`` is the
  request id, ``model_version`` and ``parameters.model_version`` the version.

Every answer names the model version that gave it, and no arm: in a cluster each Knative revision runs
this server for one model and cannot know its traffic share; the collector attributes the arm from
the version (``model.collect.arms``).

The request id is the caller's ``ce-id`` header when present (the join key of KServe's logger, see
the collector), else ``x-request-id``, else the V2 request's ``id``, else a new UUID. Every refusal
is an ``InvalidInput`` (a 400) whose message names the problem.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from model.artifact.predictor import Prediction
from model.core.kserve_sdk import InferOutput, InferRequest, InferResponse, InvalidInput

STABLE, CANARY, SHADOW = "stable", "canary", "shadow"  # the traffic arms
MAX_ID_CHARS = 200


@dataclass(frozen=True)
class Endpoint:
    """Who answers: the model name in the URL, the model version and the traffic arm."""

    name: str
    version: str
    arm: str


@dataclass
class ParsedRequest:
    texts: list[str]
    protocol: str  # "v1" or "v2"
    request_id: str
    conversation_id: str
    content_type: str = ""  # the client's, which KServe's logger forwards with both events
    started: float = field(default_factory=time.perf_counter)
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def parse_request(payload, headers: dict[str, str], max_instances: int, max_text_chars: int) -> ParsedRequest:
    """A V1 body (a dict) or a V2 ``InferRequest`` to its texts and ids, or InvalidInput naming the problem."""
    if isinstance(payload, InferRequest):
        texts, protocol, body_id = v2_texts(payload), "v2", payload.id
    else:
        texts, protocol, body_id = v1_texts(payload), "v1", None
    check_texts(texts, max_instances, max_text_chars)
    request_id = headers.get("ce-id") or headers.get("x-request-id") or body_id or str(uuid.uuid4())
    conversation_id = str(headers.get("x-conversation-id", ""))
    content_type = str(headers.get("content-type", ""))[:100]
    return ParsedRequest(texts, protocol, str(request_id)[:MAX_ID_CHARS], conversation_id[:MAX_ID_CHARS], content_type)


def v1_texts(payload) -> list[str]:
    if isinstance(payload, (bytes, str)):  # kserve parses only application/json; `curl -d` sends form-encoded JSON
        try:
            payload = json.loads(payload)
        except ValueError:
            raise InvalidInput("expected a JSON body with 'instances' (content-type application/json)") from None
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


def v2_texts(request: InferRequest) -> list[str]:
    if len(request.inputs) != 1 or request.inputs[0].name != "text":
        names = [i.name for i in request.inputs]
        raise InvalidInput(f"expected exactly one input named 'text', got {names}")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input 'text' must have datatype BYTES, got {tensor.datatype}")
    shape = list(tensor.shape or [])
    if not shape or any(not isinstance(d, int) or d < 0 for d in shape) or int(np.prod(shape)) != shape[0]:
        raise InvalidInput(f"input 'text' must have shape [N] or [N, 1], got {shape}")
    if tensor._raw_data is not None:  # the binary extension: kserve keeps the raw bytes
        try:
            values = [v.decode("utf-8") if isinstance(v, bytes) else v for v in tensor.as_numpy().reshape(-1)]
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"input 'text': binary data does not match shape {shape}: {exc}") from exc
    elif isinstance(tensor.data, list):
        values = list(np.asarray(tensor.data, dtype=object).reshape(-1))
    else:
        raise InvalidInput("input 'text': 'data' must be a list of texts")
    if len(values) != shape[0]:
        raise InvalidInput(f"input 'text': shape {shape} says {shape[0]} texts, data has {len(values)}")
    bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
    if bad:
        raise InvalidInput(f"input 'text': element {bad[0]} is {type(values[bad[0]]).__name__}, expected a text")
    return values


def check_texts(texts: list[str], max_instances: int, max_text_chars: int) -> None:
    if not texts:
        raise InvalidInput("no texts to classify: send at least one instance")
    if len(texts) > max_instances:
        raise InvalidInput(f"too many instances: {len(texts)}, the limit is {max_instances} per request")
    for i, text in enumerate(texts):
        if not text.strip():
            raise InvalidInput(f"text {i} is empty")
        at = lone_surrogate(text)
        if at is not None:
            raise InvalidInput(
                f"text {i} holds a lone UTF-16 surrogate (U+{ord(text[at]):04X} at character {at}), which is no "
                "Unicode character: send the text as UTF-8, or a JSON \\u escape as a high and low surrogate pair"
            )
        if len(text) > max_text_chars:
            raise InvalidInput(f"text {i} is {len(text)} characters long, the limit is {max_text_chars}")


def lone_surrogate(text: str) -> int | None:
    """Where ``text`` holds a surrogate code point, if anywhere: JSON's ``\\ud800`` escape decodes to one,
    which no encoder (a tokenizer, UTF-8, a database) accepts. A well-formed pair decodes to one character."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def v1_response(endpoint: Endpoint, request: ParsedRequest, preds: list[Prediction], replies: list[str]) -> dict:
    return {
        "predictions": [
            {
                "intent": p.intent,
                "confidence": round(p.confidence, 6),
                "fallback": p.fallback,
                "reply": reply,
                "entities": [e.to_dict() for e in p.entities],
                "model_version": endpoint.version,
                "request_id": request.request_id,
            }
            for p, reply in zip(preds, replies)
        ]
    }


def entities_json(prediction: Prediction) -> str:
    """One text's entities as the V2 ``entities`` output carries them: the V1 list as compact JSON."""
    return json.dumps([e.to_dict() for e in prediction.entities], ensure_ascii=False, separators=(",", ":"))


def _v2_outputs(preds: list[Prediction], replies: list[str]) -> list[tuple[str, str, list]]:
    """(name, datatype, data) of each V2 output."""
    return [
        ("intent", "BYTES", [p.intent for p in preds]),
        ("confidence", "FP32", [p.confidence for p in preds]),
        ("fallback", "BOOL", [p.fallback for p in preds]),
        ("reply", "BYTES", replies),
        ("entities", "BYTES", [entities_json(p) for p in preds]),  # last: the outputs before keep their place
    ]


def _v2_parameters(endpoint: Endpoint) -> dict:
    return {"model_version": endpoint.version}


def v2_response(
    endpoint: Endpoint, request: ParsedRequest, preds: list[Prediction], replies: list[str]
) -> InferResponse:
    n = [len(preds)]
    outputs = [InferOutput(name, n, datatype, data) for name, datatype, data in _v2_outputs(preds, replies)]
    parameters = _v2_parameters(endpoint)
    return InferResponse(
        request.request_id, endpoint.name, outputs, model_version=endpoint.version, parameters=parameters
    )


def request_wire_body(request: ParsedRequest) -> dict:
    """The request as JSON, as KServe's logger would have read it off the wire."""
    if request.protocol == "v1":
        return {"instances": request.texts}
    n = [len(request.texts)]
    return {
        "id": request.request_id,
        "inputs": [{"name": "text", "shape": n, "datatype": "BYTES", "data": request.texts}],
    }


def response_wire_body(
    endpoint: Endpoint, request: ParsedRequest, response, preds: list[Prediction], replies: list[str]
) -> dict:
    """The answer as JSON, as KServe's logger would have read it off the wire."""
    if request.protocol == "v1":
        return response
    n = [len(preds)]
    return {
        "id": request.request_id,
        "model_name": endpoint.name,
        "model_version": endpoint.version,
        "outputs": [
            {"name": name, "shape": n, "datatype": datatype, "data": data}
            for name, datatype, data in _v2_outputs(preds, replies)
        ],
        "parameters": _v2_parameters(endpoint),
    }


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
