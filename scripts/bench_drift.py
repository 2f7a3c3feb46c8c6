"""Calibration and speed of ``flywheel drift`` on Banking77.

    .venv/bin/python scripts/bench_drift.py [--dataset ../shared/datasets/banking77] [--trials 20] [--window 2000]
        [--sample-size N]

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

Each side is first sampled as ``flywheel drift`` samples it (``drift.sample_rows``, at most
``--sample-size`` rows, default ``DriftConfig.sample_size``), so the rates are those of the step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from data_checks.drift import decide, measure, sample_rows
from data_checks.embeddings import Embedder
from model.core.config import DriftConfig, work_dir
from model.data.examples import load_examples


@dataclass
class ServedModel:
    """The simulated served model: its class probabilities for every row, and what it was trained on."""

    probs: np.ndarray
    classes: np.ndarray
    labels: np.ndarray  # every row's true intent
    seen_idx: np.ndarray  # rows of the intents it learned
    unseen_idx: np.ndarray  # rows of the intents it never saw
    unseen: set[str]
    fit_rows: int

    def logs(self, idx: np.ndarray, rng) -> pd.DataFrame:
        """What it would log answering rows ``idx``, with feedback simulated from correctness."""
        p = self.probs[idx]
        predicted = self.classes[p.argmax(1)]
        confidence = p.max(1)
        fallback = confidence < 0.5
        wrong = predicted != self.labels[idx]
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


def served_model(emb: np.ndarray, labels: np.ndarray, is_train: np.ndarray, n_unseen: int) -> ServedModel:
    """A logistic regression on the train rows of all but ``n_unseen`` random intents."""
    rng = np.random.default_rng(0)
    intents = np.array(sorted(set(labels)))
    unseen = set(rng.choice(intents, n_unseen, replace=False))
    seen_mask = ~np.isin(labels, list(unseen))
    fit = seen_mask & is_train
    clf = LogisticRegression(max_iter=300, C=10.0).fit(emb[fit], labels[fit])
    return ServedModel(
        clf.predict_proba(emb),
        clf.classes_,
        labels,
        np.flatnonzero(seen_mask),
        np.flatnonzero(~seen_mask),
        unseen,
        int(fit.sum()),
    )


def calibrate(emb: np.ndarray, model: ServedModel, trials: int, window: int, cfg: DriftConfig):
    """How often each scenario is flagged, and by which signals, over ``trials`` random windows."""
    flagged = {"no drift": 0, "drift": 0}
    fired: dict[str, dict[str, int]] = {"no drift": {}, "drift": {}}
    for trial in range(trials):
        trng = np.random.default_rng(1000 + trial)
        perm = trng.permutation(model.seen_idx)
        ref_idx, pool = _sampled(perm[: len(perm) // 2], cfg), perm[len(perm) // 2 :]
        ref = model.logs(ref_idx, trng)
        n_new = window // 10
        for scenario, cur_idx in (
            ("no drift", pool[:window]),
            ("drift", np.concatenate([pool[: window - n_new], trng.choice(model.unseen_idx, n_new, replace=False)])),
        ):
            cur_idx = _sampled(cur_idx, cfg)
            cur = model.logs(cur_idx, trng)
            _, scores = measure(ref, cur, emb[ref_idx], emb[cur_idx], cfg)
            decision = decide(scores, cfg)
            flagged[scenario] += decision.drift
            for s in decision.signals:
                if s.drifted:
                    fired[scenario][s.name] = fired[scenario].get(s.name, 0) + 1
    return flagged, fired


def _sampled(idx: np.ndarray, cfg: DriftConfig) -> np.ndarray:
    """The rows ``flywheel drift`` would compare of these (``sample_rows``)."""
    return sample_rows(pd.DataFrame({"row": idx}), cfg.sample_size)["row"].to_numpy()


def speed(texts: np.ndarray, model: ServedModel, embedder: Embedder, rows: int, cfg: DriftConfig) -> float:
    """Seconds for one check of ``rows`` reference rows against ``rows`` current ones, HTML included."""
    srng = np.random.default_rng(7)
    ref_idx = srng.choice(model.seen_idx, rows)
    cur_idx = srng.choice(len(texts), rows)
    started = time.perf_counter()
    ref_idx, cur_idx = _sampled(ref_idx, cfg), _sampled(cur_idx, cfg)
    ref_emb, cur_emb = embedder(list(texts[ref_idx])), embedder(list(texts[cur_idx]))
    ref, cur = model.logs(ref_idx, srng), model.logs(cur_idx, srng)
    snapshot, scores = measure(ref, cur, ref_emb, cur_emb, cfg)
    decide(scores, cfg)
    snapshot.save_html(str(work_dir() / "bench_drift.html"))
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default=os.environ.get("FLYWHEEL_BANKING77", "../shared/datasets/banking77"))
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--window", type=int, default=2000, help="current window size (events)")
    ap.add_argument("--unseen", type=int, default=10, help="intents the model never saw")
    ap.add_argument("--speed-rows", type=int, default=100_000)
    ap.add_argument("--sample-size", type=int, default=DriftConfig().sample_size, help="rows compared per side")
    args = ap.parse_args()
    cfg = DriftConfig(sample_size=args.sample_size)
    data = load_examples(Path(args.dataset))  # the folder's train.csv and test.csv, as `train` reads them
    texts, labels = data["text"].to_numpy(), data["intent"].to_numpy()

    embedder = Embedder(cfg.encoder, work_dir() / "embeddings", cfg.batch_size)
    started = time.perf_counter()
    emb = embedder(list(texts))
    print(
        f"embeddings: {len(texts)} texts in {time.perf_counter() - started:.1f} s (cached on disk after the first run)"
    )
    model = served_model(emb, labels, data["split"].to_numpy() == "train", args.unseen)
    print(
        f"served model: logistic regression on {model.fit_rows} rows of {len(set(labels)) - len(model.unseen)} "
        f"intents; unseen: {', '.join(sorted(model.unseen))}"
    )
    flagged, fired = calibrate(emb, model, args.trials, args.window, cfg)
    print(
        f"reference ~{len(model.seen_idx) // 2} rows, current window {args.window} rows, alpha {cfg.alpha}, "
        f"each side sampled to at most {cfg.sample_size} rows"
    )
    print(
        f"no drift (random splits): flagged {flagged['no drift']}/{args.trials} (target <= 1); "
        f"signals {fired['no drift']}"
    )
    print(
        f"10% unseen intents:       flagged {flagged['drift']}/{args.trials} (target >= 19); signals {fired['drift']}"
    )
    seconds = speed(texts, model, embedder, args.speed_rows, cfg)
    print(
        f"speed: {args.speed_rows} vs {args.speed_rows} rows (compared: {min(args.speed_rows, cfg.sample_size)} each) "
        f"in {seconds:.1f} s (embeddings from cache, HTML written)"
    )
    allowed = max(1, args.trials // 20)
    return 0 if flagged["no drift"] <= allowed and flagged["drift"] >= args.trials - allowed else 1


if __name__ == "__main__":
    sys.exit(main())
