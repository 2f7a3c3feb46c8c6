"""Benchmark: intent and entities in one model on SNIPS (train files to train, validate files to test).

Trains on the seven ``train_<Intent>_full.json`` files (validation carved from them by the usual
text-hash rule), tests on the seven ``validate_<Intent>.json`` files (700 utterances, the usual SNIPS
test set), through the real ``flywheel train`` step: the artifact, its ONNX export and the
evaluation report are what a user's run would produce. Prints intent accuracy, entity (slot)
micro-F1 with exact span match, per-type F1, training wall time and peak memory, as one JSON line
at the end. Target on a 2-core CPU: intent accuracy >= 98.6% and slot F1 >= 95% in at most 15
minutes of training (Joint BERT-base, five times the parameters: 98.6 / 97.0).

    .venv/bin/python -m scripts.bench_snips [--dataset ../shared/datasets/snips] [--epochs N]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from model.core.config import PROJECT_ROOT, DataConfig
from scripts.bench_training import parse_args, run_figures, train_once


def main() -> int:
    default = os.environ.get("FLYWHEEL_SNIPS", str(PROJECT_ROOT.parent / "shared" / "datasets" / "snips"))
    args, train_cfg = parse_args(
        __doc__.split("\n\n")[0], default, "folder with SNIPS' train_*_full.json and validate_*.json"
    )
    data_cfg = DataConfig(val_fraction=0.05)  # ~690 validation texts: about the size of SNIPS' usual dev set
    summary, meta = train_once(Path(args.dataset), data_cfg, train_cfg, "bench-snips-")
    m = summary.metrics
    entities = meta.get("entity_metrics", {})
    run = run_figures(summary, train_cfg)
    figures = {
        "intent_accuracy": round(m["accuracy"], 4),
        "slot_micro_f1": round(m.get("entity_f1", float("nan")), 4),
        "slot_f1_per_type": {k: round(v["f1"], 4) for k, v in sorted(entities.get("per_type", {}).items())},
        **run,
    }
    print(
        f"intent accuracy {m['accuracy']:.2%}  slot F1 {m.get('entity_f1', float('nan')):.2%}  "
        f"training {summary.train_seconds / 60:.1f} min  peak memory {run['peak_rss_mb']} MiB  "
        f"on {summary.device}",
        file=sys.stderr,
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
