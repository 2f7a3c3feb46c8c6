"""Canary analysis: promote, hold or roll back, from how each traffic arm did with users.

A pure function of per-arm counts. An arm the metrics source knows nothing about (Prometheus has
no request series for its model version: not scraped, or the revision never served) is its own
outcome, ``no_data``: nothing can be decided, and unlike ``hold`` it will not resolve by waiting
(``flywheel canary-analysis`` exits 1 on it). Rates are compared with a mixture sequential probability ratio
test (mSPRT; Johari, Pekelis and Walsh, "Always valid inference", 2017) on the difference of two
proportions under the normal approximation: its p-values stay valid however often one looks, so
running the analysis every hour does not inflate false promotions or false rollbacks, and no
number of looks has to be fixed in advance. Two one-sided questions per rate:

- harm: is the canary's rate higher than the stable arm's? (H0: difference <= 0) → rollback
- non-inferiority: is it at most ``margin`` higher? (H0: difference >= margin) → may promote

Latency is a guardrail: the share of answers slower than ``latency_budget_ms`` is tested for harm
like the rates, so a canary that is slower than stable rolls back, but it need not be shown
non-inferior before a promotion. Load on a shared machine or node slows both arms alike: a fixed
rule on one arm's p99 (its third-slowest answer in 300) rolled back healthy canaries by chance on a
busy machine, and a non-inferiority proof would make promotion wait on how busy the machine is.
Alpha is split over the tests (Bonferroni).

Failed calls no arm can be charged with (the collector's store knows a request was never answered,
but not which revision it reached: ``model.deploy.canary_metrics``) are reported as arm ``unknown``
and enter one question only: the canary's error rate must be shown non-inferior even if every one of
them was the canary's. They never roll back either arm (they may be the stable one's), and the
error-rate harm test uses only what each arm is known to have failed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import NamedTuple

from model.core.config import CanaryConfig
from model.core.errors import FlywheelError

PROMOTE, HOLD, ROLLBACK, NO_DATA = "promote", "hold", "rollback", "no_data"


@dataclass
class ArmMetrics:
    """Counts for one traffic arm over the analysis window (what the collector's store or Prometheus gives)."""

    requests: int
    errors: int = 0
    fallbacks: int = 0
    escalations: int = 0
    thumbs_up: int = 0
    thumbs_down: int = 0
    slow: int = 0  # answers slower than the canary config's latency_budget_ms
    latency_p99_ms: float = 0.0  # shown, not decided on
    model_version: int | None = None
    no_data: bool = False  # the source has nothing at all for this arm (not even a zero): see NO_DATA

    @classmethod
    def from_dict(cls, values: dict, where: str) -> ArmMetrics:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(values) - known
        if unknown:
            raise FlywheelError(
                f"{where}: unknown metric(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})"
            )
        try:
            arm = cls(**values)
        except TypeError as exc:
            raise FlywheelError(f"{where}: {exc}") from exc
        counts = {k: v for k, v in asdict(arm).items() if k not in ("latency_p99_ms", "model_version", "no_data")}
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise FlywheelError(f"{where}: {name} must be a count (whole number >= 0), got {value!r}")
        for name in ("errors", "fallbacks", "escalations", "slow"):
            if counts[name] > arm.requests:
                raise FlywheelError(f"{where}: {name} ({counts[name]}) exceeds requests ({arm.requests})")
        if not isinstance(arm.latency_p99_ms, (int, float)) or arm.latency_p99_ms < 0:
            raise FlywheelError(f"{where}: latency_p99_ms must be a number >= 0")
        if not isinstance(arm.no_data, bool):
            raise FlywheelError(f"{where}: no_data must be true or false, got {arm.no_data!r}")
        return arm


@dataclass
class RateComparison:
    """One rate on both arms, and the answers to both one-sided questions."""

    metric: str
    stable_rate: float
    canary_rate: float
    stable_n: int
    canary_n: int
    margin: float
    p_harm: float  # always-valid p-value for "canary is worse"
    p_noninferior: float  # always-valid p-value for "canary is worse by at least margin"
    harmful: bool = False
    noninferior: bool = False
    guardrail: bool = False  # tested for harm only: need not be shown non-inferior to promote
    unattributed: int = 0  # failed calls of no known arm, charged to the canary in the non-inferiority test


@dataclass
class CanaryVerdict:
    decision: str
    reasons: list[str]
    comparisons: list[RateComparison] = field(default_factory=list)
    latency_p99_ms: dict = field(default_factory=dict)
    alpha_per_test: float = 0.0
    unattributed_errors: int = 0  # arm "unknown": failed calls no arm can be charged with

    def to_dict(self) -> dict:
        return asdict(self)


def msprt_p_value(
    successes_a: int, n_a: int, successes_b: int, n_b: int, shift: float, tau: float
) -> tuple[float, float]:
    """Always-valid two-sided p-value for H0: p_b - p_a = shift, and the estimated difference minus shift.

    Normal-mixture mSPRT (mixture N(shift, tau^2) over the difference): the likelihood ratio is
    sqrt(V / (V + tau^2)) * exp(d^2 tau^2 / (2 V (V + tau^2))), with d the estimated difference minus
    the shift and V its variance; p = min(1, 1 / ratio). Rates get half a count of smoothing so that a
    rate of exactly 0 (errors often are) still has a variance.
    """
    pa = (successes_a + 0.5) / (n_a + 1)
    pb = (successes_b + 0.5) / (n_b + 1)
    variance = pa * (1 - pa) / n_a + pb * (1 - pb) / n_b
    d = (pb - pa) - shift
    t2 = tau * tau
    log_ratio = 0.5 * math.log(variance / (variance + t2)) + d * d * t2 / (2 * variance * (variance + t2))
    return min(1.0, math.exp(-log_ratio)), d


class Rate(NamedTuple):
    """One rate to compare: its events and the answers they are counted among, on each arm."""

    metric: str
    stable_events: int
    stable_n: int
    canary_events: int
    canary_n: int
    margin: float  # how much higher the canary's rate may be and still count as no worse


def _compare(rate: Rate, alpha: float, tau: float, guardrail: bool = False) -> RateComparison:
    """Both questions for one rate at ``alpha``: is the canary worse, and is it worse by less than the margin?"""
    xs, ns, xc, nc = rate.stable_events, rate.stable_n, rate.canary_events, rate.canary_n
    p_zero, d0 = msprt_p_value(xs, ns, xc, nc, 0.0, tau)
    p_margin, dm = msprt_p_value(xs, ns, xc, nc, rate.margin, tau)
    # one-sided: reject only in the direction asked about. The two-sided p is kept as it is: halving
    # it would be anti-conservative (the symmetric mixture's ratio is less than twice the one-sided one)
    p_harm = p_zero if d0 > 0 else 1.0
    p_noninf = p_margin if dm < 0 else 1.0
    return RateComparison(
        rate.metric,
        xs / ns,
        xc / nc,
        ns,
        nc,
        rate.margin,
        p_harm,
        p_noninf,
        harmful=p_harm <= alpha,
        noninferior=p_noninf <= alpha,
        guardrail=guardrail,
    )


def _rated(arm: ArmMetrics) -> int:
    return arm.thumbs_up + arm.thumbs_down


def _rates(stable: ArmMetrics, canary: ArmMetrics, cfg: CanaryConfig) -> list[Rate]:
    """The rates with a margin: per request, and thumbs-down per rated answer once both arms have enough ratings."""
    per_request = [
        ("error rate", stable.errors, canary.errors, cfg.error_rate_margin),
        ("fallback rate", stable.fallbacks, canary.fallbacks, cfg.fallback_rate_margin),
        ("escalation rate", stable.escalations, canary.escalations, cfg.escalation_rate_margin),
    ]
    rates = [Rate(name, xs, stable.requests, xc, canary.requests, margin) for name, xs, xc, margin in per_request]
    if min(_rated(stable), _rated(canary)) >= cfg.min_ratings_per_arm:
        rates.append(
            Rate(
                "thumbs-down rate",
                stable.thumbs_down,
                _rated(stable),
                canary.thumbs_down,
                _rated(canary),
                cfg.thumbs_down_margin,
            )
        )
    return rates


def compare_arms(
    stable: ArmMetrics, canary: ArmMetrics, cfg: CanaryConfig, unattributed: int = 0
) -> tuple[list[RateComparison], float]:
    """Every rate compared, then the slow-answer guardrail; and the alpha each test got (Bonferroni).

    The error rate's non-inferiority is tested with the ``unattributed`` failed calls charged to the
    canary (the worst case), its harm with what each arm is known to have failed."""
    rates = _rates(stable, canary, cfg)
    slow = Rate(
        f"slow-answer rate (over {cfg.latency_budget_ms:.0f} ms)",
        stable.slow,
        stable.requests,
        canary.slow,
        canary.requests,
        0.0,
    )
    alpha = cfg.alpha / (len(rates) + 1)
    comparisons = [_compare(r, alpha, cfg.mixture_sd) for r in rates]
    if unattributed:
        errors = rates[0]
        worst = _compare(
            errors._replace(canary_events=errors.canary_events + unattributed, canary_n=errors.canary_n + unattributed),
            alpha,
            cfg.mixture_sd,
        )
        comparisons[0] = replace(
            comparisons[0], p_noninferior=worst.p_noninferior, noninferior=worst.noninferior, unattributed=unattributed
        )
    comparisons.append(_compare(slow, alpha, cfg.mixture_sd, guardrail=True))
    return comparisons, alpha


def analyse(
    stable: ArmMetrics, canary: ArmMetrics, cfg: CanaryConfig, unknown: ArmMetrics | None = None
) -> CanaryVerdict:
    """Promote, hold or roll back; no data when an arm has none. Rollback wins over promote; too little
    traffic always holds. ``unknown``: the failed calls no arm can be charged with, if the source has any."""
    unattributed = unknown.errors if unknown is not None else 0
    latency = {"stable": stable.latency_p99_ms, "canary": canary.latency_p99_ms}
    unseen = [
        f"{name} (v{arm.model_version})" if arm.model_version is not None else name
        for name, arm in (("stable", stable), ("canary", canary))
        if arm.no_data
    ]
    if unseen:
        return CanaryVerdict(
            NO_DATA,
            [
                f"no data for {' and '.join(unseen)}: the metrics source has no request series for it at all "
                "(its pods are not scraped, or its revision never served a request), so nothing can be decided"
            ],
            latency_p99_ms=latency,
            unattributed_errors=unattributed,
        )
    few = [
        f"{name} has {arm.requests} requests (< {cfg.min_requests_per_arm})"
        for name, arm in (("stable", stable), ("canary", canary))
        if arm.requests < cfg.min_requests_per_arm
    ]
    if few:
        return CanaryVerdict(
            HOLD, ["too little traffic: " + "; ".join(few)], latency_p99_ms=latency, unattributed_errors=unattributed
        )
    comparisons, alpha = compare_arms(stable, canary, cfg, unattributed)
    decision, reasons = decide(comparisons, alpha, stable, canary, cfg)
    return CanaryVerdict(decision, reasons, comparisons, latency, alpha, unattributed)


def decide(
    comparisons: list[RateComparison], alpha: float, stable: ArmMetrics, canary: ArmMetrics, cfg: CanaryConfig
) -> tuple[str, list[str]]:
    """The decision and its reasons, from the comparisons: any harm rolls back; a promotion needs every
    rate with a margin shown non-inferior, on enough feedback."""
    harmful = [c for c in comparisons if c.harmful]
    if harmful:
        return ROLLBACK, [
            f"{c.metric} is higher on the canary: {c.canary_rate:.2%} vs {c.stable_rate:.2%} "
            f"(always-valid p = {c.p_harm:.2g} <= {alpha:.3g})"
            for c in harmful
        ]
    if min(_rated(stable), _rated(canary)) < cfg.min_ratings_per_arm:
        return HOLD, [
            f"too little feedback: thumbs-down rate needs {cfg.min_ratings_per_arm} "
            f"rated answers per arm (stable {_rated(stable)}, canary {_rated(canary)})"
        ]
    pending = [c for c in comparisons if not c.noninferior and not c.guardrail]
    if pending:
        return HOLD, [
            f"not yet shown: canary's {c.metric} at most {c.margin:.1%} above stable's "
            f"({c.canary_rate:.2%} vs {c.stable_rate:.2%}, p = {c.p_noninferior:.2g}"
            + (f", counting the {c.unattributed} failed calls of unknown arm as the canary's" if c.unattributed else "")
            + ")"
            for c in pending
        ]
    return PROMOTE, [
        f"every rate is shown to be at most its margin above stable's (alpha {alpha:.3g} each) "
        f"and the canary is not slower: {canary.slow / canary.requests:.2%} of its answers over "
        f"{cfg.latency_budget_ms:.0f} ms, stable {stable.slow / stable.requests:.2%}"
    ]


def render_markdown(verdict: CanaryVerdict, env: str, stable_label: str, canary_label: str) -> str:
    lines = [
        f"## Canary analysis ({env}): **{verdict.decision.upper()}**",
        "",
        f"Stable {stable_label} vs canary {canary_label}.",
        "",
    ]
    lines += [f"- {r}" for r in verdict.reasons]
    if verdict.comparisons:
        lines += [
            "",
            "| metric | stable | canary | margin | p (worse) | p (non-inferior) |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {c.metric} | {c.stable_rate:.2%} (n={c.stable_n}) | {c.canary_rate:.2%} (n={c.canary_n}) | "
            + ("guardrail" if c.guardrail else f"{c.margin:.1%}")
            + f" | {c.p_harm:.3g} | "
            + ("not required" if c.guardrail else f"{c.p_noninferior:.3g}")
            + " |"
            for c in verdict.comparisons
        ]
    if verdict.unattributed_errors:
        lines += [
            "",
            f"Arm unknown: {verdict.unattributed_errors} calls were never answered, and nothing logged says which "
            "revision they reached (KServe's logger sends no response event for a failed call, and the same "
            "`ce-source` from every revision). They are in neither arm's error rate; before a promotion the "
            "canary's error rate must stay within its margin even if every one of them was the canary's.",
        ]
    lines += [
        "",
        f"p99 latency: stable {verdict.latency_p99_ms.get('stable', 0):.0f} ms, "
        f"canary {verdict.latency_p99_ms.get('canary', 0):.0f} ms.",
        "",
        "p-values are always valid (mSPRT): looking every hour does not inflate errors.",
    ]
    return "\n".join(lines) + "\n"
