"""Benchmark: does the review queue pick better labels than chance? One turn of the loop on Banking77.

A first model learns 57 of Banking77's 77 intents (half of their training texts). Simulated users
send the rest of the training texts through the served model; part-way through, the 20 held-back
intents appear. After the drift check, the same budget of human labels (500 by default) is spent
twice on the shifted window: on the review queue's first items, and on a random draw of logged
messages. Each labelled set is prepared and trained on the same way. Printed: test accuracy on all
77 intents (Banking77's test.csv) of the first model and of both retrained ones, and the
difference, as one JSON line at the end; with it, how many of the held-back intents prepare's
candidate new intents found (``held_back_clusters``: a cluster whose majority is that intent, at
least 70% of its members; ``model.prepare.discovery.discovery_figures``), and per strategy the
share of the reviewer's planted mistakes prepare's label check caught and of right labels it
flagged. With ``--cluster-decisions N`` the queue's reviewer first judges N candidates, one label each.

    .venv/bin/python scripts/bench_loop.py [--dataset ../shared/datasets/banking77] [--budget 500] [--seeds 7 8 9]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from model.core.config import DEFAULT_CONFIG, PROJECT_ROOT
from model.core.settings import load_config
from model.loop.configs import load_configs
from model.loop.orchestrator import without_github
from model.loop.retraining import Candidate
from model.loop.stages import Loop
from model.loop.world import World


def main() -> int:
    default = os.environ.get("FLYWHEEL_BANKING77", str(PROJECT_ROOT.parent / "shared" / "datasets" / "banking77"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=default, help="folder with Banking77's train.csv and test.csv")
    parser.add_argument("--budget", type=int, default=500, help="human labels spent by each strategy")
    parser.add_argument("--held-back", type=int, default=20, help="intents the first model does not know")
    parser.add_argument("--shifted-requests", type=int, default=3000, help="requests in the shifted window")
    parser.add_argument(
        "--cluster-decisions", type=int, help="candidate new intents the queue's reviewer judges, one label each"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[7, 8, 9],
        help="loop seeds (held-back intents, traffic, reviewer mistakes)",
    )
    parser.add_argument("--keep", help="keep the work folders under this folder instead of temporary ones")
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        figures = one_run(args, seed)
        if figures is None:
            return 1
        print(json.dumps(figures, default=str), flush=True)  # one line per seed, as each finishes
        runs.append(figures)
    print(summary_table(runs), file=sys.stderr)
    print(json.dumps({"seeds": args.seeds, "summary": summarise(runs)}, default=str))
    return 0


def one_run(args: argparse.Namespace, seed: int) -> dict | None:
    """One turn of the loop with loop seed ``seed``: the first model, then both strategies; None without drift."""
    loop_cfg = dataclasses.replace(
        load_config("loop"),
        held_back_fraction=args.held_back / 77,
        label_budget=args.budget,
        requests_after_shift=args.shifted_requests,
        seed=seed,
    )
    if args.cluster_decisions is not None:
        loop_cfg = dataclasses.replace(loop_cfg, cluster_decisions=args.cluster_decisions)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        work = (Path(args.keep) / f"seed-{seed}" if args.keep else Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        cfgs = load_configs(DEFAULT_CONFIG, loop_cfg, work)
        cfgs.data = dataclasses.replace(cfgs.data, val_fraction=0.1)  # Banking77 has no validation split: carve 10%
        with without_github():
            loop, world = (
                Loop(Path(args.dataset), work, cfgs, progress=lambda line: print(line, file=sys.stderr, flush=True)),
                None,
            )
            try:
                world = loop.setup()
                first = loop.first_model(world)
                request = loop.traffic_and_drift(world)
                if request is None:
                    print(f"seed {seed}: no drift found: nothing to compare", file=sys.stderr)
                    return None
                results = {
                    strategy: _retrain(loop, world, request, first, strategy) for strategy in ("queue", "random")
                }
            finally:
                loop.close(world)
        before = first.offline
    return {
        "seed": seed,
        "dataset": args.dataset,
        "known_intents": len(world.intents.known_at_start),
        "held_back_intents": len(world.intents.held_back),
        "label_budget": args.budget,
        "test_rows": len(world.plan.test),
        "before": {"test_accuracy": before.test_accuracy, "macro_f1": before.macro_f1},
        "after_queue": results["queue"],
        "after_random": results["random"],
        # the same window's candidates for both strategies: found once
        "held_back_clusters": results["queue"]["labelling"]["discovery"],
        "queue_minus_random_accuracy_points": round(
            100 * (results["queue"]["test_accuracy"] - results["random"]["test_accuracy"]), 2
        ),
        "wall_seconds": round(time.monotonic() - started, 1),
    }


def _retrain(loop: Loop, world: World, request: Path, first: Candidate, strategy: str) -> dict:
    got = loop.retrain(world, request, first, strategy)
    labelling = loop.record.labelling
    score = labelling.label_check_score
    return {
        "test_accuracy": got.offline.test_accuracy,
        "macro_f1": got.offline.macro_f1,
        "gate_passed": got.passed,
        "new_intent_labels": labelling.new_intent_labels,
        "planted_mistakes_caught": score["caught_share"],  # aim: at least 0.60
        "right_labels_flagged": score["right_flagged_share"],  # aim: at most 0.05
        "labelling": dataclasses.asdict(labelling),
    }


def _mean_spread(values: list[float]) -> dict:
    """Mean, and the spread as min-max: with 3 seeds a standard deviation says little more."""
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def summarise(runs: list[dict]) -> dict:
    """Per strategy, over the seeds: accuracy, gate passes, labels on new intents, the label check's figures."""
    out: dict = {"first_model_accuracy": _mean_spread([r["before"]["test_accuracy"] for r in runs])}
    for strategy in ("queue", "random"):
        rows = [r[f"after_{strategy}"] for r in runs]
        out[strategy] = {
            "test_accuracy": _mean_spread([r["test_accuracy"] for r in rows]),
            "gate_passed": sum(bool(r["gate_passed"]) for r in rows),
            "new_intent_labels": _mean_spread([r["new_intent_labels"] for r in rows]),
            "planted_mistakes_caught": _mean_spread([r["planted_mistakes_caught"] for r in rows]),
            "right_labels_flagged": _mean_spread([r["right_labels_flagged"] for r in rows]),
        }
    found = [r["held_back_clusters"] for r in runs]
    out["held_back_found"] = _mean_spread([f["held_back_found"] for f in found])
    purities = [p for f in found for p in f["found_purity"].values()]
    out["found_purity"] = _mean_spread(purities) if purities else None
    out["queue_minus_random_points"] = _mean_spread([r["queue_minus_random_accuracy_points"] for r in runs])
    return out


def summary_table(runs: list[dict]) -> str:
    """The table docs/benchmarks.md shows: one row per strategy, mean over the seeds with the min-max spread."""
    s = summarise(runs)

    def cell(m: dict, scale: float = 100.0, unit: str = "%") -> str:
        return f"{m['mean'] * scale:.2f}{unit} ({m['min'] * scale:.2f}-{m['max'] * scale:.2f})"

    found = s["held_back_found"]
    held = runs[0]["held_back_intents"]
    lines = [
        f"first model: {cell(s['first_model_accuracy'])} on all intents; seeds {[r['seed'] for r in runs]}",
        "| strategy | accuracy, all intents | gate passed | labels on new intents | planted mistakes caught "
        "| correct labels flagged |",
        "|---|---|---|---|---|---|",
    ]
    for strategy in ("queue", "random"):
        q = s[strategy]
        lines.append(
            f"| {strategy} | {cell(q['test_accuracy'])} | {q['gate_passed']} of {len(runs)} "
            f"| {cell(q['new_intent_labels'], 1.0, '')} | {cell(q['planted_mistakes_caught'])} "
            f"| {cell(q['right_labels_flagged'])} |"
        )
    purity = s["found_purity"]
    lines.append(
        f"held-back intents found as a candidate cluster (purity >= 0.7): {cell(found, 1.0, '')} of {held}"
        + (f", purity {cell(purity, 1.0, '')}" if purity else "")
    )
    lines.append(f"queue minus random: {cell(s['queue_minus_random_points'], 1.0, ' points')}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
