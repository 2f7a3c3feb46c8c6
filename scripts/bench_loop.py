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

    .venv/bin/python scripts/bench_loop.py [--dataset ../shared/datasets/banking77] [--budget 500]
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

from model.core.config import DEFAULT_CONFIG, PROJECT_ROOT
from model.core.settings import load_config
from model.loop.configs import load_configs
from model.loop.orchestrator import without_github
from model.loop.stages import Loop


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
    parser.add_argument("--keep", help="keep the work folder here instead of a temporary one")
    args = parser.parse_args()

    loop_cfg = dataclasses.replace(
        load_config("loop"),
        held_back_fraction=args.held_back / 77,
        label_budget=args.budget,
        requests_after_shift=args.shifted_requests,
    )
    if args.cluster_decisions is not None:
        loop_cfg = dataclasses.replace(loop_cfg, cluster_decisions=args.cluster_decisions)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        work = Path(args.keep or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        cfgs = load_configs(DEFAULT_CONFIG, loop_cfg, work)
        cfgs.data = dataclasses.replace(cfgs.data, val_fraction=0.1)  # Banking77 has no validation split: carve 10%
        with without_github():
            loop = Loop(Path(args.dataset), work, cfgs, progress=lambda line: print(line, file=sys.stderr, flush=True))
            try:
                loop.setup()
                loop.first_model()
                if not loop.traffic_and_drift():
                    print("no drift found: nothing to compare", file=sys.stderr)
                    return 1
                results = {}
                for strategy in ("queue", "random"):
                    got = loop.retrain(strategy)
                    score = loop.state.record.labelling.label_check_score
                    results[strategy] = {
                        "test_accuracy": got.offline.test_accuracy,
                        "macro_f1": got.offline.macro_f1,
                        "gate_passed": got.passed,
                        "planted_mistakes_caught": score["caught_share"],  # aim: at least 0.60
                        "right_labels_flagged": score["right_flagged_share"],  # aim: at most 0.05
                        "labelling": dataclasses.asdict(loop.state.record.labelling),
                    }
            finally:
                loop.close()
        state = loop.state
        before = state.record.offline[0]
    figures = {
        "dataset": args.dataset,
        "known_intents": len(state.known),
        "held_back_intents": len(state.held_back),
        "label_budget": args.budget,
        "test_rows": len(state.plan.test),
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
    print(json.dumps(figures, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
