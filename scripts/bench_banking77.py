"""Benchmark: fine-tune on Banking77's train.csv (10% held out for validation), test on test.csv.

Prints test accuracy, macro-F1, training wall time and peak memory, as one JSON line at the end.
Target on a 2-core CPU: accuracy >= 94.0% with training in at most 15 minutes.

    .venv/bin/python scripts/bench_banking77.py [--dataset ../shared/datasets/banking77] [--epochs 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

from model.core.config import PROJECT_ROOT, DataConfig, RegistryConfig
from model.core.settings import load_config
from model.train.steps import train_step


def main() -> int:
    default = os.environ.get("FLYWHEEL_BANKING77", str(PROJECT_ROOT.parent / "shared" / "datasets" / "banking77"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=default, help="folder with Banking77's train.csv and test.csv")
    parser.add_argument("--epochs", type=int, help="override the configured number of epochs")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args()

    train_cfg = load_config("train", device=args.device)
    if args.epochs:
        train_cfg = dataclasses.replace(train_cfg, epochs=args.epochs)
    # Banking77 ships train/test; validation is carved from train (val_fraction of it)
    data_cfg = DataConfig(val_fraction=0.1)
    with tempfile.TemporaryDirectory(prefix="bench-banking77-") as tmp:
        work = Path(tmp)  # the MLflow store and the artifact go here, and go with it
        registry = RegistryConfig(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
        summary, _ = train_step(Path(args.dataset), data_cfg, train_cfg, registry, work)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_mb = usage.ru_maxrss / 1024
    m = summary["metrics"]
    figures = {
        "test_accuracy": round(m["accuracy"], 4),
        "test_macro_f1": round(m["macro_f1"], 4),
        "train_seconds": summary["train_seconds"],
        "peak_rss_mb": round(peak_mb),
        # CPU seconds of the whole process (training and evaluation): unlike wall time, not inflated
        # when other work shares the cores
        "process_cpu_seconds": round(usage.ru_utime + usage.ru_stime),
        "device": summary["device"],
        "epochs": train_cfg.epochs,
        "examples": summary["counts"],
        "latency_p95_ms": round(m["latency_p95_ms"], 2),
        "ece": round(m["ece"], 4),
    }
    print(
        f"accuracy {m['accuracy']:.2%}  macro-F1 {m['macro_f1']:.2%}  training {summary['train_seconds'] / 60:.1f} min"
        f"  peak memory {peak_mb:.0f} MiB  on {summary['device']}",
        file=sys.stderr,
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
