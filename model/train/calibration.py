"""Calibrate confidences on validation data (temperature) and pick when the bot hands off to a human.

Two hand-off rules, each fitted on in-scope validation messages only, so neither depends on how many
out-of-scope messages validation happens to hold:

- ``pick_threshold``: unsure answers. The lowest confidence threshold whose answered in-scope
  messages are right at least ``fallback_precision`` of the time.
- ``scope_threshold``: messages like no intent the model knows. A threshold on the top intent logit
  (the cosine head's scaled similarity to the nearest intent), the highest that hands off at most
  ``handoff_in_scope_cost`` of the in-scope messages the model answers right. Out-of-scope recall
  is the most this cost buys. The softmax confidence is the wrong score for it: it measures the
  margin between intents, not the distance to all of them, and on MiniLM it caught half as many
  out-of-scope messages at the same cost (sample data, 1 point: 0.48 against 0.85 of validation's).
  Counting out-of-scope messages as wrong answers in the precision rule instead gave threshold 0
  and out-of-scope recall 0 wherever they were a small share of validation and accuracy was high.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar


def pick_threshold(confidence: np.ndarray, correct: np.ndarray, target_precision: float) -> float:
    """Lowest threshold whose answered messages are right at least ``target_precision`` of the time.

    The lowest such threshold answers as many messages as possible. If no threshold reaches the
    target, the one with the best precision is returned (the model is then weak, and the gate will
    say so).
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


def scope_threshold(top_logits: np.ndarray, correct: np.ndarray, max_cost: float) -> float | None:
    """The highest top-logit threshold that hands off at most ``max_cost`` of the in-scope messages
    (``correct`` marks those the model answers right; ``top_logits`` is over in-scope messages only).

    None when there is nothing to fit (no in-scope message answered right): no scope check.
    """
    right = np.sort(np.asarray(top_logits, dtype=float)[np.asarray(correct, dtype=bool)])
    if right.size == 0:
        return None
    allowed = int(np.floor(max_cost * len(correct) + 1e-9))  # right answers it may hand off
    if allowed == 0:
        return float(right[0])  # hands off nothing answered right: only what scores below all of them
    # hand off the ``allowed`` lowest right answers: the threshold sits at the next one (ties answered)
    return float(right[min(allowed, right.size - 1)])


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
