"""The release gate: may this challenger replace the champion? A pure function of two evaluations.

Both evaluations must come from the same test set: the current one, the champion re-evaluated on
it (it grows with human labels, the seed test set frozen inside it). The challenger is rejected if it is
significantly worse overall (one-sided exact McNemar test on the paired per-example outcomes), if
any intent with enough test support loses more than the allowed F1 and the same paired test on
that intent's examples shows it (corrected for the number of intents), if any entity type with enough
true spans loses more than the allowed span F1 (or the champion was scored on entities and the
challenger was not), or if a query costs more CPU time than the latency budget (CPU time, not wall
time, so a busy machine does not change the verdict). With no champion yet, absolute floors apply
instead of the comparison. Intents the champion does not know are reported with their F1 and test
support ("new intents"), not gated: the champion has nothing there to lose. Reports without
entity metrics get no entity check at all, so an intent-only model is gated exactly as before entities existed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from scipy.stats import binomtest

from model.core.config import GateConfig
from model.evaluate.report import EvaluationReport, Outcome


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Headline:
    """A model's headline figures, as the gate's summary shows them beside the checks."""

    accuracy: float
    macro_f1: float
    entity_micro_f1: float | None = None  # only when the report has entity metrics

    @classmethod
    def of(cls, report: EvaluationReport) -> Headline:
        entities = report.entities.micro.f1 if report.entities is not None else None
        return cls(report.accuracy, report.macro_f1, entities)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    checks: list[Check]
    challenger_digest: str
    champion_digest: str | None
    challenger: Headline
    champion: Headline | None  # None: no champion yet (absolute floors)

    @property
    def reasons(self) -> list[str]:
        """Why it failed: the detail of each failed check (empty when it passed)."""
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        """The decision as gate.json holds it (``flywheel register`` reads passed, reasons, challenger_digest)."""
        return {
            "passed": self.passed,
            "checks": [asdict(c) for c in self.checks],
            "challenger_digest": self.challenger_digest,
            "champion_digest": self.champion_digest,
            "summary": {
                "challenger": self.challenger.to_dict(),
                "champion": self.champion.to_dict() if self.champion else None,
            },
            "reasons": self.reasons,
        }


def decide(challenger: EvaluationReport, champion: EvaluationReport | None, cfg: GateConfig) -> GateDecision:
    """Gate ``challenger`` against ``champion`` (evaluation reports from model.evaluate.evaluation)."""
    checks = [_latency(challenger, cfg)]
    if champion is None:
        checks += [
            Check(
                "accuracy floor",
                challenger.accuracy >= cfg.min_accuracy,
                f"{challenger.accuracy:.4f} (floor {cfg.min_accuracy:.2f}; no champion yet)",
            ),
            Check(
                "macro-F1 floor",
                challenger.macro_f1 >= cfg.min_macro_f1,
                f"{challenger.macro_f1:.4f} (floor {cfg.min_macro_f1:.2f}; no champion yet)",
            ),
            *_entity_floor(challenger, cfg),
            *_out_of_scope_floor(challenger, cfg),
        ]
    elif challenger.test_digest != champion.test_digest:
        checks.append(
            Check(
                "same test set",
                False,
                f"evaluations used different test sets ({challenger.test_digest[:12]} vs "
                f"{champion.test_digest[:12]}); they cannot be compared",
            )
        )
    else:
        checks += [
            _mcnemar(challenger, champion, cfg),
            _per_intent(challenger, champion, cfg),
            *_new_intents(challenger, champion),
            *_out_of_scope(challenger, champion, cfg),
            *_per_entity_type(challenger, champion, cfg),
        ]
    return GateDecision(
        passed=all(c.passed for c in checks),
        checks=checks,
        challenger_digest=challenger.model_digest,
        champion_digest=champion.model_digest if champion else None,
        challenger=Headline.of(challenger),
        champion=Headline.of(champion) if champion else None,
    )


def _latency(report: EvaluationReport, cfg: GateConfig) -> Check:
    """CPU time per query, not wall time: the verdict must not depend on how busy the machine is."""
    p95, wall = report.latency.cpu_p95_ms, report.latency.single_p95_ms
    return Check(
        "latency",
        p95 <= cfg.latency_budget_ms,
        f"CPU time p95 {p95:.1f} ms per query (budget {cfg.latency_budget_ms:.0f} ms; wall clock here {wall:.1f} ms)",
    )


def _mcnemar(challenger: EvaluationReport, champion: EvaluationReport, cfg: GateConfig) -> Check:
    champ = champion.outcomes()
    only_champion_right = only_challenger_right = 0
    for e in challenger.examples:
        a, b = e.right, champ[e.id].right
        only_champion_right += b and not a
        only_challenger_right += a and not b
    discordant = only_champion_right + only_challenger_right
    p = binomtest(only_champion_right, discordant, 0.5, alternative="greater").pvalue if discordant else 1.0
    return Check(
        "not significantly worse",
        p >= cfg.alpha,
        f"accuracy {challenger.accuracy:.4f} vs champion {champion.accuracy:.4f}; "
        f"only the champion right on {only_champion_right}, only the challenger on {only_challenger_right}; "
        f"McNemar one-sided p={p:.4g} (reject below {cfg.alpha})",
    )


def _paired_loss(challenger: EvaluationReport, champion: EvaluationReport, intent: str) -> tuple[int, int, float]:
    """On the test examples that concern ``intent`` (its own, and those either model predicted as it):
    how often only the champion was right, only the challenger, and the one-sided exact McNemar p."""
    champ = champion.outcomes()
    lost = won = 0
    for e in challenger.examples:
        other: Outcome | None = champ.get(e.id)
        if other is None or intent not in (e.intent, e.predicted, other.predicted):
            continue
        a, b = e.right, other.right
        lost += b and not a
        won += a and not b
    return lost, won, binomtest(lost, lost + won, 0.5, alternative="greater").pvalue if lost + won else 1.0


def _per_intent(challenger: EvaluationReport, champion: EvaluationReport, cfg: GateConfig) -> Check:
    """An intent rejects only a loss that is both large (more than ``max_f1_drop`` F1) and shown: the
    paired test on its examples is significant at ``alpha`` divided by the number of gated intents
    (Bonferroni), so a few hundred test examples do not reject an improvement for one unlucky intent
    of twenty examples. A large drop within noise is a warning in the pull-request body."""
    known = set(champion.model_intents)  # a new intent has nothing to lose
    gated = [n for n, m in champion.per_intent.items() if m.support >= cfg.min_support and n in known]
    alpha = cfg.alpha / max(len(gated), 1)
    losses, within_noise = [], []
    for name in gated:
        old, new = champion.per_intent[name].f1, challenger.scores(name).f1
        if old - new <= cfg.max_f1_drop:
            continue
        lost, won, p = _paired_loss(challenger, champion, name)
        line = (
            f"{name} {old:.3f}→{new:.3f} (only the champion right on {lost}, only the challenger on {won}; p={p:.2g})"
        )
        (losses if p < alpha else within_noise).append(line)
    if losses:
        detail = f"lost more than {cfg.max_f1_drop:.2f} F1, significantly (p < {alpha:.2g}): " + ", ".join(losses)
    else:
        detail = (
            f"no intent significantly lost more than {cfg.max_f1_drop:.2f} F1 "
            f"({len(gated)} intents with support ≥ {cfg.min_support})"
        )
    if within_noise:
        detail += f"; warning, a drop within noise (p ≥ {alpha:.2g}): " + ", ".join(within_noise)
    return Check("per-intent F1", not losses, detail)


def _out_of_scope_floor(report: EvaluationReport, cfg: GateConfig) -> list[Check]:
    """With no champion: out-of-scope recall at least ``min_oos_recall``, where the test set has enough of them."""
    oos = report.out_of_scope
    if oos is None or oos.n < cfg.min_support:
        return []
    recall, n = oos.recall, oos.n
    detail = f"{recall:.3f} of {n} out-of-scope messages handed off (floor {cfg.min_oos_recall:.2f}; no champion yet)"
    return [Check("out-of-scope recall floor", bool(recall >= cfg.min_oos_recall), detail)]


def _out_of_scope(challenger: EvaluationReport, champion: EvaluationReport, cfg: GateConfig) -> list[Check]:
    """Out-of-scope messages the champion handed off and the challenger answers: rejected when the
    one-sided exact paired test shows it at ``alpha`` (a new intent that became a sink for them)."""
    if challenger.out_of_scope is None:
        return []
    label, champ = challenger.out_of_scope.label, champion.outcomes()
    pairs = [(e, champ[e.id]) for e in challenger.examples if e.intent == label and e.id in champ]
    if len(pairs) < cfg.min_support:
        return []
    lost = sum(b.fallback and not a.fallback for a, b in pairs)  # only the champion handed it off
    won = sum(a.fallback and not b.fallback for a, b in pairs)
    p = binomtest(lost, lost + won, 0.5, alternative="greater").pvalue if lost + won else 1.0
    was = champion.out_of_scope.recall if champion.out_of_scope else float("nan")
    detail = (
        f"recall {challenger.out_of_scope.recall:.3f} vs champion {was:.3f} on "
        f"{len(pairs)} out-of-scope messages; only the champion handed off {lost}, only the challenger {won}; "
        f"p={p:.2g} (reject below {cfg.alpha})"
    )
    return [Check("out-of-scope hand-off", bool(p >= cfg.alpha), detail)]


def _new_intents(challenger: EvaluationReport, champion: EvaluationReport) -> list[Check]:
    """The intents the challenger knows and the champion does not: what the retrain was for, scored
    on the test set's examples of them (human labels join it; ``prepare.grow_test``). Reported, not
    gated: the champion, which never predicts them, has nothing there to lose. No new intent, no check."""
    new = sorted(set(challenger.model_intents) - set(champion.model_intents))
    if not new:
        return []
    scores = {name: challenger.scores(name) for name in new}
    tested = [n for n in new if scores[n].support]
    total = sum(scores[n].support for n in tested)
    detail = f"{len(new)} new: F1 on {total} test examples: " + (
        ", ".join(f"{n} {scores[n].f1:.3f} ({scores[n].support})" for n in tested) or "none"
    )
    untested = [n for n in new if not scores[n].support]
    if untested:
        detail += "; warning, no test example yet (not evaluated): " + ", ".join(untested)
    return [Check("new intents", True, detail)]


def _entity_floor(report: EvaluationReport, cfg: GateConfig) -> list[Check]:
    """With no champion: a floor on entity micro-F1, when entities were evaluated on enough true spans."""
    if report.entities is None:
        return []
    micro = report.entities.micro
    if cfg.min_entity_f1 is None:
        detail = f"{micro.f1:.4f} on {micro.support} true spans: reported, not gated (gate.min_entity_f1 unset)"
        return [Check("entity micro-F1 floor", True, detail)]
    if micro.support < cfg.min_entity_support:
        detail = f"{micro.f1:.4f} on {micro.support} true spans: not gated (fewer than {cfg.min_entity_support})"
        return [Check("entity micro-F1 floor", True, detail)]
    return [
        Check(
            "entity micro-F1 floor",
            micro.f1 >= cfg.min_entity_f1,
            f"{micro.f1:.4f} on {micro.support} true spans (floor {cfg.min_entity_f1:.2f}; no champion yet)",
        )
    ]


def _per_entity_type(challenger: EvaluationReport, champion: EvaluationReport, cfg: GateConfig) -> list[Check]:
    """Span F1 per entity type against the champion's, gated where the champion's report has enough true spans.

    A type the champion was scored on that is missing from the challenger's report counts as F1 0.
    No check when neither report has entity metrics; nothing to lose when the champion's has no true span.
    """
    old, new = champion.entities, challenger.entities
    if old is None and new is None:
        return []
    name = "per-entity-type F1"
    if old is None or old.micro.support == 0:
        scored = f" (challenger micro-F1 {new.micro.f1:.3f})" if new else ""
        return [Check(name, True, f"the champion was scored on no true entity span: nothing to compare{scored}")]
    if new is None:
        return [
            Check(
                name,
                False,
                f"the champion was scored on {old.micro.support} entity spans (micro-F1 "
                f"{old.micro.f1:.3f}); the challenger has no entity metrics",
            )
        ]
    losses, small = [], []
    for kind, was in old.per_type.items():
        now = new.per_type.get(kind)  # None: a type the challenger's report lacks, F1 0
        if was.support < cfg.min_entity_support:
            small.append(f"{kind} ({was.support})")
        elif was.f1 - (now.f1 if now else 0.0) > cfg.max_entity_f1_drop:
            losses.append(
                f"{kind} {was.f1:.3f}→" + (f"{now.f1:.3f}" if now else "0.000 (not in the challenger's report)")
            )
    gated = len(old.per_type) - len(small)
    detail = (
        (f"lost more than {cfg.max_entity_f1_drop:.2f} F1: " + ", ".join(losses))
        if losses
        else (
            f"no entity type lost more than {cfg.max_entity_f1_drop:.2f} F1 "
            f"({gated} types with support ≥ {cfg.min_entity_support})"
        )
    )
    if small:
        detail += f"; not gated (support < {cfg.min_entity_support}): " + ", ".join(small)
    return [Check(name, not losses, detail)]


def render_markdown(decision: GateDecision) -> str:
    verdict = "PASSED ✅" if decision.passed else "REJECTED ❌"
    lines = [f"## Gate: {verdict}", "", "| check | result | detail |", "|---|---|---|"]
    for c in decision.checks:
        lines.append(f"| {c.name} | {'pass' if c.passed else '**fail**'} | {c.detail} |")
    champion = decision.champion_digest[:12] if decision.champion_digest else "none (absolute floors)"
    lines += ["", f"Challenger artifact `{decision.challenger_digest[:12]}`, champion `{champion}`."]
    return "\n".join(lines) + "\n"
