"""A month of traffic on one machine: ``export-events``, ``check-data --events``, ``prepare`` and ``drift``
over a synthetic window of answered requests, timed with each step's peak memory.

    .venv/bin/python -m scripts.bench_scale [--requests 1000000] [--stores sqlite,postgresql] [--out work/bench-scale]

The window is generated once (``scripts/synthetic_window.py``, ``scripts/synthetic_traffic.py``:
``--requests`` requests over the 30 days before now, plus a tenth as many in the 30 days before that,
the earlier window drift compares with) and written into each store: a SQLite file, a throwaway
PostgreSQL (``scripts/throwaway_postgres.py``).
Then, store by store, each step runs as its own ``flywheel`` process, as the retrain and drift workflows run them, in a
fresh work folder (caches cold): the export of the window, the data checks on it, prepare (default
config: MLflow run included) and drift (``--reference-events``: the earlier window, exported first).
Each step's wall time, CPU time (user + system: what a busy machine inflates least) and peak
resident memory (``os.wait4``'s ``ru_maxrss`` of that process) are printed as a table with the cost
per million requests, and written to ``<out>/bench_scale.json``.
Target: the 1,000,000-request window through the four steps in at most 15 minutes on 2 CPU cores,
each step at most 4 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from data_checks.pii import Scanner
from model.collect.store import count_rows, open_store
from scripts.synthetic_traffic import WindowSpec
from scripts.synthetic_window import fill_store
from scripts.throwaway_postgres import ThrowawayPostgres, postgres_bindir

STEPS = ("export-events", "check-data", "prepare", "drift")
TARGET_S, TARGET_RSS_GIB = 15 * 60, 4.0


def run_step(argv: list[str], env: dict[str, str], log: Path) -> dict:
    """One ``flywheel`` process: its exit code, wall seconds, CPU seconds and peak RSS (its own, ``wait4``)."""
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scripts.cli", *argv], stdout=out, stderr=subprocess.STDOUT, env=env
        )
        _, status, usage = os.wait4(proc.pid, 0)
    return {
        "exit_code": os.waitstatus_to_exitcode(status),
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),  # Linux reports KiB
        "log": str(log),
    }


def fill(urls: dict[str, str], spec: WindowSpec, earlier: WindowSpec) -> dict:
    """Both windows into every store in one pass (generated once, written to each), counted."""
    engines = {store: open_store(url, "NORMAL") for store, url in urls.items()}  # bulk load: fsync per batch
    started = time.perf_counter()
    scanner = Scanner()  # the collector's redaction, as at ingestion
    for window in (spec, earlier):
        fill_store(list(engines.values()), window, scanner.redact)
    counts = {store: count_rows(engine) for store, engine in engines.items()}
    for engine in engines.values():
        engine.dispose()
    return {"seconds": round(time.perf_counter() - started, 1), "rows": counts}


def bench_store(url: str, spec: WindowSpec, earlier: WindowSpec, folder: Path) -> dict:
    """The four steps on a filled store (the earlier window's export first, untimed), in a fresh work folder."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLYWHEEL_WORK_DIR": str(folder / "work")}
    window, reference = folder / "window.parquet", folder / "earlier.parquet"
    store = ["--store-url", url, "--report-dir", str(folder / "reports")]
    span = ["--start", spec.start.isoformat(), "--end", spec.end.isoformat(), "--out", str(window)]
    earlier_span = ["--start", earlier.start.isoformat(), "--end", earlier.end.isoformat(), "--out", str(reference)]
    setup = run_step(["export-events", *store, *earlier_span], env, folder / "export-earlier.log")
    if setup["exit_code"] != 0:
        raise SystemExit(f"exporting the earlier window failed: see {setup['log']}")
    argv = {
        "export-events": ["export-events", *store, *span],
        "check-data": ["check-data", "--events", str(window), "--report-dir", str(folder / "reports")],
        "prepare": ["prepare", "--snapshot", str(window), "--out", str(folder / "dataset")],
        "drift": ["drift", "--current", str(window), "--reference-events", str(reference)],
    }
    steps = {}
    for step in STEPS:
        steps[step] = run_step(argv[step], env, folder / f"{step}.log")
        r = steps[step]
        print(f"  {step}: {r['seconds']} s ({r['cpu_seconds']} s CPU), {r['peak_rss_gib']} GiB", flush=True)
    return {"steps": steps}


def table(result: dict, requests: int) -> str:
    per_million = 1e6 / requests
    lines = [
        "| step | seconds | CPU seconds | peak RSS (GiB) | seconds per million requests |",
        "|---|---:|---:|---:|---:|",
    ]
    for step, r in result["steps"].items():
        mark = "" if r["exit_code"] == 0 else f" (exit {r['exit_code']})"
        lines.append(
            f"| {step}{mark} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['peak_rss_gib']:.2f} "
            f"| {r['seconds'] * per_million:.0f} |"
        )
    steps = result["steps"].values()
    total, cpu = sum(r["seconds"] for r in steps), sum(r["cpu_seconds"] for r in steps)
    peak = max(r["peak_rss_gib"] for r in steps)
    lines.append(f"| **all four** | **{total:.1f}** | **{cpu:.1f}** | **{peak:.2f}** | **{total * per_million:.0f}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1_000_000, help="answered requests in the window")
    ap.add_argument("--stores", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    ap.add_argument("--out", default="work/bench-scale", help="folder for the stores, snapshots, logs and results")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    unknown = set(stores) - {"sqlite", "postgresql"}
    if unknown:
        ap.error(f"unknown store(s) {', '.join(sorted(unknown))}")
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    spec = WindowSpec(requests=args.requests, seed=args.seed)
    spec = replace(spec, end=spec.end - timedelta(minutes=5))  # the window ends just before the steps run
    earlier = replace(spec, requests=max(spec.requests // 10, 100), end=spec.start, seed=spec.seed + 1)
    print(
        f"{args.requests} requests, {spec.start:%Y-%m-%d %H:%M} to {spec.end:%Y-%m-%d %H:%M} UTC; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
        flush=True,
    )
    urls: dict[str, str] = {}
    server = None
    if "sqlite" in stores:
        (out / "sqlite").mkdir(parents=True)
        urls["sqlite"] = f"sqlite:///{out / 'sqlite' / 'conversations.db'}"
    if "postgresql" in stores and postgres_bindir() is None:
        print("postgresql skipped: PostgreSQL's server binaries are not installed (make test-tools)")
    elif "postgresql" in stores:
        server = ThrowawayPostgres().start()
        admin = sa.create_engine(f"{server.url}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text('CREATE DATABASE "flywheel"'))
        admin.dispose()
        urls["postgresql"] = f"{server.url}/flywheel"
    results, failed = {}, False
    try:
        generated = fill(urls, spec, earlier)
        print(f"generated in {generated['seconds']} s: {generated['rows']}", flush=True)
        for store, url in urls.items():
            print(f"{store}:", flush=True)
            results[store] = bench_store(url, spec, earlier, out / store)
    finally:
        if server is not None:
            server.remove()
    load = os.getloadavg()
    for store, result in results.items():
        steps = result["steps"].values()
        total, peak = sum(r["seconds"] for r in steps), max(r["peak_rss_gib"] for r in steps)
        met = total <= TARGET_S and peak <= TARGET_RSS_GIB
        failed |= any(r["exit_code"] != 0 for r in steps)
        rows = generated["rows"][store]
        print(
            f"\n{store} ({rows['inference']} inference and {rows['feedback']} feedback events in the store):\n"
            f"{table(result, args.requests)}\n"
            f"target {TARGET_S // 60} min and {TARGET_RSS_GIB:.0f} GiB per step: {'met' if met else 'NOT met'}"
        )
    print(f"\nload average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (1, 5, 15 min)")
    summary = {
        "requests": args.requests,
        "window": [spec.start.isoformat(), spec.end.isoformat()],
        "generated": generated,
        "stores": results,
        "load_average_end": load,
    }
    (out / "bench_scale.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
