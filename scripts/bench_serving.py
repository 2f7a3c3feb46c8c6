"""Benchmark: the KServe predictor against a naive baseline, 1, 8 and 32 concurrent clients on loopback.

The baseline is the same model behind a plain FastAPI route that runs a transformers
``pipeline("feature-extraction")`` (plus the model's pooling and cosine head) for one request at a
time. The predictor runs once per runtime (ONNX Runtime on the artifact's model.onnx, and PyTorch).
All servers are separate processes started up front; each client count is then sent to each server
in turn, so a change of load on a shared machine hits all of them alike. The load is closed-loop
(each client sends its next request when the previous answer arrived). Prints a table and one JSON
line: throughput, p50/p99 latency and server CPU time per request for each server and client count,
the throughput ratio, the accuracy of each server on the labelled test split and each predictor's
agreement with the baseline, and the machine's load average before and after. CPU per request is the
figure to compare on a shared machine: throughput and latency there depend on what else runs.
Target: at least 3x the baseline's throughput at 32 clients with p99 under 100 ms.

    .venv/bin/python -m scripts.bench_serving [--model ARTIFACT_DIR] [--requests 800] [--runtimes onnx,torch]

Without --model it first fine-tunes MiniLM on the bundled sample data for one epoch (a few minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import psutil
import uvicorn
from fastapi import FastAPI

from model.core.config import SAMPLE_DATA, DataConfig, RegistryConfig
from model.core.errors import FlywheelError
from model.core.processes import Supervised
from model.core.settings import load_config
from model.data.examples import load_split

CLIENTS = (1, 8, 32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def baseline_server(folder: str, port: int) -> None:
    """The naive server: transformers pipeline, one request at a time (an async route that blocks the loop)."""
    # PyTorch and transformers take seconds to import: only this server's own process loads them
    import torch
    from transformers import pipeline

    from model.artifact.predictor import IntentPredictor

    predictor = IntentPredictor.load(folder, runtime="torch")
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


def start(name: str, cmd: list[str], ready_url: str, log: Path) -> Supervised:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        return Supervised(name, cmd, log, env=env).start().wait_ready(ready_url)
    except FlywheelError as exc:
        raise SystemExit(str(exc)) from exc


async def load(url: str, make_body, parse, texts: list[str], clients: int, total: int) -> dict:
    """Closed loop: ``clients`` workers share ``total`` requests; returns throughput and latency percentiles."""
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def measure(servers: dict[str, tuple], texts: list[str], total: int) -> dict[str, list[dict]]:
    """Every client count on every server, back to back, so a load change on a shared machine hits all alike.

    Besides throughput and latency, each row has the server's CPU time per request: unlike those, it
    hardly changes when other work shares the cores, so it compares the servers' efficiency fairly.
    """
    for url, make_body, parse, _ in servers.values():
        asyncio.run(load(url, make_body, parse, texts, 4, 40))  # warm-up: first calls pay for lazy initialisation
    rows: dict[str, list[dict]] = {name: [] for name in servers}
    for clients in CLIENTS:
        for name, (url, make_body, parse, pid) in servers.items():
            requests = max(total, len(texts))  # every text at least once: the accuracy check covers the test split
            before = cpu_seconds(pid)
            row = asyncio.run(load(url, make_body, parse, texts, clients, requests))
            row["cpu_ms_per_request"] = round((cpu_seconds(pid) - before) * 1000 / requests, 2)
            print(
                f"{name:9s} {clients:3d} clients  {row['req_per_s']:7.1f} req/s  p50 {row['p50_ms']:7.1f} ms  "
                f"p99 {row['p99_ms']:7.1f} ms  server CPU {row['cpu_ms_per_request']:6.2f} ms/request",
                file=sys.stderr,
            )
            rows[name].append(row)
    return rows


def test_texts() -> tuple[list[str], list[str]]:
    df = load_split(SAMPLE_DATA, DataConfig())
    test = df[df["split"] == "test"]
    return test["text"].tolist(), test["intent"].tolist()


def train_default(root: Path) -> str:
    from model.train.steps import train_step  # PyTorch and transformers: only when no --model is given

    work = root / "work"
    registry = RegistryConfig(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    summary, _ = train_step(SAMPLE_DATA, DataConfig(), load_config("train", epochs=1), registry, work, root / "model")
    return summary.artifact


def accuracy(answers: dict[int, tuple], labels: list[str], oos: str = "oos") -> float:
    """Answered correctly or rightly handed off (out-of-scope and fallback)."""
    ok = [(a[1] if labels[i] == oos else (a[0] == labels[i] and not a[1])) for i, a in answers.items()]
    return round(sum(ok) / len(ok), 4)


def start_servers(model: str, runtimes: list[str], root: Path, running: contextlib.ExitStack) -> dict[str, tuple]:
    """A predictor per runtime and the baseline, each ready: name -> (url, make_body, parse, pid)."""
    servers = {}
    v1 = (lambda t: {"instances": [t]}, lambda b: (b["predictions"][0]["intent"], b["predictions"][0]["fallback"]))
    for runtime in runtimes:
        port = free_port()
        server = start(
            f"predictor ({runtime})",
            [sys.executable, "-m", "scripts.cli", "serve", "--stable", model, "--http_port", str(port),
             "--endpoint", "bench", "--runtime", runtime, "--prediction_log", str(root / f"{runtime}.jsonl"),
             "--report_dir", str(root / f"report-{runtime}")],
            f"http://127.0.0.1:{port}/v2/models/bench/ready", root / f"predictor-{runtime}.log",
        )  # fmt: skip
        running.callback(server.stop)
        servers[runtime] = (f"http://127.0.0.1:{port}/v1/models/bench:predict", *v1, server.proc.pid)
    port = free_port()
    server = start(
        "baseline",
        [sys.executable, "-m", "scripts.bench_serving", "--baseline-server", model, str(port)],
        f"http://127.0.0.1:{port}/docs", root / "baseline.log",
    )  # fmt: skip
    running.callback(server.stop)
    servers["baseline"] = (
        f"http://127.0.0.1:{port}/predict",
        lambda t: {"text": t},
        lambda b: (b["intent"], b["fallback"]),
        server.proc.pid,
    )
    return servers


def predictor_figures(rows: list[dict], base: list[dict], labels: list[str], runtime_served: str) -> dict:
    """One predictor against the baseline, per client count: throughput, latency, CPU, accuracy, agreement."""
    n = len(labels)
    agree = [sum(p["answers"][i] == b["answers"][i] for i in range(n)) / n for p, b in zip(rows, base)]
    return {
        "runtime_served": runtime_served,
        "accuracy": accuracy(rows[-1]["answers"], labels),
        "agreement_with_baseline": round(min(agree), 4),
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
                "predictor_cpu_ms_per_request": p["cpu_ms_per_request"],
                "baseline_cpu_ms_per_request": b["cpu_ms_per_request"],
                "cpu_per_request_ratio": round(b["cpu_ms_per_request"] / p["cpu_ms_per_request"], 2),
            }
            for p, b in zip(rows, base)
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="artifact folder (default: fine-tune MiniLM on the sample data first)")
    parser.add_argument("--requests", type=int, default=800, help="requests per client count")
    parser.add_argument(
        "--runtimes", default="onnx,torch", help="predictor runtimes to measure, comma-separated (onnx, torch)"
    )
    parser.add_argument("--baseline-server", nargs=2, metavar=("ARTIFACT", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        baseline_server(args.baseline_server[0], int(args.baseline_server[1]))
        return 0

    runtimes = [r for r in args.runtimes.split(",") if r]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp, contextlib.ExitStack() as running:
        root = Path(tmp)
        model = args.model or train_default(root)
        texts, labels = test_texts()
        results = measure(start_servers(model, runtimes, root, running), texts, args.requests)
        running.close()  # stops the servers: each predictor writes its serve report, naming the runtime it ran
        served = {
            r: json.loads((root / f"report-{r}" / "serve.json").read_text())["endpoints"]["bench"]["runtime"]
            for r in runtimes
        }
    load_after = os.getloadavg()

    base = results["baseline"]
    figures = {
        "model": model if args.model else "MiniLM fine-tuned 1 epoch on the sample data",
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15_before": [round(x, 2) for x in load_before],
        "load_average_1_5_15_after": [round(x, 2) for x in load_after],
        "test_texts": len(texts),
        "accuracy_baseline": accuracy(base[-1]["answers"], labels),
        "predictors": {r: predictor_figures(results[r], base, labels, served[r]) for r in runtimes},
    }
    for runtime in runtimes:
        for level in figures["predictors"][runtime]["levels"]:
            print(
                f"{runtime:7s} {level['clients']:3d} clients: {level['throughput_ratio']:.2f}x the baseline's "
                f"throughput, p99 {level['predictor_p99_ms']:.1f} ms, "
                f"{level['cpu_per_request_ratio']:.2f}x less server CPU per request",
                file=sys.stderr,
            )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
