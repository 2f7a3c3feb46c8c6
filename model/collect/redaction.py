"""What of a logged call may be stored, and how an answer's entities land on the stored text.

A **request** body has every string but the protocol's structure redacted (``data_checks.pii``).
Beside it the store keeps the redaction map (``redactions``): per text of the request, in
``request_texts`` order, the findings' types and raw offsets (never the data they replaced),
``[[{"entity": "EMAIL", "start": 12, "end": 32, "score": 1.0}, ...], ...]``.

A **response** body holds the model's outputs, kept as they are, except for the one copy of the
user's own characters in it: each entity's ``text``. The collector cannot tell on arrival whether
it is personal data (that depends on the request's findings, and the request may come later; its
raw text is never kept), so the ``text`` of every entity is removed before the store, V1
``predictions[i].entities`` and V2 ``entities`` output alike; type, offsets and confidence stay.

At export the entities, whose offsets point into the raw text the model saw, are moved onto the
redacted text with the map (``data_checks.pii.redacted_span``, the one offset map): one that
overlaps redacted personal data is dropped, the others shift by the redaction's length changes
and take their value from the redacted text. Personal data therefore never survives as a value.

A text no store can encode, a lone surrogate (a client's unpaired JSON ``\\ud800`` escape, which the
predictor refuses with a 400 but KServe's logger forwards as sent), is stored with U+FFFD in its place.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable

from data_checks.pii import Finding, redacted_span
from model.data.conversations import NO_ENTITIES, dump_entities
from model.data.entities import PLACEHOLDER, span_problem

# Keys of the Open Inference Protocol that hold protocol structure, not user text: left as they are.
STRUCTURAL_KEYS = frozenset({"id", "name", "datatype", "shape"})
# What of an answer's entity is stored: everything but ``text``, the user's characters.
STORED_ENTITY_KEYS = ("type", "start", "end", "confidence")

Redact = Callable[[str], tuple[str, list[Finding]]]
SURROGATE = re.compile("[\ud800-\udfff]")
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # JSON's escape of one: \uD800 to \uDFFF


def without_surrogates(value):
    """``value`` with every surrogate code point in its texts (keys too) replaced by U+FFFD, as the collector
    replaces bytes that are not UTF-8. JSON's ``\\ud800`` escape decodes to one when unpaired (a pair decodes
    to one character), and no store can encode it: the call is kept with its text marked where it was broken."""
    if isinstance(value, str):
        return SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {without_surrogates(k): without_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_surrogates(v) for v in value]
    return value


def storable_json(raw: str) -> tuple[object, str]:
    """A JSON text's value and the text to store (``raw`` itself unless a lone surrogate had to be replaced);
    ValueError if it is not JSON."""
    value = json.loads(raw)
    if not SURROGATE_ESCAPE.search(raw):  # nothing else decodes to a surrogate
        return value, raw
    storable = without_surrogates(value)
    return storable, raw if storable == value else json.dumps(storable, ensure_ascii=False)


def redact_json(value, redact: Callable[[str], str]):
    """Every string in a JSON value redacted, except the protocol's structural fields."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact_json(v, redact) for v in value]
    if isinstance(value, dict):
        return {k: v if k in STRUCTURAL_KEYS else redact_json(v, redact) for k, v in value.items()}
    return value


def request_texts(body: dict) -> list:
    """Texts of a V1 (``instances``) or V2 (``inputs`` named text) request body."""
    if isinstance(body.get("instances"), list):
        return [i.get("text") if isinstance(i, dict) else i for i in body["instances"]]
    for tensor in body.get("inputs") or []:
        if isinstance(tensor, dict) and tensor.get("name") == "text" and isinstance(tensor.get("data"), list):
            return list(tensor["data"])
    return []


def redact_request(payload, redact: Redact) -> tuple[object, str]:
    """A request payload with its user texts redacted, and its redaction map as JSON (see the module)."""
    found: dict[str, list[Finding]] = {}

    def one(text: str) -> str:
        clean, findings = redact(text)
        found[text] = findings
        return clean

    redacted = redact_json(payload, one)
    texts = request_texts(payload) if isinstance(payload, dict) else []
    record = [[f.to_dict() for f in found.get(t, [])] if isinstance(t, str) else [] for t in texts]
    return redacted, json.dumps(record, separators=(",", ":"))


def text_findings(request: dict, n_texts: int) -> list[list[Finding]] | None:
    """Per text, the findings a stored request's redaction map records; None when it records none
    (a request stored before the map existed) or not one list per text."""
    try:
        record = json.loads(request.get("redactions") or "null")
        maps = [[Finding(**f) for f in findings] for findings in record] if isinstance(record, list) else None
    except (ValueError, TypeError):
        return None
    return maps if maps is not None and len(maps) == n_texts else None


def _stored_entity(entity) -> dict | None:
    return {k: entity[k] for k in STORED_ENTITY_KEYS if k in entity} if isinstance(entity, dict) else None


def _stored_entities(entities) -> list[dict]:
    return [e for e in map(_stored_entity, entities) if e is not None] if isinstance(entities, list) else []


def _stored_v2_element(element) -> str:
    """One element of the V2 ``entities`` output without entity texts; ``[]`` for one that is not a JSON list."""
    try:
        entities = json.loads(element) if isinstance(element, str) else None
    except ValueError:
        entities = None
    return json.dumps(_stored_entities(entities), ensure_ascii=False, separators=(",", ":"))


def strip_entity_texts(payload):
    """A response payload without the ``text`` of any entity (everything else as it was)."""
    if not isinstance(payload, dict):
        return payload
    if isinstance(payload.get("predictions"), list):
        preds = [
            {**p, "entities": _stored_entities(p["entities"])} if isinstance(p, dict) and "entities" in p else p
            for p in payload["predictions"]
        ]
        return {**payload, "predictions": preds}
    if isinstance(payload.get("outputs"), list):
        outputs = [
            {**o, "data": [_stored_v2_element(d) for d in o["data"]]}
            if isinstance(o, dict) and o.get("name") == "entities" and isinstance(o.get("data"), list)
            else o
            for o in payload["outputs"]
        ]
        return {**payload, "outputs": outputs}
    return payload


def answer_entities(value) -> list:
    """The entities of one prediction as read from a response: a V1 list, or a V2 element's JSON text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return []
    return value if isinstance(value, list) else []


def entities_on_redacted(entities: list, text: str, findings: list[Finding] | None, skipped: Counter) -> str:
    """An answer's entities (raw offsets) moved onto the redacted ``text``, as the snapshot's ``entities`` cell.

    ``findings`` is the text's redaction map; None when unknown, which only a text without any
    placeholder survives (nothing was redacted there, so no offset moved). Each dropped entity is
    counted in ``skipped``: on personal data, or not fitting the text (a corrupt or foreign answer).
    """
    if findings is None and PLACEHOLDER.search(text):
        skipped["entities_unmappable"] += len(entities)
        return NO_ENTITIES
    out = []
    for entity in entities:
        moved = _on_redacted(entity, text, findings or [])
        if isinstance(moved, str):
            skipped[moved] += 1
        else:
            out.append(moved)
    return dump_entities(out)


def _on_redacted(entity, text: str, findings: list[Finding]) -> dict | str:
    """One entity moved onto the redacted text, or why it cannot be: the ``skipped`` key it counts under."""
    if not isinstance(entity, dict) or not all(_is_int(entity.get(k)) for k in ("start", "end")):
        return "entities_unmappable"
    moved = redacted_span(findings, entity["start"], entity["end"])
    if moved is None:
        return "entities_on_personal_data"
    span = {"start": moved[0], "end": moved[1], "type": entity.get("type")}
    # inside the text, no placeholder touched, no white space at its ends: what a training span must be
    if span_problem(text, span) or not _is_score(entity.get("confidence")):
        return "entities_unmappable"
    return {**span, "value": text[moved[0] : moved[1]], "confidence": float(entity["confidence"])}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_score(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0
