"""Calibration and speed of ``flywheel drift`` on Banking77.

    .venv/bin/python scripts/bench_drift.py [--dataset ../shared/datasets/banking77] [--trials 20] [--window 2000]

10 of the 77 intents are held out as "never seen by the model". The served model is simulated by a
logistic regression on MiniLM embeddings of the other intents' train.csv rows (what matters to
drift is that logs carry a predicted intent, a confidence and a fallback flag from some model);
feedback is simulated from correctness (wrong answers: 60% thumbs down, fallbacks: 30% escalated).

- no drift: reference and current window are two disjoint random halves of the seen intents' rows,
  ``--trials`` times; target: at most 1 of 20 flagged.
- drift: the same, but 10% of the current window comes from the unseen intents; target: at least
  19 of 20 flagged.
- speed: 100,000 reference rows against 100,000 current rows (sampled with replacement; embeddings
  from the on-disk cache, whose one-off fill time is printed separately); target under 60 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from data_checks.drift import Embedder, decide, measure
from model.core.config import DriftConfig, work_dir


def simulate_logs(idx: np.ndarray, probs: np.ndarray, classes: np.ndarray, labels: np.ndarray, rng) -> pd.DataFrame:
    p = probs[idx]
    predicted = classes[p.argmax(1)]
    confidence = p.max(1)
    fallback = confidence < 0.5
    wrong = predicted != labels[idx]
    thumbs_down = rng.random(len(idx)) < np.where(wrong, 0.6, 0.05)
    escalated = rng.random(len(idx)) < np.where(fallback, 0.3, 0.02)
    return pd.DataFrame(
        {
            "predicted_intent": predicted,
            "confidence": confidence,
            "fallback": fallback,
            "thumbs": np.where(thumbs_down, "down", ""),
            "escalated": escalated,
        }
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default=os.environ.get("FLYWHEEL_BANKING77", "../shared/datasets/banking77"))
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--window", type=int, default=2000, help="current window size (events)")
    ap.add_argument("--unseen", type=int, default=10, help="intents the model never saw")
    ap.add_argument("--speed-rows", type=int, default=100_000)
    args = ap.parse_args()
    cfg = DriftConfig()
    folder = Path(args.dataset)
    train = pd.read_csv(folder / "train.csv")
    test = pd.read_csv(folder / "test.csv")
    data = pd.concat([train.assign(part="train"), test.assign(part="test")], ignore_index=True)
    texts, labels = data["text"].to_numpy(), data["category"].to_numpy()

    embedder = Embedder(cfg.encoder, work_dir() / "embeddings", cfg.batch_size)
    started = time.perf_counter()
    emb = embedder(list(texts))
    print(
        f"embeddings: {len(texts)} texts in {time.perf_counter() - started:.1f} s (cached on disk after the first run)"
    )

    rng = np.random.default_rng(0)
    intents = np.array(sorted(set(labels)))
    unseen = set(rng.choice(intents, args.unseen, replace=False))
    seen_mask = ~np.isin(labels, list(unseen))
    from sklearn.linear_model import LogisticRegression

    fit = seen_mask & (data["part"].to_numpy() == "train")
    clf = LogisticRegression(max_iter=300, C=10.0).fit(emb[fit], labels[fit])
    probs = clf.predict_proba(emb)
    print(
        f"served model: logistic regression on {fit.sum()} rows of {len(intents) - len(unseen)} intents; "
        f"unseen: {', '.join(sorted(unseen))}"
    )

    seen_idx, unseen_idx = np.flatnonzero(seen_mask), np.flatnonzero(~seen_mask)
    flagged = {"no drift": 0, "drift": 0}
    fired: dict[str, dict[str, int]] = {"no drift": {}, "drift": {}}
    for trial in range(args.trials):
        trng = np.random.default_rng(1000 + trial)
        perm = trng.permutation(seen_idx)
        ref_idx, pool = perm[: len(perm) // 2], perm[len(perm) // 2 :]
        ref = simulate_logs(ref_idx, probs, clf.classes_, labels, trng)
        n_new = args.window // 10
        for scenario, cur_idx in (
            ("no drift", pool[: args.window]),
            ("drift", np.concatenate([pool[: args.window - n_new], trng.choice(unseen_idx, n_new, replace=False)])),
        ):
            cur = simulate_logs(cur_idx, probs, clf.classes_, labels, trng)
            _, scores = measure(ref, cur, emb[ref_idx], emb[cur_idx], cfg)
            decision = decide(scores, cfg)
            flagged[scenario] += decision.drift
            for s in decision.signals:
                if s.drifted:
                    fired[scenario][s.name] = fired[scenario].get(s.name, 0) + 1
    print(f"reference ~{len(seen_idx) // 2} rows, current window {args.window} rows, alpha {cfg.alpha}")
    print(
        f"no drift (random splits): flagged {flagged['no drift']}/{args.trials} (target <= 1); "
        f"signals {fired['no drift']}"
    )
    print(
        f"10% unseen intents:       flagged {flagged['drift']}/{args.trials} (target >= 19); signals {fired['drift']}"
    )

    srng = np.random.default_rng(7)
    ref_idx = srng.choice(seen_idx, args.speed_rows)
    cur_idx = srng.choice(len(texts), args.speed_rows)
    started = time.perf_counter()
    ref_emb, cur_emb = embedder(list(texts[ref_idx])), embedder(list(texts[cur_idx]))
    ref, cur = (
        simulate_logs(ref_idx, probs, clf.classes_, labels, srng),
        simulate_logs(cur_idx, probs, clf.classes_, labels, srng),
    )
    snapshot, scores = measure(ref, cur, ref_emb, cur_emb, cfg)
    decide(scores, cfg)
    snapshot.save_html(str(work_dir() / "bench_drift.html"))
    seconds = time.perf_counter() - started
    print(
        f"speed: {args.speed_rows} vs {args.speed_rows} rows in {seconds:.1f} s (embeddings from cache, HTML written)"
    )
    ok = flagged["no drift"] <= max(1, args.trials // 20) and flagged["drift"] >= args.trials - max(
        1, args.trials // 20
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
