"""PII scanner/redactor: typed placeholders, Luhn and mod-97 checks, tricky negatives, the recall targets."""

from __future__ import annotations

import socket

import pytest

from data_checks.pii import Scanner, _build_engine, default_scanner, redact
from data_checks.pii_benchmark import EVAL_SET, RECALL_TARGETS, read_eval_set, score
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
