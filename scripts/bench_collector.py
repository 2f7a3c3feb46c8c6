"""Benchmark: the collector under load, and after a SIGKILL in the middle of a run.

1. Throughput: 50,000 logger events (25,000 request/response pairs, binary-mode CloudEvents) from
   16 concurrent senders to `flywheel collect` on loopback with the default SQLite store; prints
   events per second and checks that the number stored equals the number acknowledged.
2. Crash: a fresh store, the same kind of load, the collector killed with SIGKILL mid-run,
   restarted on the same store, and every event sent again; checks that no acknowledged event was
   lost and none is stored twice.
Target: at least 2,000 events/s on SQLite.
3. Store outage (``--store-outage SECONDS``, instead of 1 and 2): a throwaway PostgreSQL cluster
   (Debian's server binaries, scripts/throwaway_postgres.py), a steady load of ``--outage-rate``
   events/s, the database stopped (``pg_ctl stop -m fast``) for SECONDS and started again; prints
   "N acknowledged, N stored, N lost", events stored twice, events stored out of acknowledgement
   order (by PostgreSQL's xmin), the spool's peak and the time to write it once the database is back.

    .venv/bin/python -m scripts.bench_collector [--events 50000] [--senders 16] [--store-url URL]
    .venv/bin/python -m scripts.bench_collector --store-outage 60 [--outage-rate 200]

The senders run in this process (asyncio + aiohttp) and share the machine's CPUs with the collector.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import signal
import socket
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import aiohttp
import sqlalchemy as sa

from model.core.errors import FlywheelError
from model.core.processes import Supervised
from scripts.throwaway_postgres import ThrowawayPostgres

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


def stored_xmin(store_url: str, run: str) -> tuple[dict[str, int], int]:
    """PostgreSQL: ``<event id>/<kind>`` -> xmin (the id of the transaction that inserted it; on a fresh
    cluster it grows with each transaction) of one run's stored events, and how many rows there are."""
    engine = sa.create_engine(store_url)
    query = sa.text("SELECT event_id, kind, xmin::text::bigint FROM inference_events WHERE event_id LIKE :p")
    with engine.connect() as conn:
        rows = conn.execute(query, {"p": f"{run}-%"}).all()
    engine.dispose()
    return {f"{event_id}/{kind}": xmin for event_id, kind, xmin in rows}, len(rows)


def out_of_order(acked: list[tuple[str, float, float]], xmin: dict[str, int]) -> list[str]:
    """Events stored in an earlier transaction than some event acknowledged before they were sent.

    ``acked``: (key, time sent, time acknowledged) of acknowledged events, on one monotonic clock."""
    by_ack = sorted((answered, xmin[key]) for key, _, answered in acked if key in xmin)
    ack_times, highest, so_far = [answered for answered, _ in by_ack], [], 0
    for _, x in by_ack:
        so_far = max(so_far, x)
        highest.append(so_far)
    late = []
    for key, at, _ in acked:
        before = bisect.bisect_left(ack_times, at)  # acknowledged before this one was sent
        if key in xmin and before and highest[before - 1] > xmin[key]:
            late.append(key)
    return late


def spool_figures(url: str) -> dict[str, float]:
    """The collector's spool and store series, from its /metrics."""
    with urllib.request.urlopen(url + "metrics", timeout=10) as answer:
        lines = [line.rsplit(" ", 1) for line in answer.read().decode().splitlines() if not line.startswith("#")]
    return {name: float(value) for name, value in lines if name in SPOOL_SERIES}


SPOOL_SERIES = (
    "flywheel_collector_spool_events",
    "flywheel_collector_spool_bytes",
    "flywheel_collector_store_up",
    'flywheel_collector_spool_drained_total{outcome="duplicate"}',  # written twice (a replay), ignored by the store
)


async def paced_load(url: str, events: list, rate: float, senders: int, stop: asyncio.Event) -> list:
    """Event i sent at ``i / rate`` s from the start (or at once when behind), by ``senders`` workers, until
    ``stop`` or the end of ``events``; returns (key, sent, answered, status) with status 0 for no answer."""
    sent, timeout = [], aiohttp.ClientTimeout(total=60)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=senders), timeout=timeout) as session:

        async def worker(first: int):
            for i in range(first, len(events), senders):
                if stop.is_set():
                    return
                await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
                key, headers, body = events[i]
                at = time.monotonic()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        status = resp.status
                except (TimeoutError, aiohttp.ClientError):
                    status = 0
                sent.append((key, at, time.monotonic(), status))

        await asyncio.gather(*(worker(k) for k in range(senders)))
    return sent


def store_outage(seconds: float, rate: float, senders: int, work: Path) -> dict:
    """Steady load; the database stopped for ``seconds`` and started again; then every acknowledged event
    must be stored, once, in acknowledgement order."""
    warmup_s, after_s = 5.0, 15.0
    cluster = ThrowawayPostgres().start()
    try:
        admin = sa.create_engine(f"{cluster.url}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text('CREATE DATABASE "bench"'))
        admin.dispose()
        url = f"{cluster.url}/bench"
        collector = Collector(url, work)
        collector.start()
        run = f"outage{uuid.uuid4().hex[:6]}"
        events = make_events(int(rate * (warmup_s + seconds + after_s + 5)) // 2 * 2, run)
        peak = {"flywheel_collector_spool_events": 0.0, "flywheel_collector_spool_bytes": 0.0}
        timeline = {}

        async def scenario():
            stop = asyncio.Event()
            loading = asyncio.create_task(paced_load(collector.url, events, rate, senders, stop))
            await asyncio.sleep(warmup_s)
            await asyncio.to_thread(cluster.stop)
            timeline["stopped"] = time.monotonic()
            while time.monotonic() - timeline["stopped"] < seconds:
                await asyncio.sleep(1.0)
                gauges = await asyncio.to_thread(spool_figures, collector.url)
                peak.update({k: max(v, gauges.get(k, 0.0)) for k, v in peak.items()})
            await asyncio.to_thread(cluster.start)
            timeline["started"] = time.monotonic()

            async def drained(limit_s: float) -> dict:
                deadline = time.monotonic() + limit_s
                while True:
                    gauges = await asyncio.to_thread(spool_figures, collector.url)
                    empty = not gauges.get(SPOOL_SERIES[0]) and gauges.get(SPOOL_SERIES[2])
                    if empty or time.monotonic() > deadline:
                        return gauges
                    await asyncio.sleep(0.2)

            await drained(after_s)  # under the load that goes on
            timeline["drained"] = time.monotonic()
            await asyncio.sleep(max(0.0, timeline["started"] + after_s - time.monotonic()))
            stop.set()
            sent = await loading
            gauges = await drained(300)  # bounded: a drain that never ends shows as acknowledged but not stored
            peak["replays_ignored"] = gauges.get(SPOOL_SERIES[3], 0.0)
            return sent

        sent = asyncio.run(scenario())
        collector.stop()
        xmin, rows = stored_xmin(url, run)
    finally:
        cluster.remove()
    acked = [(key, at, answered) for key, at, answered, status in sent if status == 200]
    acked_keys = {key for key, _, _ in acked}
    during = [answered - at for key, at, answered, status in sent
              if status == 200 and timeline["stopped"] <= at < timeline["started"]]  # fmt: skip
    return {
        "outage_s": seconds,
        "rate_events_per_s": rate,
        "senders": senders,
        "sent": len(sent),
        "acknowledged": len(acked_keys),
        "acknowledged_during_outage": len(during),
        "refused": sum(status != 200 for *_, status in sent),
        "stored": len(xmin),
        "lost": len(acked_keys - set(xmin)),
        "stored_twice": rows - len(xmin),  # the key (event id, kind) makes it 0; a replay is ignored instead
        "replays_ignored": int(peak["replays_ignored"]),
        "out_of_order": len(out_of_order(acked, xmin)),
        "spool_peak_events": int(peak["flywheel_collector_spool_events"]),
        "spool_peak_bytes": int(peak["flywheel_collector_spool_bytes"]),
        "ack_p99_ms_during_outage": round(1000 * sorted(during)[int(0.99 * (len(during) - 1))], 1) if during else None,
        "drained_s_after_restart": round(timeline["drained"] - timeline["started"], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument("--crash-events", type=int, default=20_000, help="events in the SIGKILL run")
    parser.add_argument("--kill-after", type=float, default=2.0, help="seconds into the crash run before SIGKILL")
    parser.add_argument("--store-url", default="", help="SQLAlchemy URL (default: a SQLite file in a temp dir)")
    parser.add_argument("--sqlite-synchronous", default="FULL", help="FULL (power-cut safe) or NORMAL (crash safe)")
    parser.add_argument("--store-outage", type=float, default=0, help="seconds the database is stopped (scenario 3)")
    parser.add_argument("--outage-rate", type=float, default=200, help="events/s during scenario 3: 100 calls/s")
    args = parser.parse_args()
    if args.store_outage:
        with tempfile.TemporaryDirectory(prefix="bench-collector-") as tmp:
            figures = store_outage(args.store_outage, args.outage_rate, args.senders, Path(tmp))
        f = figures
        print(
            f"store outage {args.store_outage:g} s: {f['acknowledged']} acknowledged, {f['stored']} stored, "
            f"{f['lost']} lost; {f['stored_twice']} stored twice, {f['out_of_order']} out of order",
            file=sys.stderr,
        )
        print(json.dumps({**figures, "cpu_count": os.cpu_count()}))
        return 0 if figures["lost"] == figures["stored_twice"] == figures["out_of_order"] == 0 else 1
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
