"""Benchmark: the collector under load, and after a SIGKILL in the middle of a run.

1. Throughput: 50,000 logger events (25,000 request/response pairs, binary-mode CloudEvents) from
   16 concurrent senders to `flywheel collect` on loopback with the default SQLite store; prints
   events per second and checks that the number stored equals the number acknowledged.
2. Crash: a fresh store, the same kind of load, the collector killed with SIGKILL mid-run,
   restarted on the same store, and every event sent again; checks that no acknowledged event was
   lost and none is stored twice.
Target: at least 2,000 events/s on SQLite.

    .venv/bin/python -m scripts.bench_collector [--events 50000] [--senders 16] [--store-url URL]

The senders run in this process (asyncio + aiohttp) and share the machine's CPUs with the collector.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import sqlalchemy as sa

from model.core.errors import FlywheelError
from model.core.processes import Supervised

REQUEST = "org.kubeflow.serving.inference.request"
RESPONSE = "org.kubeflow.serving.inference.response"
TEXTS = ["where is my order", "I want to return these shoes", "my card was declined", "talk to a human please"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_events(n: int, run: str) -> list[tuple[str, dict, bytes]]:
    """n events: request and response of n/2 calls, each pair sharing its ce-id, as KServe's logger sends them."""
    events = []
    for i in range(n // 2):
        rid = f"{run}-{i:06d}-{uuid.uuid4().hex[:8]}"
        text = TEXTS[i % len(TEXTS)]
        common = {
            "ce-specversion": "1.0",
            "ce-id": rid,
            "ce-source": "http://localhost:9081/",  # every revision's, kserve cmd/agent/main.go
            "ce-inferenceservicename": "support-bot",
            "ce-namespace": "chat",
            "ce-component": "predictor",
            "ce-endpoint": "",  # KServe's controller never sets the label it comes from
            "content-type": "application/json",
            "ce-metadata": json.dumps({"X-Conversation-Id": [f"conv-{i // 3}"]}),
        }
        pred = {"intent": "order_status", "confidence": 0.93, "fallback": False, "reply": "You can follow your order",
                "model_version": "4", "request_id": rid}  # fmt: skip
        events.append((f"{rid}/request", {**common, "ce-type": REQUEST}, json.dumps({"instances": [text]}).encode()))
        events.append(
            (f"{rid}/response", {**common, "ce-type": RESPONSE}, json.dumps({"predictions": [pred]}).encode())
        )
    return events


async def send_all(url: str, events: list, senders: int, stop_on_error: bool = True) -> dict:
    """``senders`` concurrent workers share the events; returns which were acknowledged (HTTP 200) and how."""
    acked, duplicates, failed = set(), set(), 0
    queue = list(reversed(events))
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=senders), timeout=timeout) as session:

        async def worker():
            nonlocal failed
            while queue:
                key, headers, body = queue.pop()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        answer = await resp.json()
                        if resp.status == 200:
                            acked.add(key)
                            if answer.get("duplicate"):
                                duplicates.add(key)
                        else:
                            failed += 1
                except (TimeoutError, aiohttp.ClientError):
                    failed += 1
                    if stop_on_error:
                        return  # the collector is gone: this sender gives up until it is back

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(senders)))
        wall = time.perf_counter() - started
    return {"acked": acked, "duplicates": duplicates, "failed": failed, "wall_s": wall}


class Collector:
    def __init__(self, store_url: str, work: Path, sqlite_synchronous: str = "FULL"):
        self.store_url, self.work = store_url, work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        cmd = [sys.executable, "-m", "scripts.cli", "collect", "--http_port", str(self.port),
               "--store_url", self.store_url, "--work-dir", str(work),
               "--sqlite_synchronous", sqlite_synchronous]  # fmt: skip
        self.process = Supervised("the collector", cmd, work / "collector.log")

    def start(self) -> None:
        try:
            self.process.start().wait_ready(self.url + "healthz", timeout_s=60)
        except FlywheelError as exc:
            raise SystemExit(str(exc)) from exc

    def stop(self, sig=signal.SIGTERM) -> None:
        self.process.stop(sig, timeout_s=60)


def stored_keys(store_url: str, run: str) -> list[str]:
    """Every stored (event id, kind) of one run, duplicates included if there were any."""
    engine = sa.create_engine(store_url)
    query = sa.text("SELECT event_id, kind FROM inference_events WHERE event_id LIKE :prefix")
    with engine.connect() as conn:
        keys = [f"{r[0]}/{r[1]}" for r in conn.execute(query, {"prefix": f"{run}-%"})]
    engine.dispose()
    return keys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument("--crash-events", type=int, default=20_000, help="events in the SIGKILL run")
    parser.add_argument("--kill-after", type=float, default=2.0, help="seconds into the crash run before SIGKILL")
    parser.add_argument("--store-url", default="", help="SQLAlchemy URL (default: a SQLite file in a temp dir)")
    parser.add_argument("--sqlite-synchronous", default="FULL", help="FULL (power-cut safe) or NORMAL (crash safe)")
    args = parser.parse_args()
    figures = {"senders": args.senders, "cpu_count": os.cpu_count(), "sqlite_synchronous": args.sqlite_synchronous}

    with tempfile.TemporaryDirectory(prefix="bench-collector-") as tmp:
        work = Path(tmp)
        url = args.store_url or f"sqlite:///{work / 'throughput.db'}"
        collector = Collector(url, work, args.sqlite_synchronous)
        collector.start()
        run_id = uuid.uuid4().hex[:6]  # a rerun on the same --store-url must not count the last run's events
        events = make_events(args.events, f"load{run_id}")
        result = asyncio.run(send_all(collector.url, events, args.senders, stop_on_error=False))
        collector.stop()
        stored = stored_keys(url, f"load{run_id}")
        figures["throughput"] = {
            "store": url.split(":")[0],
            "events": len(events),
            "acknowledged": len(result["acked"]),
            "stored": len(stored),
            "failed": result["failed"],
            "events_per_s": round(len(result["acked"]) / result["wall_s"], 1),
            "stored_equals_acknowledged": len(stored) == len(result["acked"]) and set(stored) == result["acked"],
        }
        print(f"throughput: {figures['throughput']}", file=sys.stderr)

        url = args.store_url or f"sqlite:///{work / 'crash.db'}"
        collector = Collector(url, work, args.sqlite_synchronous)
        collector.start()
        events = make_events(args.crash_events, f"crash{run_id}")

        async def run_and_kill():
            sending = asyncio.create_task(send_all(collector.url, events, args.senders))
            await asyncio.sleep(args.kill_after)
            collector.stop(signal.SIGKILL)
            return await sending

        first = asyncio.run(run_and_kill())
        after_kill = set(stored_keys(url, f"crash{run_id}"))
        collector.start()
        resend = asyncio.run(send_all(collector.url, events, args.senders, stop_on_error=False))
        collector.stop()
        final = stored_keys(url, f"crash{run_id}")
        all_keys = {key for key, _, _ in events}
        figures["crash"] = {
            "events": len(events),
            "acknowledged_before_kill": len(first["acked"]),
            "stored_at_kill": len(after_kill),
            "acknowledged_lost_at_kill": len(first["acked"] - after_kill),
            "committed_but_unacknowledged": len(after_kill - first["acked"]),
            "resend_acknowledged": len(resend["acked"]),
            "resend_reported_duplicate": len(resend["duplicates"]),
            "stored_after_resend": len(final),
            "distinct_stored_after_resend": len(set(final)),
            "none_lost": first["acked"] <= after_kill and set(final) == all_keys,
            "none_duplicated": len(final) == len(set(final)) == len(all_keys) and resend["duplicates"] == after_kill,
        }
        print(f"crash: {figures['crash']}", file=sys.stderr)
    print(json.dumps(figures))
    ok = figures["throughput"]["stored_equals_acknowledged"] and figures["crash"]["none_lost"]
    return 0 if ok and figures["crash"]["none_duplicated"] else 1


if __name__ == "__main__":
    sys.exit(main())
