"""Score the PII scanner against a labelled set: recall and precision per entity type.

The labelled set is JSON lines, one chat message each: ``{"text": ..., "pii": [{"type": "EMAIL",
"value": "jane@x.org"}, ...]}`` (``pii`` empty for messages without personal data). A labelled
value counts as found when a finding of the same type covers all of it; a finding counts as correct
when it overlaps a labelled value of its type. ``redacted_recall`` also accepts a finding of another
type: the value is gone from the text either way, which is what protects the customer.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from data_checks.pii import Scanner
from model.core.errors import FlywheelError

EVAL_SET = Path(__file__).resolve().parent.parent / "tests" / "data" / "pii_eval.jsonl"
# Targets from the issue: missing a card or an email is worse than missing an IBAN or a phone.
RECALL_TARGETS = {"EMAIL": 0.99, "CARD": 0.99, "IBAN": 0.95, "PHONE": 0.95}


def read_eval_set(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            spans = []
            for item in row["pii"]:
                start = row["text"].find(item["value"], spans[-1][2] if spans else 0)
                if start < 0:
                    raise ValueError(f"value {item['value']!r} not in text")
                spans.append((item["type"], start, start + len(item["value"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise FlywheelError(f"{path}:{n}: bad labelled row: {exc}") from exc
        rows.append({"text": row["text"], "spans": spans})
    return rows


def score(scanner: Scanner, rows: list[dict]) -> dict:
    """Per-entity counts and rates, plus the messages the scanner got wrong (for tuning)."""
    c = defaultdict(lambda: {"labelled": 0, "found": 0, "redacted": 0, "predicted": 0, "correct": 0})
    misses, false_alarms = [], []
    for row in rows:
        text, gold = row["text"], row["spans"]
        found = scanner.scan(text)
        for typ, start, end in gold:
            c[typ]["labelled"] += 1
            same = any(f.entity == typ and f.start <= start and f.end >= end for f in found)
            covered = any(f.start <= start and f.end >= end for f in found)
            c[typ]["found"] += same
            c[typ]["redacted"] += covered
            if not same:
                misses.append({"type": typ, "text": text})
        for f in found:
            c[f.entity]["predicted"] += 1
            ok = any(typ == f.entity and f.start < end and start < f.end for typ, start, end in gold)
            c[f.entity]["correct"] += ok
            if not ok:
                false_alarms.append({"type": f.entity, "text": text, "span": text[f.start : f.end]})
    per_entity = {}
    for typ, k in sorted(c.items()):
        per_entity[typ] = {
            **k,
            "recall": k["found"] / k["labelled"] if k["labelled"] else None,
            "redacted_recall": k["redacted"] / k["labelled"] if k["labelled"] else None,
            "precision": k["correct"] / k["predicted"] if k["predicted"] else None,
        }
    failed = [t for t, target in RECALL_TARGETS.items() if (per_entity.get(t, {}).get("recall") or 0.0) < target]
    return {
        "messages": len(rows),
        "with_pii": sum(1 for r in rows if r["spans"]),
        "per_entity": per_entity,
        "targets": RECALL_TARGETS,
        "targets_missed": failed,
        "misses": misses,
        "false_alarms": false_alarms,
    }
