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

import phonenumbers
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
from presidio_analyzer.predefined_recognizers.generic.iban_patterns import regex_per_country

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

    It also adds the numbers the message itself presents as a phone number ("call me on ...",
    "... is my mobile") that are merely *possible* (right length) for a region, not *valid*
    (assigned, per python-phonenumbers' metadata): a new mobile range or an area code missing
    from the metadata is still a person's number, so redaction errs towards privacy there. Without
    such a cue the valid-only rule stays: a possible-only digit run is as likely an id.
    """

    def analyze(self, text, entities, nlp_artifacts=None):
        results = super().analyze(text, entities, nlp_artifacts)
        if _ANY_PHONE_CUE.search(text):
            results += self._cued_possible(text)
        plausible = [r for r in results if plausible_phone(text, r.start, r.end)]
        return EntityRecognizer.remove_duplicates(plausible)

    def _cued_possible(self, text: str) -> list[RecognizerResult]:
        results = []
        for region in self.supported_regions:
            for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.POSSIBLE):
                if phone_cued(text, match.start, match.end):
                    results.append(self._get_recognizer_result(match, text, region, None))
        return results


# Words that name a number as something other than a phone number ("order 7711030261", "the
# number on the receipt is ...", "... the tracking number?"); a phone cue never reaches over them.
_NOT_PHONE_WORD = (
    r"\b(?:order|invoice|ticket|tracking|parcel|shipment|package|ref|reference|rma|sku|ean|item|article|id"
    r"|account|customer|card|member|case|serial|imei|model|code|pin|postcode|zip|voucher|coupon|barcode"
    r"|booking|confirmation|transaction|payment|receipt)\b"
)
_PHONE_NOUN = r"(?:phone|mobile|mob|cell|cellphone|telephone|tel|landline|whatsapp|fax)"
_PHONE_VERB = r"(?:contact|call|ring|text|txt|sms|reach|reachable|dial)"
# "number" says phone only when no id word comes first ("order number" is caught by the look-behind).
_PHONE_WORD = rf"(?:{_PHONE_NOUN}|{_PHONE_VERB}|number)"
# Where a person says they can be phoned: "get me on", "I'm on", "best at".
_PHONE_IDIOM = r"(?:me|i'?m|i\s+am|best)\s+(?:on|at|under)"
# A phrase right before a number that presents it as a phone number: a phone word, then at most a
# few words with no digit and none of the words above, then a connector: "call me on", "reach me
# at", "phone:", "mobile no.", "my new number is", "WhatsApp only:", "number's changed, it's now".
_PHONE_CUE_BEFORE = regex.compile(
    rf"(?:(?<!{_NOT_PHONE_WORD}\W*)\b{_PHONE_WORD}\b"
    rf"(?:(?:(?!{_NOT_PHONE_WORD})[^\d!?]){{0,30}}?(?:\b(?:is|was|are|now|on|at|via|under|to|me|us)\b|'s|[:=#.,-]))?"
    rf"|\b{_PHONE_IDIOM})\s*\(?\s*$",
    regex.IGNORECASE,
)
# A phrase right after a number that says it is one: "... is my mobile", "... (home)", "... as the
# delivery contact". Used with match(text, pos): anchored where the number ends.
_FILLER = rf"(?:(?!{_NOT_PHONE_WORD})[a-z]+(?:'s)?\s+){{0,2}}"
_PHONE_CUE_AFTER = regex.compile(
    rf"\s*(?:\(\s*(?:{_PHONE_NOUN}|home|work|office)\s*\)|[,-]?\s*(?:is|=|as)\s+(?:my|our|his|her|their|the|a)\s+"
    rf"{_FILLER}(?:{_PHONE_NOUN}\s+)?(?:number|contact|{_PHONE_NOUN})\b)",
    regex.IGNORECASE,
)
# Cheap test before the extra matcher pass: most messages name no phone at all.
_ANY_PHONE_CUE = regex.compile(rf"\b(?:{_PHONE_WORD}|{_PHONE_IDIOM})\b|\((?:home|work|office)\)", regex.IGNORECASE)
# A number an id word names: the word, then at most two of a few linking words, then punctuation
# ("order 77110", "order no. is #0395", "the number on the receipt is ...", "tracking code ...");
# or one right after it ("... the tracking number?"). The linking words are listed, not any word,
# so "my order hasn't come, 0612345678" still has its phone number redacted.
_NAMED_LINK = r"(?:no|nr|number|num|code|id|is|was|reads|says|of|on|the|my|your|our|for|from|with)"
_NAMED_BEFORE = regex.compile(rf"{_NOT_PHONE_WORD}(?:[\s.,:;-]+{_NAMED_LINK}\b){{0,2}}[\s:#.,=-]*$", regex.IGNORECASE)
_NAMED_AFTER = regex.compile(
    rf"\W*(?:(?:is|was)\s+)?(?:(?:the|my|your|our|an?)\s+)?{_NOT_PHONE_WORD}", regex.IGNORECASE
)
_CUE_WINDOW = 40


def phone_cued(text: str, start: int, end: int) -> bool:
    """Whether the message presents ``text[start:end]`` as a phone number, right before or after it."""
    # pos/endpos rather than a slice: the look-behind still sees a word the window would cut ("order")
    return bool(
        _PHONE_CUE_BEFORE.search(text, max(0, start - _CUE_WINDOW), start)
        or _PHONE_CUE_AFTER.match(text, end, end + _CUE_WINDOW)
    )


def named_otherwise(text: str, start: int, end: int) -> bool:
    """Whether the message names ``text[start:end]`` as an order, ticket, tracking number or the like."""
    return bool(
        _NAMED_BEFORE.search(text, max(0, start - _CUE_WINDOW), start)
        or _NAMED_AFTER.match(text, end, end + _CUE_WINDOW)
    )


_DATE = re.compile(r"^\d{1,2}[./-]\d{1,2}[./-]\d{2,4}$|^\d{4}[./-]\d{1,2}[./-]\d{1,2}$")
# Subscriber numbers with an area code have at least 8 digits in every region configured by default.
MIN_PHONE_DIGITS = 8


def plausible_phone(text: str, start: int, end: int) -> bool:
    span = text[start:end]
    if sum(ch.isdigit() for ch in span) < MIN_PHONE_DIGITS or _DATE.match(span):
        return False
    if start > 0 and text[start - 1] in "-_/" and start > 1 and text[start - 2].isalnum():
        return False  # the tail of an id such as NWP-89527113
    # A phone cue wins over an id word further off ("my mobile is ..., order 123"): privacy first.
    return phone_cued(text, start, end) or not named_otherwise(text, start, end)


# What a text must hold for each recognizer here to find anything in it, read off the recognizer: a
# text is analyzed for the entities it could hold only, and not at all when it could hold none
# (``Scanner.scan``): most chat messages ("where is order NW39182", "tracking TBA2308S1414, $56.58")
# can hold none. Phone numbers cost most (a python-phonenumbers pass per region). tests/data/test_pii.py
# checks that scanning so finds exactly what scanning for every entity finds, over the evaluation sets.
_MIN_CARD_DIGITS = 13  # Presidio's card pattern is 4+3+3+3 digits at least (no letter); the 2-series one 16
_SSN_DIGITS = 9  # every pattern of Presidio's UsSsnRecognizer is nine digits (no letter)
_IPV4_DOTS = 3  # a dotted quad (also inside the IPv6 forms ending in one)
_IPV6_COLONS = 6  # Presidio's IPv6 patterns: "::" (every shortened form), else 7 colons, or 6 before a dotted quad
_IBAN_COUNTRIES = frozenset(regex_per_country)  # IbanRecognizer.validate_result needs the country's format
_IBAN_START = re.compile(r"[A-Za-z]{2}[0-9]{2}")  # how AnyCaseIbanRecognizer.CANDIDATE starts: cheap to look for
# the entities found in digits alone (no letter but "x"), and the least digits of each in one stretch
_DIGIT_RUNS = (("PHONE_NUMBER", MIN_PHONE_DIGITS), ("CREDIT_CARD", _MIN_CARD_DIGITS), ("US_SSN", _SSN_DIGITS))
_LETTERS = re.compile(r"[^\W\d_]+")  # a run of letters (and numerals that are no decimal digit, such as "²")
# The only letters a phone number's match can hold. python-phonenumbers finds each candidate with
# phonenumbermatcher._PATTERN (v9; compiled UNICODE | IGNORECASE, as this is): an optional lead ("(",
# "+"), then blocks of decimal digits joined by at most 4 of phonenumberutil._VALID_PUNCTUATION (whose
# only letters are "x" and the katakana "ー"), then an optional extension (its labels, then digits:
# phonenumberutil._create_extn_pattern). It starts with a lead or a digit and ends with a digit or
# "#", so a run of letters in it is one of these whole. Presidio's phone results are such matches or
# parts of one.
_PHONE_LETTERS = re.compile(
    r"[xー]{1,4}|e?xt(?:ensi[oó])?n?|n|\uff45?\uff58\uff54\uff4e?|\uff58|доб|anexo|int|\uff49\uff4e\uff54", re.I
)


def _most_digits_together(text: str) -> int:
    """The most digits (``isdigit``, as ``plausible_phone`` counts) in one stretch of ``text`` between
    runs of letters that no phone number, card number or SSN can hold (``_PHONE_LETTERS``)."""
    most, start = 0, 0
    for run in _LETTERS.finditer(text):
        if not _PHONE_LETTERS.fullmatch(run.group()):
            most, start = max(most, sum(map(str.isdigit, text[start : run.start()]))), run.end()
    return max(most, sum(map(str.isdigit, text[start:])))


def candidate_entities(text: str) -> list[str]:
    """The Presidio entity types ``text`` could hold (a necessary condition per recognizer)."""
    out = ["EMAIL_ADDRESS"] if "@" in text else []
    digits = sum(map(str.isdigit, text))
    if digits >= MIN_PHONE_DIGITS:  # plausible_phone drops any phone number with fewer
        together = _most_digits_together(text)
        out += [kind for kind, least in _DIGIT_RUNS if together >= least]
    # the recognizer reports only these candidates, validated for their country's format (its first two letters)
    if digits >= 2 and _IBAN_START.search(text):
        if any(m.group()[:2].upper() in _IBAN_COUNTRIES for m in AnyCaseIbanRecognizer.CANDIDATE.finditer(text)):
            out.append("IBAN_CODE")
    if "::" in text or text.count(":") >= _IPV6_COLONS or (digits >= 4 and text.count(".") >= _IPV4_DOTS):
        out.append("IP_ADDRESS")
    return out
