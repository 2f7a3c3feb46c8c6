"""Code tests: fallback threshold and calibration error."""

import numpy as np

from model.evaluate.evaluation import expected_calibration_error
from model.train.calibration import fit_temperature, pick_threshold, scope_threshold


def test_threshold_answers_everything_when_the_model_is_always_right():
    assert pick_threshold(np.array([0.3, 0.6, 0.9]), np.array([True, True, True]), 0.9) == 0.0


def test_threshold_hands_off_the_unsure_wrong_answers():
    conf = np.array([0.95, 0.9, 0.85, 0.8, 0.4, 0.3])
    correct = np.array([True, True, True, True, False, False])
    t = pick_threshold(conf, correct, 0.9)
    assert 0.4 < t <= 0.8
    answered = conf >= t
    assert correct[answered].mean() >= 0.9 and answered.sum() == 4


def test_scope_threshold_hands_off_at_most_the_allowed_share_of_right_answers():
    rng = np.random.default_rng(3)
    top = rng.normal(15.0, 2.0, size=400)  # in-scope messages' top intent logits
    correct = rng.random(400) < 0.9
    t = scope_threshold(top, correct, 0.01)
    handed_off_right = ((top < t) & correct).sum()
    assert handed_off_right == 4  # floor(1% of 400): the most it may cost, and it spends it all
    assert scope_threshold(top, correct, 0.05) > t  # a larger budget buys a higher threshold
    assert scope_threshold(top, correct, 0.0) == top[correct].min()  # no budget: nothing right handed off
    assert scope_threshold(top, np.zeros(400, dtype=bool), 0.01) is None  # nothing answered right: no check


def test_out_of_scope_share_in_validation_does_not_move_the_thresholds():
    """Both rules are fitted on in-scope messages only: the old rule, which counted out-of-scope
    messages as wrong answers, answered everything when they were few and accuracy was high."""
    conf = np.array([0.99, 0.95, 0.9, 0.85, 0.8, 0.7])
    correct = np.array([True, True, True, True, True, False])
    assert pick_threshold(conf, correct, 0.8) == 0.0  # 5 of 6 right: answer all in-scope messages
    top = np.array([18.0, 17.0, 16.5, 16.0, 15.0, 12.0])
    assert scope_threshold(top, correct, 0.2) == 16.0  # may hand off 1 of 6: the lowest right answer


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
