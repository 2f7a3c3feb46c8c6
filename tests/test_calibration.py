"""Code tests: fallback threshold and calibration error."""

import numpy as np

from model.evaluate.evaluation import expected_calibration_error
from model.train.calibration import fit_temperature, pick_threshold


def test_threshold_answers_everything_when_the_model_is_always_right():
    assert pick_threshold(np.array([0.3, 0.6, 0.9]), np.array([True, True, True]), 0.9) == 0.0


def test_threshold_hands_off_the_unsure_wrong_answers():
    conf = np.array([0.95, 0.9, 0.85, 0.8, 0.4, 0.3])
    correct = np.array([True, True, True, True, False, False])
    t = pick_threshold(conf, correct, 0.9)
    assert 0.4 < t <= 0.8
    answered = conf >= t
    assert correct[answered].mean() >= 0.9 and answered.sum() == 4


def test_out_of_scope_examples_raise_the_threshold():
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    in_scope_only = pick_threshold(conf, np.array([True] * 5), 0.9)
    with_oos = pick_threshold(conf, np.array([True, True, True, False, False]), 0.9)
    assert with_oos > in_scope_only


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident():
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([True, True])) == 0.0
    assert expected_calibration_error(np.array([0.99] * 10), np.array([False] * 10)) > 0.9


def _probs(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_temperature_cools_an_overconfident_model_and_warms_an_underconfident_one():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 5, size=400)
    logits = rng.normal(size=(400, 5))
    logits[np.arange(400), targets] += 1.5  # right about 70% of the time
    sharp, honest, timid = (fit_temperature(_probs(logits * k), targets) for k in (5.0, 1.0, 0.2))
    assert sharp > honest > timid
    # scaling the logits by k scales the fitted temperature by k: the calibrated output is the same
    assert abs(sharp / honest - 5.0) < 0.1 and abs(honest / timid - 5.0) < 0.1
