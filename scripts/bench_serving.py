"""Benchmark: the KServe predictor against a naive baseline, 1, 8 and 32 concurrent clients on loopback.

The baseline is the same model behind a plain FastAPI route that runs a transformers
``pipeline("feature-extraction")`` (plus the model's pooling and cosine head) for one request at a
time. Both servers run as separate processes, one after the other, and get the same closed-loop
load (each client sends its next request when the previous answer arrived). Prints a table and one
JSON line: throughput, p50/p99 latency per server and client count, the throughput ratio, and the
accuracy of both on the labelled test split (their predictions must agree).
Target: at least 3x the baseline's throughput at 32 clients with p99 under 100 ms.

    .venv/bin/python -m scripts.bench_serving [--model ARTIFACT_DIR] [--requests 800]

Without --model it first fine-tunes MiniLM on the bundled sample data for one epoch (a few minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from model.config import PROJECT_ROOT, SAMPLE_DATA, DataConfig

CLIENTS = (1, 8, 32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def baseline_server(folder: str, port: int) -> None:
    """The naive server: transformers pipeline, one request at a time (an async route that blocks the loop)."""
    import torch
    import uvicorn
    from fastapi import FastAPI
    from transformers import pipeline

    from model.predictor import IntentPredictor

    predictor = IntentPredictor.load(folder)
    model = predictor.model
    extractor = pipeline("feature-extraction", model=model.encoder, tokenizer=predictor.tokenizer, device=-1)
    head = torch.nn.functional.normalize(model.head.weight.detach(), dim=-1).numpy()
    scale, temperature = float(model.scale), predictor.temperature
    app = FastAPI()

    @app.post("/predict")
    async def predict(body: dict) -> dict:
        hidden = np.asarray(
            extractor(body["text"], tokenize_kwargs={"truncation": True, "max_length": predictor.max_length})[0]
        )
        pooled = hidden.mean(axis=0)
        pooled /= np.linalg.norm(pooled)
        logits = scale * head @ pooled / temperature
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        j = int(probs.argmax())
        return {
            "intent": predictor.labels[j],
            "confidence": float(probs[j]),
            "fallback": bool(probs[j] < predictor.threshold),
        }

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def start(cmd: list[str], ready_url: str, log: Path) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            if httpx.get(ready_url, timeout=1).status_code < 500:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"server not ready in 180 s: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def load(url: str, make_body, parse, texts: list[str], clients: int, total: int) -> dict:
    """Closed loop: ``clients`` workers share ``total`` requests; returns throughput and latency percentiles."""
    import aiohttp

    latencies: list[float] = []
    answers: dict[int, tuple] = {}
    next_index = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:

        async def worker():
            nonlocal next_index
            while next_index < total:
                i = next_index
                next_index += 1
                t0 = time.perf_counter()
                async with session.post(url, json=make_body(texts[i % len(texts)])) as resp:
                    body = await resp.json()
                    if resp.status != 200:
                        raise SystemExit(f"{url} answered {resp.status}: {body}")
                latencies.append(time.perf_counter() - t0)
                answers[i % len(texts)] = parse(body)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": total,
        "req_per_s": round(total / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "answers": answers,
    }


def measure(name: str, url: str, make_body, parse, texts: list[str], total: int) -> list[dict]:
    asyncio.run(load(url, make_body, parse, texts, 4, 40))  # warm-up: first calls pay for lazy initialisation
    rows = []
    for clients in CLIENTS:
        # every client count sees every text at least once, so the accuracy check covers the whole test split
        row = asyncio.run(load(url, make_body, parse, texts, clients, max(total, len(texts))))
        print(
            f"{name:9s} {clients:3d} clients  {row['req_per_s']:7.1f} req/s  p50 {row['p50_ms']:7.1f} ms  "
            f"p99 {row['p99_ms']:7.1f} ms",
            file=sys.stderr,
        )
        rows.append(row)
    return rows


def test_texts() -> tuple[list[str], list[str]]:
    from model.pipeline import load_split

    df = load_split(SAMPLE_DATA, DataConfig())
    test = df[df["split"] == "test"]
    return test["text"].tolist(), test["intent"].tolist()


def train_default(root: Path) -> str:
    from model.config import RegistryConfig, load_config
    from model.pipeline import train_step

    os.environ["FLYWHEEL_WORK_DIR"] = str(root / "work")
    summary, _ = train_step(SAMPLE_DATA, DataConfig(), load_config("train", epochs=1), RegistryConfig(), root / "model")
    return summary["artifact"]


def accuracy(answers: dict[int, tuple], labels: list[str], oos: str = "oos") -> float:
    """Answered correctly or rightly handed off (out-of-scope and fallback)."""
    ok = [(a[1] if labels[i] == oos else (a[0] == labels[i] and not a[1])) for i, a in answers.items()]
    return round(sum(ok) / len(ok), 4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="artifact folder (default: fine-tune MiniLM on the sample data first)")
    parser.add_argument("--requests", type=int, default=800, help="requests per client count")
    parser.add_argument("--baseline-server", nargs=2, metavar=("ARTIFACT", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        baseline_server(args.baseline_server[0], int(args.baseline_server[1]))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        root = Path(tmp)
        model = args.model or train_default(root)
        texts, labels = test_texts()
        results = {}

        port = free_port()
        proc = start(
            [sys.executable, "-m", "scripts.cli", "serve", "--stable", model, "--http_port", str(port),
             "--endpoint", "bench", "--prediction_log", str(root / "predictions.jsonl"), "--report_dir", str(root)],
            f"http://127.0.0.1:{port}/v1/models/bench", root / "predictor.log",
        )  # fmt: skip
        try:
            results["predictor"] = measure(
                "predictor", f"http://127.0.0.1:{port}/v1/models/bench:predict",
                lambda t: {"instances": [t]},
                lambda b: (b["predictions"][0]["intent"], b["predictions"][0]["fallback"]),
                texts, args.requests,
            )  # fmt: skip
        finally:
            stop(proc)

        port = free_port()
        proc = start(
            [sys.executable, "-m", "scripts.bench_serving", "--baseline-server", model, str(port)],
            f"http://127.0.0.1:{port}/docs", root / "baseline.log",
        )  # fmt: skip
        try:
            results["baseline"] = measure(
                "baseline", f"http://127.0.0.1:{port}/predict",
                lambda t: {"text": t}, lambda b: (b["intent"], b["fallback"]), texts, args.requests,
            )  # fmt: skip
        finally:
            stop(proc)

    agree = [
        sum(p["answers"][i] == b["answers"][i] for i in range(len(texts))) / len(texts)
        for p, b in zip(results["predictor"], results["baseline"])
    ]
    figures = {
        "model": model if args.model else "MiniLM fine-tuned 1 epoch on the sample data",
        "cpu_count": os.cpu_count(),
        "test_texts": len(texts),
        "accuracy_predictor": accuracy(results["predictor"][-1]["answers"], labels),
        "accuracy_baseline": accuracy(results["baseline"][-1]["answers"], labels),
        "prediction_agreement": round(min(agree), 4),
        "levels": [
            {
                "clients": p["clients"],
                "predictor_req_per_s": p["req_per_s"],
                "predictor_p50_ms": p["p50_ms"],
                "predictor_p99_ms": p["p99_ms"],
                "baseline_req_per_s": b["req_per_s"],
                "baseline_p50_ms": b["p50_ms"],
                "baseline_p99_ms": b["p99_ms"],
                "throughput_ratio": round(p["req_per_s"] / b["req_per_s"], 2),
            }
            for p, b in zip(results["predictor"], results["baseline"])
        ],
    }
    for level in figures["levels"]:
        print(
            f"{level['clients']:3d} clients: {level['throughput_ratio']:.2f}x the baseline's throughput",
            file=sys.stderr,
        )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
