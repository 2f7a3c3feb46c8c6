"""Find and redact personal data in chat messages with Presidio's pattern recognizers.

``redact(text) -> (redacted_text, findings)`` is the one call the collector makes at ingestion and
``flywheel prepare`` makes again before anything is stored for training, so raw personal data is
never at rest. Each finding is replaced by a typed placeholder (``<EMAIL>``, ``<PHONE>``, ...).

What is covered, and why this way:

- Emails, payment cards (Luhn-checked), IBANs (mod-97 checked), phone numbers (python-phonenumbers,
  valid numbers in the configured regions plus any number written with a ``+`` country code; where
  the message presents a number as a phone number, "call me on ...", merely possible ones too),
  IPv4/IPv6 addresses and US social security numbers: identifiers customers actually paste into a
  shop's support chat.
- Order numbers, tracking numbers, amounts and dates are *not* redacted: they identify a
  transaction, not a person, and the intent model needs to see that a message carries one
  ("where is order 10482913"). The evaluation set checks that they are not mistaken for a phone
  number or a card.
- Names and street addresses need a named-entity model; the official spaCy models cannot be
  installed here, so they are out of scope (docs/data.md).

The analyzer runs on Presidio's ``NoOpNlpEngine``: pattern recognizers only, no spaCy model loaded
(``data_checks.pii_engine`` builds it).
A text is analyzed only for the entity types it could hold (``pii_engine.candidate_entities``, a
necessary condition per recognizer, checked against the full scan over the evaluation sets), so
most chat messages, and most with an order or tracking number, never reach Presidio.
Findings never hold the matched text itself (it is the personal data): only type, offsets, score.
They are also the offset map between a text and its redaction (``redacted_span``): each finding's
characters became its placeholder, so everything after it moved by the difference in length.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from model.core.config import PiiConfig

# Presidio entity type -> placeholder written into the text.
PLACEHOLDERS = {
    "EMAIL_ADDRESS": "<EMAIL>",
    "PHONE_NUMBER": "<PHONE>",
    "CREDIT_CARD": "<CARD>",
    "IBAN_CODE": "<IBAN>",
    "IP_ADDRESS": "<IP>",
    "US_SSN": "<SSN>",
}
# Short names used in reports, datasheets and the benchmark ("EMAIL", "CARD", ...).
ENTITY_NAMES = {k: v.strip("<>") for k, v in PLACEHOLDERS.items()}


@dataclass(frozen=True)
class Finding:
    """One piece of personal data: its type (``EMAIL``, ``PHONE``, ...) and where it was."""

    entity: str
    start: int
    end: int
    score: float

    def to_dict(self) -> dict:
        return {"entity": self.entity, "start": self.start, "end": self.end, "score": round(self.score, 3)}


class Scanner:
    """A Presidio ``AnalyzerEngine`` with pattern recognizers only, plus placeholder redaction."""

    def __init__(self, cfg: PiiConfig | None = None):
        self.cfg = cfg or PiiConfig()
        self.engine = _build_engine(tuple(self.cfg.phone_regions))
        from data_checks.pii_engine import candidate_entities  # Presidio is imported by now (_build_engine)

        self._candidates = candidate_entities

    def scan(self, text: str) -> list[Finding]:
        """Non-overlapping findings, left to right; where spans overlap the surer one wins."""
        entities = self._candidates(text) if text else []
        if not entities:  # analyze() with no entities would look for all of them
            return []
        results = self.engine.analyze(text, language="en", entities=entities, score_threshold=self.cfg.min_score)
        # Surest first, then longest: a Luhn-valid card (score 1.0) beats a phone match on its digits.
        results = sorted(results, key=lambda r: (-r.score, -(r.end - r.start), r.start))
        taken: list[Finding] = []
        for r in results:
            if any(r.start < f.end and f.start < r.end for f in taken):
                continue
            taken.append(Finding(ENTITY_NAMES[r.entity_type], r.start, r.end, float(r.score)))
        return sorted(taken, key=lambda f: f.start)

    def redact(self, text: str) -> tuple[str, list[Finding]]:
        findings = self.scan(text)
        out, last = [], 0
        for f in findings:
            out += [text[last : f.start], placeholder(f.entity)]
            last = f.end
        out.append(text[last:])
        return "".join(out), findings

    def redact_many(self, texts: Iterable[str]) -> tuple[list[str], Counter]:
        """Redact every text (each distinct one once: a window repeats its messages); count findings per
        entity type, every occurrence (for datasheets and reports)."""
        counts: Counter = Counter()
        redacted = []
        done: dict[str, tuple[str, list[Finding]]] = {}
        for text in texts:
            if text not in done:
                done[text] = self.redact(text)
            clean, findings = done[text]
            counts.update(f.entity for f in findings)
            redacted.append(clean)
        return redacted, counts


def placeholder(entity: str) -> str:
    """What ``redact`` writes in place of personal data of this type: ``<EMAIL>``, ``<PHONE>``, ..."""
    return f"<{entity}>"


def redacted_span(findings: list[Finding], start: int, end: int) -> tuple[int, int] | None:
    """Where the characters ``[start, end)`` of a text lie in its redaction, given the text's findings
    (non-overlapping, left to right, as ``scan`` returns them); None when they overlap personal data,
    which the redaction replaced."""
    shift = 0
    for f in findings:
        if f.start < end and start < f.end:
            return None
        if f.end > start:  # this finding and all later ones lie after the span
            break
        shift += len(placeholder(f.entity)) - (f.end - f.start)
    return start + shift, end + shift


@functools.lru_cache(maxsize=4)
def _build_engine(phone_regions: tuple[str, ...]):
    # Presidio pulls in spaCy and friends (seconds): imported when the first scanner is built, so the
    # collector and prepare can import this module for free.
    from data_checks.pii_engine import build_engine

    return build_engine(phone_regions)


@functools.lru_cache(maxsize=1)
def default_scanner() -> Scanner:
    return Scanner()


def redact(text: str) -> tuple[str, list[Finding]]:
    """Replace personal data in ``text`` by typed placeholders; return the new text and findings.

    Idempotent: placeholders contain nothing a recognizer matches, so redacting twice changes nothing.
    """
    return default_scanner().redact(text)
