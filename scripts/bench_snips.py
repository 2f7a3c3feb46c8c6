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
    default = os.environ.get("FLYWHEEL_SNIPS", str(PROJECT_ROOT.parent / "shared" / "datasets" / "snips"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=default, help="folder with SNIPS' train_*_full.json and validate_*.json")
    parser.add_argument("--epochs", type=int, help="override the configured number of epochs")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args()

    train_cfg = load_config("train", device=args.device)
    if args.epochs:
        train_cfg = dataclasses.replace(train_cfg, epochs=args.epochs)
    data_cfg = DataConfig(val_fraction=0.05)  # ~690 validation texts: about the size of SNIPS' usual dev set
    with tempfile.TemporaryDirectory(prefix="bench-snips-") as tmp:
        work = Path(tmp)  # the MLflow store and the artifact go here, and go with it
        registry = RegistryConfig(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
        summary, _ = train_step(Path(args.dataset), data_cfg, train_cfg, registry, work)
        report = json.loads((Path(summary["artifact"]) / "meta.json").read_text())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_mb = usage.ru_maxrss / 1024
    m = summary["metrics"]
    entities = report.get("entity_metrics", {})
    figures = {
        "intent_accuracy": round(m["accuracy"], 4),
        "slot_micro_f1": round(m.get("entity_f1", float("nan")), 4),
        "slot_f1_per_type": {k: round(v["f1"], 4) for k, v in sorted(entities.get("per_type", {}).items())},
        "train_seconds": summary["train_seconds"],
        "peak_rss_mb": round(peak_mb),
        # CPU seconds of the whole process: unlike wall time, not inflated when other work shares the cores
        "process_cpu_seconds": round(usage.ru_utime + usage.ru_stime),
        "device": summary["device"],
        "epochs": train_cfg.epochs,
        "examples": summary["counts"],
        "latency_p95_ms": round(m["latency_p95_ms"], 2),
    }
    print(
        f"intent accuracy {m['accuracy']:.2%}  slot F1 {m.get('entity_f1', float('nan')):.2%}  "
        f"training {summary['train_seconds'] / 60:.1f} min  peak memory {peak_mb:.0f} MiB  on {summary['device']}",
        file=sys.stderr,
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
