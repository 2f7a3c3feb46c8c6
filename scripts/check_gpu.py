"""Check the GPU path end to end (``make check-gpu``): on a CUDA machine, fine-tune on Banking77 through
the real ``flywheel train`` step (``model.train.steps.train_step``: the same code as on a CPU, under
bf16 autocast, or fp16 with loss scaling where the GPU lacks bf16), package the artifact with its
ONNX export checked against the PyTorch model (a difference over ``train.onnx_tolerance`` stops it),
then embed the test texts as the drift check and prepare's review queue do (``data_checks.embeddings``,
which picks the GPU the same way). Prints the GPU's name, test accuracy, training time, peak GPU
memory, the ONNX parity figures and the embedding throughput, then one JSON line.

Exit 0: every check held; 1: one failed (training not on the GPU, or the ONNX export differs);
2: no CUDA device here (this is not part of CI: runners have no GPU).

    .venv/bin/python -m scripts.check_gpu [--dataset ../shared/datasets/banking77] [--epochs N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

from model.core.config import PROJECT_ROOT, DataConfig
from model.core.errors import FlywheelError
from model.core.settings import load_config

if TYPE_CHECKING:  # the training stack: seconds to import, only with a GPU (as in main)
    from model.train.steps import Trained

EXIT_OK, EXIT_FAILED, EXIT_NO_GPU = 0, 1, 2


def main() -> int:
    default = os.environ.get("FLYWHEEL_BANKING77", str(PROJECT_ROOT.parent / "shared" / "datasets" / "banking77"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=default, help="folder with Banking77's train.csv and test.csv")
    parser.add_argument("--epochs", type=int, help="override the configured number of epochs")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            f"check-gpu: no CUDA device here (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
            "it needs an NVIDIA GPU and a CUDA build of torch, and checks nothing on a CPU",
            file=sys.stderr,
        )
        return EXIT_NO_GPU
    from scripts.bench_training import train_once  # the training stack: seconds to import, only with a GPU

    train_cfg = load_config("train", device="cuda")
    if args.epochs:
        train_cfg = dataclasses.replace(train_cfg, epochs=args.epochs)
    gpu = torch.cuda.get_device_name()
    torch.cuda.reset_peak_memory_stats()
    try:
        summary, meta = train_once(Path(args.dataset), DataConfig(val_fraction=0.1), train_cfg, "check-gpu-")
    except FlywheelError as exc:  # the ONNX export differing from PyTorch is one
        print(f"check-gpu: FAILED on {gpu}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    peak_train = torch.cuda.max_memory_allocated()
    found = figures(gpu, summary, meta, peak_train, embed(Path(args.dataset) / "test.csv"))
    print(
        f"{gpu}: accuracy {found['test_accuracy']:.2%}  training {found['train_seconds']:.0f} s "
        f"({found['precision']})  peak GPU memory {found['peak_gpu_memory_mib']} MiB  ONNX vs PyTorch "
        f"max probability diff {found['onnx_max_abs_probability_diff']}  embedding "
        f"{found['embedding_texts_per_s']:.0f} texts/s",
        file=sys.stderr,
    )
    failed = problems(found)
    for problem in failed:
        print(f"check-gpu: FAILED: {problem}", file=sys.stderr)
    print(json.dumps(found))
    return EXIT_FAILED if failed else EXIT_OK


def figures(gpu: str, summary: Trained, meta: dict, peak_bytes: int, embedding: dict) -> dict:
    """The check's figures from the train step's summary, the artifact's meta.json and ``embed``'s."""
    return {
        "gpu": gpu,
        "device": summary.device,
        "precision": summary.precision,
        "test_accuracy": round(summary.metrics["accuracy"], 4),
        "test_macro_f1": round(summary.metrics["macro_f1"], 4),
        "train_seconds": summary.train_seconds,
        "epochs": meta["config"]["train"]["epochs"],
        "peak_gpu_memory_mib": round(peak_bytes / 2**20),
        "onnx_max_abs_probability_diff": meta.get("onnx", {}).get("max_abs_probability_diff"),
        "onnx_argmax_agreement": meta.get("onnx", {}).get("argmax_agreement"),
        **embedding,
    }


def problems(found: dict) -> list[str]:
    """What says the GPU path was not taken, or not checked (a differing ONNX export stops the artifact
    itself)."""
    out = [
        f"{what} ran on {where}"
        for what, where in (("training", found["device"]), ("embedding", found["embedding_device"]))
        if not where.startswith("cuda")
    ]
    if found["precision"] not in ("bf16", "fp16"):
        out.append(f"training ran in {found['precision']}, not under autocast")
    if found["onnx_max_abs_probability_diff"] is None:
        out.append("no ONNX export to check (train.export_onnx is off in the config)")
    return out


def embed(test_csv: Path) -> dict:
    """The drift check's and prepare's embedder on the test texts (no cache): its device and speed."""
    from data_checks.embeddings import Embedder

    texts = pd.read_csv(test_csv)["text"].astype(str).tolist()
    encoder = load_config("drift").encoder
    Embedder(encoder, cache_dir=None)(texts[:8])  # loads the encoder (once per process); first calls allocate
    embedder = Embedder(encoder, cache_dir=None)
    started = time.perf_counter()
    vectors = embedder(texts)
    seconds = time.perf_counter() - started
    return {
        "embedding_device": embedder.device,
        "embedding_texts_per_s": round(len(texts) / seconds, 1),
        "embedding_shape": list(vectors.shape),
    }


if __name__ == "__main__":
    sys.exit(main())
