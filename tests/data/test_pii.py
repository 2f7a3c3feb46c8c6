"""PII scanner/redactor: typed placeholders, Luhn and mod-97 checks, tricky negatives, the recall targets."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import phonenumbers
import pytest

from data_checks.pii import Scanner, _build_engine, default_scanner, redact
from data_checks.pii_benchmark import EVAL_SET, FRESH_EVAL_SET, KEEP_TARGETS, RECALL_TARGETS, read_eval_set, score
from model.core.config import PiiConfig
from model.core.errors import FlywheelError


@pytest.mark.parametrize(
    "text, expected",
    [
        ("my email is jane.doe+shop@gmail.com thanks", "my email is <EMAIL> thanks"),
        ("card 4111 1111 1111 1111 exp 12/27", "card <CARD> exp 12/27"),
        ("mc 2223-0031-2200-3222 please", "mc <CARD> please"),  # Mastercard 2-series, Luhn-valid
        ("amex 3782 822463 10005", "amex <CARD>"),
        ("IBAN DE89 3704 0044 0532 0130 00 please", "IBAN <IBAN> please"),
        ("iban de89370400440532013000 thx", "iban <IBAN> thx"),  # lower case
        ("iban AT61 1904 3002 3457 3201 name on account", "iban <IBAN> name on account"),  # stops at the checksum
        ("call me on +44 7911 123456", "call me on <PHONE>"),
        ("call me at (415) 867-2231.", "call me at <PHONE>."),
        ("06 12 34 56 78 is my mobile", "<PHONE> is my mobile"),
        ("logged in from 81.2.69.142 not me", "logged in from <IP> not me"),
        ("email a@b.io or call +1 212 736 5000", "email <EMAIL> or call <PHONE>"),
    ],
)
def test_redacts_with_typed_placeholders(text, expected):
    redacted, findings = redact(text)
    assert redacted == expected
    assert findings and all(set(f.to_dict()) == {"entity", "start", "end", "score"} for f in findings)


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 keeps failing",  # fails the Luhn check: not a card number
        "IBAN DE89 3704 0044 0532 0130 01",  # fails mod-97
        "where is my order 7711030261?",  # the message says it is an order number
        "my order number is #03950490",
        "delivery was promised for 08.12.2025",
        "I paid $1,299.99 on 12/03/2024 at 10:45",
        "tracking 1Z999AA10123456784 shows delivered",
        "my loyalty id is NWP-89527113",
        "card ending in 4242 was charged twice",
        "it cost 4111 euros",
    ],
)
def test_leaves_transaction_details_alone(text):
    assert redact(text) == (text, [])


def test_findings_do_not_carry_the_personal_data():
    _, findings = redact("write to jane@example.org")
    assert "jane" not in repr(findings) and findings[0].entity == "EMAIL"
    assert (findings[0].start, findings[0].end) == (9, 25)


def test_redaction_is_idempotent_and_leaves_nothing_behind():
    rows = read_eval_set(EVAL_SET)
    scanner = Scanner()
    for row in rows:
        once, _ = scanner.redact(row["text"])
        assert scanner.redact(once) == (once, []), row["text"]
    # every labelled value is gone from the redacted text (whatever type it was taken for)
    gone = sum(all(row["text"][s:e] not in scanner.redact(row["text"])[0] for _, s, e in row["spans"]) for row in rows)
    assert gone >= 0.97 * len(rows)


def test_recall_targets_met_on_the_labelled_chat_set():
    rows = read_eval_set(EVAL_SET)
    assert len(rows) >= 300 and sum(1 for r in rows if not r["spans"]) >= 100
    result = score(Scanner(), rows)
    for entity, target in RECALL_TARGETS.items():
        assert result["per_entity"][entity]["recall"] >= target, (entity, result["misses"])
        assert result["per_entity"][entity]["precision"] >= 0.9, (entity, result["false_alarms"])


def test_works_without_network(monkeypatch):
    """The email validator must not fetch the public suffix list (nothing is reachable in CI)."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    _build_engine.cache_clear()
    assert Scanner().redact("mail me at x.y@company.co.uk")[0] == "mail me at <EMAIL>"


def test_default_scanner_finds_personal_data_only_where_there_is_some():
    """What check-data's no-personal-data expectation asks of each text."""
    assert default_scanner().scan("my number is +49 151 23456789")
    assert not default_scanner().scan("where is my parcel")


def test_bad_eval_row_names_file_and_line(tmp_path):
    bad = tmp_path / "set.jsonl"
    bad.write_text(
        '{"text": "hi", "pii": []}\n{"text": "mail a@b.io", "pii": [{"type": "EMAIL", "value": "c@d.io"}]}\n'
    )
    with pytest.raises(FlywheelError, match=r"set.jsonl:2: .*c@d.io"):
        read_eval_set(bad)


# Possible (right length) but not valid (unassigned) for their region, per python-phonenumbers:
# unassigned US area codes, UK 076xx and 022, German 0165-0167, French 070x/072x/069x, Dutch
# 067x/069x and 014. National and international (+CC, 00CC) forms.
POSSIBLE_NOT_VALID = [
    ("US", "(237) 867-2231"),
    ("US", "238-555-0199"),
    ("US", "+1 384 262 0172"),
    ("GB", "07645 123456"),
    ("GB", "022 3456 7890"),
    ("GB", "+44 7631 234567"),
    ("GB", "0044 7683 112233"),
    ("DE", "0166 12345678"),
    ("DE", "0165/87654321"),
    ("DE", "+49 167 1234 5678"),
    ("DE", "0049 166 2345 6789"),
    ("FR", "07 01 23 45 67"),
    ("FR", "06 90 12 34 56"),
    ("FR", "+33 7 21 23 45 67"),
    ("FR", "0033 7 12 34 56 78"),
    ("NL", "06-71234567"),
    ("NL", "014 234 5678"),
    ("NL", "+31 69 123 4567"),
    ("NL", "0031 67 123 4567"),
]
CUES = [
    ("call me on {} thanks", "call me on <PHONE> thanks"),
    ("my number is {}", "my number is <PHONE>"),
    ("you can reach me at {} after 6", "you can reach me at <PHONE> after 6"),
    ("{} is my mobile", "<PHONE> is my mobile"),
]


def _parse(region: str, value: str):
    # a 00 prefix is the international prefix in Europe, not in the US (011)
    return phonenumbers.parse(value, "GB" if value.startswith("00") else region)


@pytest.mark.parametrize("region, value", POSSIBLE_NOT_VALID)
def test_possible_number_presented_as_a_phone_is_redacted(region, value):
    number = _parse(region, value)
    assert phonenumbers.is_possible_number(number) and not phonenumbers.is_valid_number(number)
    for template, expected in CUES:
        assert redact(template.format(value))[0] == expected, template.format(value)


@pytest.mark.parametrize(
    "value", [v for r, v in POSSIBLE_NOT_VALID if v.startswith(("+", "00")) or r == "DE" and v.startswith("01")]
)
def test_same_digits_without_a_cue_are_kept(value):
    """Without a cue the valid-only rule holds; these are valid in none of the configured regions."""
    assert not any(phonenumbers.is_valid_number(_parse(r, value)) for r in PiiConfig().phone_regions)
    for text in (f"I found {value} written on the box", f"order {value} is late", f"is {value} the tracking number?"):
        assert redact(text) == (text, []), text


@pytest.mark.parametrize(
    "text",
    [
        "call me about order 123456789",
        "text me when order 238-555-0199 ships",
        "my order number is 0166 12345678",
        "the number on the receipt is 384262017",
        "is 01661234567801 the tracking number?",
        "reach me regarding tracking 1Z999AA10123456784",
        "can you call me on 14.03.2025 instead?",
        "the call on 2025-03-14 was cut off",
        "ticket TKT-2231-88: please ring me",
        "contact reason: refund €1.299,00 for order 2025-118834",
        "I was quoted $1,234.56 on the phone",
    ],
)
def test_cue_words_do_not_take_transaction_details(text):
    assert redact(text) == (text, [])


def test_cue_reaches_its_own_number_only():
    text = "my number is +44 7631 234567, order 123456789 for $1,234.56 on 2025-03-14"
    assert redact(text)[0] == "my number is <PHONE>, order 123456789 for $1,234.56 on 2025-03-14"
    assert redact("call me on 0166 12345678 about ticket 48291734")[0] == "call me on <PHONE> about ticket 48291734"
    # an id word further off does not make a phone number something else
    assert redact("my order hasn't come, +44 7911 123456")[0] == "my order hasn't come, <PHONE>"


def test_fresh_set_is_reproducible_and_covers_what_it_claims(tmp_path):
    out = tmp_path / "fresh.jsonl"
    script = FRESH_EVAL_SET.with_name("make_pii_fresh_eval.py")
    subprocess.run([sys.executable, str(script), "--out", str(out)], check=True, capture_output=True)
    assert out.read_text() == FRESH_EVAL_SET.read_text(), "pii_fresh_eval.jsonl is not what its generator writes"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    phones = [p for r in rows for p in r["pii"]]
    for region in ("US", "GB", "DE", "FR", "NL"):
        possible = [p["value"] for p in phones if p["region"] == region and p["kind"] == "possible"]
        international = [v for v in possible if v.startswith(("+", "00"))]
        assert len(international) >= 8 and len(possible) - len(international) >= 8, region
        for value in possible:  # the corpus holds what it says: possible, not valid
            number = _parse(region, value)
            assert phonenumbers.is_possible_number(number) and not phonenumbers.is_valid_number(number), value
    kept = [k["type"] for r in rows for k in r["keep"]]
    assert all(kept.count(t) >= 40 for t in KEEP_TARGETS), {t: kept.count(t) for t in KEEP_TARGETS}


def test_phone_recall_and_keep_rates_on_the_fresh_set():
    """Issue 12: phones presented as such redacted, transaction details kept, on a set not tuned on."""
    result = score(Scanner(), read_eval_set(FRESH_EVAL_SET))
    assert result["per_entity"]["PHONE"]["labelled"] >= 200
    assert result["per_entity"]["PHONE"]["recall"] >= RECALL_TARGETS["PHONE"], result["misses"]
    for typ, target in KEEP_TARGETS.items():
        assert result["keep"][typ]["rate"] >= target, (typ, result["keep_failures"])
    assert result["targets_missed"] == []


# texts at the edges of the prefilter's conditions (pii_engine.candidate_entities): IPv6 without a digit,
# a bare dotted quad, digits other than ASCII ones, digit counts just under and at each threshold
PREFILTER_EDGES = [
    "connect from :: please",
    "my ip is fe80::1ff:fe23:4567:890a",
    "logged in from 1.2.3.4",
    "call me on ٠٦١٢٣٤٥٦٧٨",  # Arabic-Indic digits: python-phonenumbers reads them
    "call me on ０６１２３４５６７８",  # full-width digits
    "call me on 0612 3456",  # 8 digits
    "call me on 0612 345",  # 7 digits
    "ssn 078-05-1120 and 078 05 1120",
    "card 4111 111 111 111",  # 13 digits
    "write to a@b.co",
    "IBAN GB82 WEST 1234 5698 7654 32",
    "call me on 090ー1234ー5678",  # katakana prolonged sound mark: python-phonenumbers' punctuation
    "call 0612 34 x 56 78 or +1 212 736 5000 ext. 12",  # "x" joins blocks; an extension's label
    "office +44 20 7946 0958 extension 9, mobile 07911 123456 EXTN 4",
    "ring +33 1 23 45 67 89 anexo 12 or 0612345678 int 3",
    "tracking TBA2308S1414 and 1Z8V42E10398, refund $56.58 instead of $49.99",  # letters split the digits
    "refund to nl91 abna 0417 1643 00 or NL91ABNA0417164300 please",  # an IBAN country's prefix, any case
    "order NW12345 go out today?",  # an IBAN candidate of no IBAN country
    "from 2001:db8:85a3:0:0:8a2e:370:7334 and fe80::1 at 10:45:30",  # 7 colons, "::", a time
    "::ffff:192.0.2.128 and 64:ff9b:1:2:3:4:192.0.2.33",  # IPv6 forms ending in a dotted quad
]


def test_prefilter_finds_what_the_full_scan_finds():
    """The scanner analyzes a text only for the entities it could hold (pii_engine.candidate_entities):
    over both evaluation sets and the edges above, Presidio finds exactly what it finds looking for all."""
    scanner = Scanner()
    texts = [r["text"] for path in (EVAL_SET, FRESH_EVAL_SET) for r in read_eval_set(path)] + PREFILTER_EDGES
    found_any = 0
    for text in texts:
        full = scanner.engine.analyze(text, language="en", score_threshold=scanner.cfg.min_score)
        entities = scanner._candidates(text)  # analyze() given no entities would look for all
        narrow = entities and scanner.engine.analyze(text, "en", entities, score_threshold=scanner.cfg.min_score)
        key = lambda r: (r.entity_type, r.start, r.end, r.score)  # noqa: E731
        assert sorted(map(key, narrow)) == sorted(map(key, full)), text
        found_any += bool(full)
    assert found_any >= 500  # the sets hold personal data of every kind, not only negatives
    assert scanner._candidates("where is order NW39182? it said 2 days") == []  # most messages skip Presidio
    assert scanner._candidates("tracking TBA2308S1414, refund $56.58 instead of $49.99") == []
    assert scanner._candidates("Did order #NW12345 go out today? at 10:45 or so") == []


def test_prefilter_knows_every_letter_a_phone_number_can_hold():
    """pii_engine._PHONE_LETTERS keeps together the digits around any letter python-phonenumbers'
    matcher puts inside a number: its punctuation's letters (read from the installed library) and
    its extension labels."""
    import re

    from phonenumbers import phonenumberutil

    from data_checks.pii_engine import _PHONE_LETTERS

    punctuation = re.compile(f"[{phonenumberutil._VALID_PUNCTUATION}]", re.UNICODE | re.IGNORECASE)
    letters = [chr(c) for c in range(0x110000) if punctuation.fullmatch(chr(c)) and chr(c).isalpha()]
    assert letters and all(_PHONE_LETTERS.fullmatch(c * 4) for c in letters), letters
    labels = [
        "ext",
        "xt",
        "extn",
        "extension",
        "EXTENSIÓN",
        "extensio",
        "ｅｘｔ",
        "ｘｔｎ",
        "доб",
        "anexo",
        "x",
        "int",
        "ｉｎｔ",
    ]
    assert all(_PHONE_LETTERS.fullmatch(label) for label in labels)
