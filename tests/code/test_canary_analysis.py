"""Canary analysis: a table of cases for the pure decision, and the repeated-looks property of its test."""

from __future__ import annotations

import numpy as np
import pytest

from model.core.config import CanaryConfig
from model.core.errors import FlywheelError
from model.deploy.canary import HOLD, PROMOTE, ROLLBACK, ArmMetrics, analyse, msprt_p_value, render_markdown

CFG = CanaryConfig()


def arm(n, *, errors=0.001, fallbacks=0.10, escalations=0.03, rated=0.3, down=0.15, slow=0.002, p99=40.0):
    """An arm with n requests and the given rates (ratings: share of requests rated; down: share of ratings;
    slow: share of answers over the latency budget)."""
    ratings = int(n * rated)
    return ArmMetrics(
        requests=n,
        errors=int(n * errors),
        fallbacks=int(n * fallbacks),
        escalations=int(n * escalations),
        thumbs_down=int(ratings * down),
        thumbs_up=ratings - int(ratings * down),
        slow=int(n * slow),
        latency_p99_ms=p99,
    )


CASES = [
    # (name, stable, canary, decision, words in the reasons)
    ("too little traffic on the canary", arm(20000), arm(120), HOLD, "too little traffic"),
    ("too little traffic on both", arm(50), arm(40), HOLD, "too little traffic"),
    ("same rates, plenty of traffic", arm(20000), arm(20000), PROMOTE, "at most its margin"),
    (
        "same rates, too few ratings to judge thumbs-down",
        arm(5000, rated=0.005),
        arm(5000, rated=0.005),
        HOLD,
        "too little feedback",
    ),
    ("same rates, not enough traffic to show non-inferiority", arm(400), arm(400), HOLD, "not yet shown"),
    ("canary is better everywhere", arm(20000), arm(20000, fallbacks=0.07, down=0.10), PROMOTE, "at most its margin"),
    ("thumbs-down much worse", arm(20000), arm(3000, down=0.30), ROLLBACK, "thumbs-down rate is higher"),
    ("errors spike on the canary", arm(20000), arm(2000, errors=0.02), ROLLBACK, "error rate is higher"),
    ("fallbacks much worse", arm(20000), arm(3000, fallbacks=0.18), ROLLBACK, "fallback rate is higher"),
    ("escalations much worse", arm(20000), arm(3000, escalations=0.07), ROLLBACK, "escalation rate is higher"),
    ("canary answers slowly more often", arm(20000), arm(3000, slow=0.03, p99=180), ROLLBACK, "slow-answer rate"),
    # a busy machine slows both arms alike: load alone neither rolls back nor holds a promotion
    (
        "busy machine: both arms slow",
        arm(20000, slow=0.3, p99=400),
        arm(20000, slow=0.3, p99=450),
        PROMOTE,
        "not slower",
    ),
    ("canary's p99 above stable's, as often slow", arm(20000, p99=40), arm(20000, p99=90), PROMOTE, "not slower"),
    ("slightly worse thumbs-down, within noise: wait", arm(20000), arm(600, down=0.17), HOLD, "not yet shown"),
]


@pytest.mark.parametrize(("name", "stable", "canary", "decision", "reason"), CASES, ids=[c[0] for c in CASES])
def test_decision_table(name, stable, canary, decision, reason):
    verdict = analyse(stable, canary, CFG)
    assert verdict.decision == decision, verdict.reasons
    assert any(reason in r for r in verdict.reasons), verdict.reasons


def test_rollback_wins_over_anything_else():
    verdict = analyse(arm(20000), arm(20000, errors=0.03, fallbacks=0.05), CFG)
    assert verdict.decision == ROLLBACK and len(verdict.reasons) == 1


def test_thresholds_come_from_config():
    stable, canary = arm(1000), arm(1000)
    assert analyse(stable, canary, CanaryConfig(min_requests_per_arm=5000)).decision == HOLD
    # a huge margin makes non-inferiority easy to show even with little traffic
    loose = CanaryConfig(
        min_requests_per_arm=100,
        min_ratings_per_arm=10,
        error_rate_margin=0.2,
        fallback_rate_margin=0.2,
        escalation_rate_margin=0.2,
        thumbs_down_margin=0.2,
    )
    assert analyse(stable, canary, loose).decision == PROMOTE


@pytest.mark.parametrize(
    "values",
    [
        {"requests": -1},
        {"requests": 10, "errors": 11},
        {"requests": 10, "slow": 11},
        {"requests": 10, "latency": 3},
        {"requests": 1.5},
    ],
)
def test_bad_metrics_are_named(values):
    with pytest.raises(FlywheelError, match="stable"):
        ArmMetrics.from_dict(values, "stable")


def unknown(failed: int) -> ArmMetrics:
    """Failed calls no arm can be charged with, as the collector's store reports them (arm ``unknown``)."""
    return ArmMetrics(requests=failed, errors=failed)


def test_failed_calls_of_unknown_arm_are_charged_to_the_canary_before_it_promotes():
    """20,000 answers per arm at the same rates promote; 200 failed calls of unknown arm could all be the
    canary's (a 1% error rate, over the 0.5-point margin), so the promotion holds, naming them."""
    stable, canary = arm(20000, errors=0), arm(20000, errors=0)
    assert analyse(stable, canary, CFG, unknown(0)).decision == PROMOTE
    assert analyse(stable, canary, CFG, unknown(10)).decision == PROMOTE  # 0.05% at worst: within the margin
    verdict = analyse(stable, canary, CFG, unknown(200))
    assert verdict.decision == HOLD and verdict.unattributed_errors == 200, verdict.reasons
    assert any("error rate" in r and "200 failed calls of unknown arm" in r for r in verdict.reasons)
    errors = verdict.comparisons[0]
    assert (errors.metric, errors.canary_rate, errors.stable_rate, errors.unattributed) == ("error rate", 0, 0, 200)
    md = render_markdown(verdict, "staging", "v1", "v2")
    assert "Arm unknown: 200 calls were never answered" in md


def test_failed_calls_of_unknown_arm_never_roll_back():
    """They may all be the stable arm's: however many, they hold a promotion and roll nothing back."""
    verdict = analyse(arm(20000, errors=0), arm(2000, errors=0), CFG, unknown(5000))
    assert verdict.decision == HOLD, verdict.reasons
    assert not any(c.harmful for c in verdict.comparisons)
    # what an arm is known to have failed still rolls it back
    assert analyse(arm(20000), arm(2000, errors=0.02), CFG, unknown(5000)).decision == ROLLBACK


def _looks(rng, p_stable, p_canary, looks, batch):
    """Cumulative counts after each of ``looks`` analyses, ``batch`` requests per arm between looks."""
    xs = np.cumsum(rng.binomial(batch, p_stable, size=looks))
    xc = np.cumsum(rng.binomial(batch, p_canary, size=looks))
    ns = batch * np.arange(1, looks + 1)
    return xs, xc, ns


def test_repeated_looks_keep_false_rollbacks_under_alpha():
    """A/A canaries analysed 48 times each: the always-valid test rolls back at most alpha of them,
    while re-running a fixed-sample z-test at every look would roll back far more (the reason to use it)."""
    rng = np.random.default_rng(7)
    alpha, runs, looks, batch, p = 0.05, 400, 48, 200, 0.15
    msprt_alarms = naive_alarms = 0
    for _ in range(runs):
        xs, xc, ns = _looks(rng, p, p, looks, batch)
        msprt_hit = naive_hit = False
        for a, b, n in zip(xs, xc, ns):
            pv, d = msprt_p_value(int(a), int(n), int(b), int(n), 0.0, CFG.mixture_sd)
            msprt_hit |= d > 0 and pv <= alpha
            pooled = (a + b) / (2 * n)
            z = (b - a) / n / np.sqrt(2 * pooled * (1 - pooled) / n)
            naive_hit |= z > 1.645  # one-sided 5% at each look
        msprt_alarms += msprt_hit
        naive_alarms += naive_hit
    assert msprt_alarms / runs <= alpha
    assert naive_alarms / runs > 2 * alpha


def test_real_harm_is_found_within_the_looks():
    rng = np.random.default_rng(11)
    found = 0
    for _ in range(100):
        xs, xc, ns = _looks(rng, 0.15, 0.22, 48, 200)
        found += any(
            d > 0 and pv <= 0.05
            for pv, d in (
                msprt_p_value(int(a), int(n), int(b), int(n), 0.0, CFG.mixture_sd) for a, b, n in zip(xs, xc, ns)
            )
        )
    assert found >= 95
