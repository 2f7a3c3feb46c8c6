"""Find and redact personal data in chat messages with Presidio's pattern recognizers.

``redact(text) -> (redacted_text, findings)`` is the one call the collector makes at ingestion and
``flywheel prepare`` makes again before anything is stored for training, so raw personal data is
never at rest. Each finding is replaced by a typed placeholder (``<EMAIL>``, ``<PHONE>``, ...).

What is covered, and why this way:

- Emails, payment cards (Luhn-checked), IBANs (mod-97 checked), phone numbers (python-phonenumbers,
  valid numbers only, in the configured regions plus any number written with a ``+`` country
  code), IPv4/IPv6 addresses and US social security numbers: identifiers customers actually paste
  into a shop's support chat.
- Order numbers, tracking numbers, amounts and dates are *not* redacted: they identify a
  transaction, not a person, and the intent model needs to see that a message carries one
  ("where is order 10482913"). The evaluation set checks that they are not mistaken for a phone
  number or a card.
- Names and street addresses need a named-entity model; the official spaCy models cannot be
  installed here, so they are out of scope (see README).

The analyzer runs on Presidio's ``NoOpNlpEngine``: pattern recognizers only, no spaCy model loaded.
Findings never hold the matched text itself (it is the personal data): only type, offsets, score.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from model.core.config import PiiConfig

# Every entity covered holds a digit (cards, phones, IBANs, IPv4, SSNs), an "@" (emails) or a ":"
# (IPv6): a text with none of them is skipped without running the analyzer (most chat messages).
_MAY_HOLD_PII = re.compile(r"[\d@:]")

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

    def scan(self, text: str) -> list[Finding]:
        """Non-overlapping findings, left to right; where spans overlap the surer one wins."""
        if not text or not _MAY_HOLD_PII.search(text):
            return []
        results = self.engine.analyze(text, language="en", score_threshold=self.cfg.min_score)
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
            out += [text[last : f.start], f"<{f.entity}>"]
            last = f.end
        out.append(text[last:])
        return "".join(out), findings

    def redact_many(self, texts: Iterable[str]) -> tuple[list[str], Counter]:
        """Redact every text; count findings per entity type (for datasheets and reports)."""
        counts: Counter = Counter()
        redacted = []
        for text in texts:
            clean, findings = self.redact(text)
            counts.update(f.entity for f in findings)
            redacted.append(clean)
        return redacted, counts


@functools.lru_cache(maxsize=4)
def _build_engine(phone_regions: tuple[str, ...]):
    # Presidio pulls in spaCy and friends: import only when a scanner is first built.
    import regex
    import tldextract
    from presidio_analyzer import AnalyzerEngine, EntityRecognizer, Pattern, RecognizerRegistry, RecognizerResult
    from presidio_analyzer.nlp_engine import NoOpNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    # tldextract's default fetches the public suffix list over the network on first use; the
    # snapshot bundled with the package is enough to tell "example.com" from "file.txt".
    offline_tlds = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return offline_tlds(pattern_text).fqdn != ""

    class AnyCaseIbanRecognizer(IbanRecognizer):
        """IBANs in any case, ending where the checksum says they end.

        Presidio's recognizer wants upper case; people also type "de89 3704 ...". A case-blind regex
        would swallow the next word ("... 0327 name"), so each candidate is cut back from the right,
        at token ends, until Presidio's validation (mod-97 checksum and country format) accepts it.
        """

        CANDIDATE = regex.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2}(?:[ -]?[A-Za-z0-9]){11,32}")

        def __init__(self):
            # exact_match anchors the per-country format, so the length must be the country's IBAN length
            super().__init__(exact_match=True)

        def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
            results = []
            for m in self.CANDIDATE.finditer(text):
                candidate = m.group()
                for end in range(len(candidate), 14, -1):
                    after = text[m.start() + end : m.start() + end + 1]
                    if candidate[end - 1] in " -" or after.isalnum():
                        continue
                    if self.validate_result(candidate[:end].upper()):
                        results.append(
                            RecognizerResult(
                                "IBAN_CODE",
                                m.start(),
                                m.start() + end,
                                EntityRecognizer.MAX_SCORE,
                                recognition_metadata={
                                    RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                                    RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                                },
                            )
                        )
                        break
            return results

    class ChatPhoneRecognizer(PhoneRecognizer):
        """Phone numbers, minus the numbers a chat message itself says are something else.

        python-phonenumbers accepts any digit run that is a valid number somewhere, which in a shop's
        chat includes order numbers ("order 7711030261"), dates ("08.12.2025") and short ids.
        """

        def analyze(self, text, entities, nlp_artifacts=None):
            return [r for r in super().analyze(text, entities, nlp_artifacts) if _plausible_phone(text, r.start, r.end)]

    # Presidio's card pattern predates Mastercard's 2221-2720 range (issued since 2017).
    mastercard_2_series = Pattern(
        "Mastercard 2-series (weak)", r"\b(2[2-7]\d{2})[- ]?(\d{4})[- ]?(\d{4})[- ]?(\d{4})\b", 0.3
    )
    recognizers = [
        OfflineEmailRecognizer(),
        CreditCardRecognizer(patterns=[*CreditCardRecognizer.PATTERNS, mastercard_2_series]),
        AnyCaseIbanRecognizer(),
        ChatPhoneRecognizer(supported_regions=phone_regions, leniency=1),
        IpRecognizer(),
        UsSsnRecognizer(),
    ]
    registry = RecognizerRegistry(recognizers=recognizers, supported_languages=["en"])
    nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    return AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])


# A number right after one of these words is what the word says it is ("order 7711030261").
_NOT_A_PHONE_CUE = re.compile(
    r"\b(?:order|invoice|ticket|tracking|parcel|ref|reference|rma|sku|ean|item|article|id)\s*(?:no\.?|number|nr\.?)?\s*(?:is\s*)?[:#]?\s*$",
    re.IGNORECASE,
)
_DATE = re.compile(r"^\d{1,2}[./-]\d{1,2}[./-]\d{2,4}$|^\d{4}[./-]\d{1,2}[./-]\d{1,2}$")
# Subscriber numbers with an area code have at least 8 digits in every region configured by default.
_MIN_PHONE_DIGITS = 8


def _plausible_phone(text: str, start: int, end: int) -> bool:
    span = text[start:end]
    if sum(ch.isdigit() for ch in span) < _MIN_PHONE_DIGITS or _DATE.match(span):
        return False
    if start > 0 and text[start - 1] in "-_/" and start > 1 and text[start - 2].isalnum():
        return False  # the tail of an id such as NWP-89527113
    return not _NOT_A_PHONE_CUE.search(text[max(0, start - 30) : start])


@functools.lru_cache(maxsize=1)
def default_scanner() -> Scanner:
    return Scanner()


def redact(text: str) -> tuple[str, list[Finding]]:
    """Replace personal data in ``text`` by typed placeholders; return the new text and findings.

    Idempotent: placeholders contain nothing a recognizer matches, so redacting twice changes nothing.
    """
    return default_scanner().redact(text)


def contains_pii(text: str) -> bool:
    return bool(default_scanner().scan(text))
