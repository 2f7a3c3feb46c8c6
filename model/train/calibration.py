"""Calibrate confidences on validation data (temperature) and pick the confidence below which the bot
hands off to a human."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar


def pick_threshold(confidence: np.ndarray, correct: np.ndarray, target_precision: float) -> float:
    """Lowest threshold whose answered messages are right at least ``target_precision`` of the time.

    ``correct`` is False for out-of-scope examples (answering them is always wrong), so with
    out-of-scope data in validation the threshold also learns to catch them. The lowest such
    threshold answers as many messages as possible. If no threshold reaches the target, the one with
    the best precision is returned (the model is then weak, and the gate will say so).
    """
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=bool)
    if confidence.size == 0:
        return 0.0
    order = np.argsort(-confidence)
    conf_sorted, correct_sorted = confidence[order], correct[order]
    # precision when answering the k most confident messages, k = 1..n
    precision = np.cumsum(correct_sorted) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(precision >= target_precision)
    k = ok[-1] if ok.size else int(np.argmax(precision))
    # answer everything at least as confident as the k-th message; ties at that confidence are answered too
    return 0.0 if k == len(order) - 1 else float(conf_sorted[k])


def fit_temperature(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Temperature T minimising validation log-loss of softmax(log p / T) (Guo et al., 2017).

    Label smoothing and the cosine head leave confidences too low; one scalar fixed on validation
    data makes them honest without changing which intent wins.
    """
    if len(targets) == 0:
        return 1.0
    log_p = np.log(np.clip(probabilities, 1e-12, 1.0))

    def nll(log_t: float) -> float:
        z = log_p / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        log_softmax = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-log_softmax[np.arange(len(targets)), targets].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded").x))
