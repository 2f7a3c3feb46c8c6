"""Benchmark: fine-tune on Banking77's train.csv (10% held out for validation), test on test.csv.

Prints test accuracy, macro-F1, training wall time and peak memory, as one JSON line at the end.
Target on a 2-core CPU: accuracy >= 94.0% with training in at most 15 minutes.

    .venv/bin/python scripts/bench_banking77.py [--dataset ../shared/datasets/banking77] [--epochs 5]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from model.core.config import PROJECT_ROOT, DataConfig
from scripts.bench_training import parse_args, run_figures, train_once


def main() -> int:
    default = os.environ.get("FLYWHEEL_BANKING77", str(PROJECT_ROOT.parent / "shared" / "datasets" / "banking77"))
    args, train_cfg = parse_args(__doc__.split("\n\n")[0], default, "folder with Banking77's train.csv and test.csv")
    # Banking77 ships train/test; validation is carved from train (val_fraction of it)
    summary, _ = train_once(Path(args.dataset), DataConfig(val_fraction=0.1), train_cfg, "bench-banking77-")
    m = summary["metrics"]
    run = run_figures(summary, train_cfg)
    figures = {
        "test_accuracy": round(m["accuracy"], 4),
        "test_macro_f1": round(m["macro_f1"], 4),
        **run,
        "ece": round(m["ece"], 4),
    }
    print(
        f"accuracy {m['accuracy']:.2%}  macro-F1 {m['macro_f1']:.2%}  training {summary['train_seconds'] / 60:.1f} min"
        f"  peak memory {run['peak_rss_mb']} MiB  on {summary['device']}",
        file=sys.stderr,
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
