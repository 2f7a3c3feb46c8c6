"""Presidio's analyzer as the PII scanner runs it: pattern recognizers only, tuned to chat messages.

Each recognizer here is Presidio's own with one change a shop's support chat needs: emails
validated against the public suffix list bundled with tldextract (never fetched), IBANs in any
case cut back to where their checksum ends, phone numbers minus the order numbers, dates and ids
a message itself names, and cards including Mastercard's 2-series. The analyzer runs on
``NoOpNlpEngine``: no spaCy model is loaded.

Importing this module imports Presidio (and spaCy with it), so ``data_checks.pii`` imports it only
when the first scanner is built.
"""

from __future__ import annotations

import re

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

# Presidio's card pattern predates Mastercard's 2221-2720 range (issued since 2017).
MASTERCARD_2_SERIES = Pattern(
    "Mastercard 2-series (weak)", r"\b(2[2-7]\d{2})[- ]?(\d{4})[- ]?(\d{4})[- ]?(\d{4})\b", 0.3
)


def build_engine(phone_regions: tuple[str, ...]) -> AnalyzerEngine:
    recognizers = [
        OfflineEmailRecognizer(),
        CreditCardRecognizer(patterns=[*CreditCardRecognizer.PATTERNS, MASTERCARD_2_SERIES]),
        AnyCaseIbanRecognizer(),
        ChatPhoneRecognizer(supported_regions=phone_regions, leniency=1),
        IpRecognizer(),
        UsSsnRecognizer(),
    ]
    registry = RecognizerRegistry(recognizers=recognizers, supported_languages=["en"])
    nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    return AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's email recognizer, checking the domain against the bundled public suffix list."""

    def __init__(self):
        # tldextract's default fetches the public suffix list over the network on first use; the
        # snapshot bundled with the package is enough to tell "example.com" from "file.txt".
        self._tlds = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
        super().__init__()

    def validate_result(self, pattern_text: str) -> bool:
        return self._tlds(pattern_text).fqdn != ""


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
            end = self._valid_end(text, m.start(), m.group())
            if end is not None:
                results.append(self._result(m.start(), m.start() + end))
        return results

    def _valid_end(self, text: str, start: int, candidate: str) -> int | None:
        """The longest prefix of ``candidate`` ending at a token end that validates as an IBAN."""
        for end in range(len(candidate), 14, -1):
            after = text[start + end : start + end + 1]
            if candidate[end - 1] in " -" or after.isalnum():
                continue
            if self.validate_result(candidate[:end].upper()):
                return end
        return None

    def _result(self, start: int, end: int) -> RecognizerResult:
        return RecognizerResult(
            "IBAN_CODE",
            start,
            end,
            EntityRecognizer.MAX_SCORE,
            recognition_metadata={
                RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
            },
        )


class ChatPhoneRecognizer(PhoneRecognizer):
    """Phone numbers, minus the numbers a chat message itself says are something else.

    python-phonenumbers accepts any digit run that is a valid number somewhere, which in a shop's
    chat includes order numbers ("order 7711030261"), dates ("08.12.2025") and short ids.
    """

    def analyze(self, text, entities, nlp_artifacts=None):
        return [r for r in super().analyze(text, entities, nlp_artifacts) if plausible_phone(text, r.start, r.end)]


# A number right after one of these words is what the word says it is ("order 7711030261").
_NOT_A_PHONE_CUE = re.compile(
    r"\b(?:order|invoice|ticket|tracking|parcel|ref|reference|rma|sku|ean|item|article|id)\s*(?:no\.?|number|nr\.?)?\s*(?:is\s*)?[:#]?\s*$",
    re.IGNORECASE,
)
_DATE = re.compile(r"^\d{1,2}[./-]\d{1,2}[./-]\d{2,4}$|^\d{4}[./-]\d{1,2}[./-]\d{1,2}$")
# Subscriber numbers with an area code have at least 8 digits in every region configured by default.
_MIN_PHONE_DIGITS = 8


def plausible_phone(text: str, start: int, end: int) -> bool:
    span = text[start:end]
    if sum(ch.isdigit() for ch in span) < _MIN_PHONE_DIGITS or _DATE.match(span):
        return False
    if start > 0 and text[start - 1] in "-_/" and start > 1 and text[start - 2].isalnum():
        return False  # the tail of an id such as NWP-89527113
    return not _NOT_A_PHONE_CUE.search(text[max(0, start - 30) : start])
