"""What the training benchmarks share: the command line, one real ``flywheel train`` run in a
throw-away store, and the figures every one of them prints (time, memory, CPU, latency)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import tempfile
from pathlib import Path

from model.core.config import DataConfig, RegistryConfig, TrainConfig
from model.core.settings import load_config
from model.train.steps import Trained, train_step


def parse_args(description: str, dataset_default: str, dataset_help: str) -> tuple[argparse.Namespace, TrainConfig]:
    """``--dataset``, ``--epochs`` and ``--device``, and the train config they give."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dataset", default=dataset_default, help=dataset_help)
    parser.add_argument("--epochs", type=int, help="override the configured number of epochs")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args()
    train_cfg = load_config("train", device=args.device)
    if args.epochs:
        train_cfg = dataclasses.replace(train_cfg, epochs=args.epochs)
    return args, train_cfg


def train_once(dataset: Path, data_cfg: DataConfig, train_cfg: TrainConfig, prefix: str) -> tuple[Trained, dict]:
    """The train step's summary and the artifact's meta.json; the MLflow store and artifact go with the temp folder."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        registry = RegistryConfig(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
        summary, _ = train_step(dataset, data_cfg, train_cfg, registry, work)
        meta = json.loads((Path(summary.artifact) / "meta.json").read_text())
    return summary, meta


def run_figures(summary: Trained, train_cfg: TrainConfig) -> dict:
    """Training time, peak memory and CPU of this process, device, epochs, split sizes, one-query p95."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "train_seconds": summary.train_seconds,
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        # CPU seconds of the whole process (training and evaluation): unlike wall time, not inflated
        # when other work shares the cores
        "process_cpu_seconds": round(usage.ru_utime + usage.ru_stime),
        "device": summary.device,
        "epochs": train_cfg.epochs,
        "examples": summary.counts,
        "latency_p95_ms": round(summary.metrics["latency_p95_ms"], 2),
    }
