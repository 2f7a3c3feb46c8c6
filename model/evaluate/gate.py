"""The release gate: may this challenger replace the champion? A pure function of two evaluations.

Both evaluations must come from the same frozen test set. The challenger is rejected if it is
significantly worse overall (one-sided exact McNemar test on the paired per-example outcomes), if
any intent with enough test support loses more than the allowed F1, or if a query costs more CPU
time than the latency budget (CPU time, not wall time, so a busy machine does not change the
verdict). With no champion yet, absolute floors apply instead of the comparison.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from scipy.stats import binomtest

from model.core.config import GateConfig


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    checks: list[Check]
    challenger_digest: str
    champion_digest: str | None
    summary: dict = field(default_factory=dict)

    @property
    def reasons(self) -> list[str]:
        """Why it failed: the detail of each failed check (empty when it passed)."""
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        return {**asdict(self), "reasons": self.reasons}


def decide(challenger: dict, champion: dict | None, cfg: GateConfig) -> GateDecision:
    """Gate ``challenger`` against ``champion`` (evaluation reports from model.evaluate.evaluation)."""
    checks = [_latency(challenger, cfg)]
    if champion is None:
        checks += [
            Check(
                "accuracy floor",
                challenger["accuracy"] >= cfg.min_accuracy,
                f"{challenger['accuracy']:.4f} (floor {cfg.min_accuracy:.2f}; no champion yet)",
            ),
            Check(
                "macro-F1 floor",
                challenger["macro_f1"] >= cfg.min_macro_f1,
                f"{challenger['macro_f1']:.4f} (floor {cfg.min_macro_f1:.2f}; no champion yet)",
            ),
        ]
    elif challenger["test_digest"] != champion["test_digest"]:
        checks.append(
            Check(
                "same test set",
                False,
                f"evaluations used different test sets ({challenger['test_digest'][:12]} vs "
                f"{champion['test_digest'][:12]}); they cannot be compared",
            )
        )
    else:
        checks += [_mcnemar(challenger, champion, cfg), _per_intent(challenger, champion, cfg)]
    summary = {
        "challenger": {k: challenger[k] for k in ("accuracy", "macro_f1")},
        "champion": {k: champion[k] for k in ("accuracy", "macro_f1")} if champion else None,
    }
    return GateDecision(
        passed=all(c.passed for c in checks),
        checks=checks,
        challenger_digest=challenger["model_digest"],
        champion_digest=champion["model_digest"] if champion else None,
        summary=summary,
    )


def _latency(report: dict, cfg: GateConfig) -> Check:
    """CPU time per query, not wall time: the verdict must not depend on how busy the machine is."""
    p95, wall = report["latency"]["cpu_p95_ms"], report["latency"]["single_p95_ms"]
    return Check(
        "latency",
        p95 <= cfg.latency_budget_ms,
        f"CPU time p95 {p95:.1f} ms per query (budget {cfg.latency_budget_ms:.0f} ms; wall clock here {wall:.1f} ms)",
    )


def _mcnemar(challenger: dict, champion: dict, cfg: GateConfig) -> Check:
    champ = {e["id"]: e for e in champion["examples"]}
    only_champion_right = only_challenger_right = 0
    for e in challenger["examples"]:
        other = champ[e["id"]]
        a, b = e["predicted"] == e["intent"], other["predicted"] == other["intent"]
        only_champion_right += b and not a
        only_challenger_right += a and not b
    discordant = only_champion_right + only_challenger_right
    p = binomtest(only_champion_right, discordant, 0.5, alternative="greater").pvalue if discordant else 1.0
    return Check(
        "not significantly worse",
        p >= cfg.alpha,
        f"accuracy {challenger['accuracy']:.4f} vs champion {champion['accuracy']:.4f}; "
        f"only the champion right on {only_champion_right}, only the challenger on {only_challenger_right}; "
        f"McNemar one-sided p={p:.4g} (reject below {cfg.alpha})",
    )


def _per_intent(challenger: dict, champion: dict, cfg: GateConfig) -> Check:
    losses = []
    for name, old in champion["per_intent"].items():
        new = challenger["per_intent"].get(name, {"f1": 0.0, "support": old["support"]})
        if old["support"] >= cfg.min_support and old["f1"] - new["f1"] > cfg.max_f1_drop:
            losses.append(f"{name} {old['f1']:.3f}→{new['f1']:.3f}")
    gated = sum(1 for m in champion["per_intent"].values() if m["support"] >= cfg.min_support)
    detail = (
        (f"lost more than {cfg.max_f1_drop:.2f} F1: " + ", ".join(losses))
        if losses
        else (f"no intent lost more than {cfg.max_f1_drop:.2f} F1 ({gated} intents with support ≥ {cfg.min_support})")
    )
    return Check("per-intent F1", not losses, detail)


def render_markdown(decision: GateDecision) -> str:
    verdict = "PASSED ✅" if decision.passed else "REJECTED ❌"
    lines = [f"## Gate: {verdict}", "", "| check | result | detail |", "|---|---|---|"]
    for c in decision.checks:
        lines.append(f"| {c.name} | {'pass' if c.passed else '**fail**'} | {c.detail} |")
    champion = decision.champion_digest[:12] if decision.champion_digest else "none (absolute floors)"
    lines += ["", f"Challenger artifact `{decision.challenger_digest[:12]}`, champion `{champion}`."]
    return "\n".join(lines) + "\n"
