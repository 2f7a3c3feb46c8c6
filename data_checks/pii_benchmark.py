"""Score the PII scanner against a labelled set: recall and precision per entity type, keep-rates.

The labelled set is JSON lines, one chat message each: ``{"text": ..., "pii": [{"type": "EMAIL",
"value": "jane@x.org"}, ...]}`` (``pii`` empty for messages without personal data). A labelled
value counts as found when a finding of the same type covers all of it; a finding counts as correct
when it overlaps a labelled value of its type. ``redacted_recall`` also accepts a finding of another
type: the value is gone from the text either way, which is what protects the customer.

Two optional fields serve the held-out set (``tests/data/pii_fresh_eval.jsonl``): a ``pii`` item may
carry ``region`` and ``kind`` (``valid`` or ``possible``), reported as phone recall per group, and
``keep`` lists values that must stay in the text (``{"type": "ORDER", "value": "123456789"}``;
types ORDER, TICKET, TRACKING, AMOUNT, DATE). A kept value is one no finding overlaps.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from data_checks.pii import Finding, Scanner
from model.core.errors import FlywheelError

_DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
EVAL_SET = _DATA / "pii_eval.jsonl"  # the set the filters were tuned on
FRESH_EVAL_SET = _DATA / "pii_fresh_eval.jsonl"  # drawn afterwards from other templates and formats
# Targets from the issue: missing a card or an email is worse than missing an IBAN or a phone.
RECALL_TARGETS = {"EMAIL": 0.99, "CARD": 0.99, "IBAN": 0.95, "PHONE": 0.95}
# Issue 12: redacting more phones must not cost the model the transaction details it needs.
KEEP_TARGETS = {"ORDER": 0.95, "TICKET": 0.95, "TRACKING": 0.95, "AMOUNT": 0.95, "DATE": 0.95}


def read_eval_set(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pii, keep = row["pii"], row.get("keep", [])
            spans = _locate(row["text"], pii)
            rows.append(
                {
                    "text": row["text"],
                    "spans": spans,
                    "groups": [_group(item) for item in pii],
                    "keep": _locate(row["text"], keep),
                }
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise FlywheelError(f"{path}:{n}: bad labelled row: {exc}") from exc
    return rows


def _locate(text: str, items: list[dict]) -> list[tuple[str, int, int]]:
    """``(type, start, end)`` per labelled value, each searched after the one before it."""
    spans: list[tuple[str, int, int]] = []
    for item in items:
        start = text.find(item["value"], spans[-1][2] if spans else 0)
        if start < 0:
            raise ValueError(f"value {item['value']!r} not in text")
        spans.append((item["type"], start, start + len(item["value"])))
    return spans


def _group(item: dict) -> str | None:
    return f"{item['type']} {item['region']} {item['kind']}" if "region" in item and "kind" in item else None


def score(scanner: Scanner, rows: list[dict]) -> dict:
    """Per-entity counts and rates, keep-rates, plus the messages the scanner got wrong (for tuning)."""
    found = [scanner.scan(row["text"]) for row in rows]
    per_entity, misses, false_alarms = _entity_counts(rows, found)
    keep, keep_failures = _keep_counts(rows, found)
    failed = [t for t, target in RECALL_TARGETS.items() if _below(per_entity.get(t, {}).get("recall"), target)]
    keep_failed = [t for t, target in KEEP_TARGETS.items() if _below(keep.get(t, {}).get("rate"), target)]
    return {
        "messages": len(rows),
        "with_pii": sum(1 for r in rows if r["spans"]),
        "per_entity": per_entity,
        "groups": _group_recall(rows, found),
        "keep": keep,
        "targets": RECALL_TARGETS,
        "keep_targets": KEEP_TARGETS,
        # a target counts only for the types the set labels: the fresh set has phones only
        "targets_missed": failed + keep_failed,
        "misses": misses,
        "false_alarms": false_alarms,
        "keep_failures": keep_failures,
    }


def _below(rate: float | None, target: float) -> bool:
    return rate is not None and rate < target


def _entity_counts(rows: list[dict], found: list[list[Finding]]) -> tuple[dict, list, list]:
    c = defaultdict(lambda: {"labelled": 0, "found": 0, "redacted": 0, "predicted": 0, "correct": 0})
    misses, false_alarms = [], []
    for row, hits in zip(rows, found, strict=True):
        text, gold = row["text"], row["spans"]
        for typ, start, end in gold:
            c[typ]["labelled"] += 1
            same = any(f.entity == typ and f.start <= start and f.end >= end for f in hits)
            c[typ]["found"] += same
            c[typ]["redacted"] += any(f.start <= start and f.end >= end for f in hits)
            if not same:
                misses.append({"type": typ, "text": text})
        for f in hits:
            c[f.entity]["predicted"] += 1
            ok = any(typ == f.entity and f.start < end and start < f.end for typ, start, end in gold)
            c[f.entity]["correct"] += ok
            if not ok:
                false_alarms.append({"type": f.entity, "text": text, "span": text[f.start : f.end]})
    per_entity = {
        typ: {
            **k,
            "recall": k["found"] / k["labelled"] if k["labelled"] else None,
            "redacted_recall": k["redacted"] / k["labelled"] if k["labelled"] else None,
            "precision": k["correct"] / k["predicted"] if k["predicted"] else None,
        }
        for typ, k in sorted(c.items())
    }
    return per_entity, misses, false_alarms


def _keep_counts(rows: list[dict], found: list[list[Finding]]) -> tuple[dict, list]:
    """Per kept type: how many labelled values no finding touched."""
    c = defaultdict(lambda: {"labelled": 0, "kept": 0})
    failures = []
    for row, hits in zip(rows, found, strict=True):
        for typ, start, end in row["keep"]:
            c[typ]["labelled"] += 1
            touched = [f for f in hits if f.start < end and start < f.end]
            c[typ]["kept"] += not touched
            if touched:
                failures.append({"type": typ, "text": row["text"], "as": touched[0].entity})
    keep = {typ: {**k, "rate": k["kept"] / k["labelled"]} for typ, k in sorted(c.items())}
    return keep, failures


def _group_recall(rows: list[dict], found: list[list[Finding]]) -> dict:
    """Recall per labelled group ("PHONE DE possible"): which region or kind the misses are in."""
    c = defaultdict(lambda: {"labelled": 0, "found": 0})
    for row, hits in zip(rows, found, strict=True):
        for (typ, start, end), group in zip(row["spans"], row["groups"], strict=True):
            if group is None:
                continue
            c[group]["labelled"] += 1
            c[group]["found"] += any(f.entity == typ and f.start <= start and f.end >= end for f in hits)
    return {g: {**k, "recall": k["found"] / k["labelled"]} for g, k in sorted(c.items())}
