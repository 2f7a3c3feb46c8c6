"""Recall and precision of the PII scanner per entity type on the labelled chat messages.

    .venv/bin/python scripts/bench_pii.py [--eval-set tests/data/pii_eval.jsonl] [--show-errors]

Exits 1 when a recall target of the issue is missed (emails and cards 0.99, IBANs and phones 0.95).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from data_checks.pii import Scanner
from data_checks.pii_benchmark import EVAL_SET, read_eval_set, score


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval-set", default=str(EVAL_SET))
    ap.add_argument("--show-errors", action="store_true", help="print every miss and false alarm")
    args = ap.parse_args()
    rows = read_eval_set(Path(args.eval_set))
    started = time.perf_counter()
    scanner = Scanner()
    built = time.perf_counter()
    result = score(scanner, rows)
    done = time.perf_counter()
    print(f"{result['messages']} messages ({result['with_pii']} with personal data) from {args.eval_set}")
    print(f"{'entity':8} {'labelled':>8} {'recall':>7} {'redacted':>9} {'predicted':>9} {'precision':>9}  target")
    for typ, k in result["per_entity"].items():
        fmt = lambda v: f"{v:.3f}" if v is not None else "  -  "  # noqa: E731
        target = result["targets"].get(typ)
        print(
            f"{typ:8} {k['labelled']:8d} {fmt(k['recall']):>7} {fmt(k['redacted_recall']):>9} "
            f"{k['predicted']:9d} {fmt(k['precision']):>9}  {'recall >= ' + str(target) if target else ''}"
        )
    print(f"scanner build {built - started:.1f} s, {1000 * (done - built) / len(rows):.1f} ms per message")
    if args.show_errors:
        for m in result["misses"]:
            print(f"MISS  {m['type']:6} {m['text']}")
        for f in result["false_alarms"]:
            print(f"FALSE {f['type']:6} {f['span']!r} in {f['text']}")
    if result["targets_missed"]:
        print(f"recall target missed for: {', '.join(result['targets_missed'])}")
        return 1
    print("all recall targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
