"""Synthetic chat traffic for ``scripts/synthetic_window.py``: who asks what, when, what the simulated
model answers, and the feedback that follows.

Texts are the sample data's messages (``model/sample_data/support.csv``) varied as real traffic
varies, so most are distinct: order, tracking and invoice numbers and amounts with fresh digits,
products and dates swapped for others of their type, greetings and sign-offs, a customer's name,
typos (swapped, dropped, doubled and neighbouring keys), case; about 1% carry an email, a phone or a
card number, which the collector's redaction replaces before the store. About 5% ask for what the
model was never taught (gift cards, loyalty points, ...): low confidence, fallbacks, the review
queue's clusters. The served model is simulated: right about 88% of the time on known intents,
with a confidence drawn to match, falling back under 0.5, predicting the message's entities.
The same ``WindowSpec`` (seed included) gives the same calls.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from model.core.config import RESPONSE_CATALOG, SAMPLE_DATA
from model.serve.catalog import ResponseCatalog

FRONT_END = "chat-frontend"  # the feedback events' ce-source
INFERENCE_SERVICE = "support-intent"
VERSIONS = {"14": "stable", "15": "canary"}  # model version -> the arm the collector attributes it to
CANARY_DAYS, CANARY_SHARE = 7.0, 0.1  # the canary serves 10% of the last week

PREFIXES = ["hi ", "hello, ", "hey ", "hi there! ", "good morning, ", "hello. ", "quick question - ", "excuse me, "]
SUFFIXES = [" thanks", " thx", " please", " asap", "!!", "?", " :(", ". thank you!", " pls help", "??", " ty"]
NAME_INTROS = ["this is {name}, ", "{name} here. ", "hi, {name} speaking - "]
NAME_OUTROS = [" - {name}", " regards, {name}", " ({name})"]
FIRST_NAMES = ["Maria", "John", "Aisha", "Wei", "Lars", "Sofia", "Kwame", "Priya", "Tom", "Elena", "Jorge", "Yuki"]
LAST_NAMES = ["smith", "garcia", "okafor", "chen", "berg", "rossi", "mensah", "patel", "murphy", "novak"]
MAIL_DOMAINS = ["gmail.com", "outlook.com", "yahoo.co.uk", "proton.me", "web.de", "example.org"]
# how a customer pastes personal data into a support chat; the collector redacts it before the store
PII_PHRASES = [
    " my email is {email}",
    " you can reach me at {email}",
    " call me on {phone}",
    " my number is {phone}",
    " the card {card} was charged twice",
]
PHONES = ["+44 7911 {a}{b}", "+1 415 {a3} {b4}", "+49 151 {a}{b}", "0{a}{b}", "+33 6 {a2} {b2} {c2} {d2}"]
# card-shaped prefixes; half the numbers get their Luhn check digit (a real card's), the rest a random one
CARD_PREFIXES = ["4111", "4539", "5500", "5105"]
# what the model was never taught: its answers are unsure, and the review queue should cluster them
UNSEEN = {
    "gift_card": [
        "can I pay with a gift card",
        "my gift card balance is wrong",
        "how do I redeem a gift card online",
        "do gift cards expire",
        "gift card not accepted at checkout",
        "can i buy a gift card for a friend",
    ],
    "loyalty_points": [
        "how many loyalty points do I have",
        "my points did not show up after my last order",
        "can I use loyalty points to pay",
        "when do my reward points expire",
        "points missing from my account",
    ],
    "store_hours": [
        "what time does the store open on sunday",
        "are you open on public holidays",
        "is the city centre shop open late",
        "store opening hours please",
    ],
    "price_match": [
        "do you price match",
        "I saw the same sofa cheaper elsewhere, can you match it",
        "will you refund the difference if the price drops",
        "price dropped a day after I bought it",
    ],
    "assembly_service": [
        "can someone assemble the wardrobe for me",
        "do you offer furniture assembly",
        "how much is the assembly service",
        "book an assembly appointment",
    ],
}
NEIGHBOURS = dict(zip("qwertyuiopasdfghjklzxcvbnm", "wqrtyuiopoaafghjkllzxcvbnn"))
WORD = re.compile(r"[A-Za-z]{4,}")


def luhn_digit(body: str) -> str:
    """The check digit that makes ``body`` + it pass the Luhn check, as a real card number does."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str(-total % 10)


@dataclass
class WindowSpec:
    requests: int = 1_000_000
    days: float = 30.0
    end: datetime = field(default_factory=lambda: datetime.now(UTC).replace(second=0, microsecond=0))
    seed: int = 0

    @property
    def start(self) -> datetime:
        return self.end - timedelta(days=self.days)


@dataclass
class Call:
    """One logged call: what the client sent, what the model answered (``None``: no answer), when."""

    request_id: str
    conversation_id: str
    protocol: str  # "v1" or "v2"
    texts: list[str]  # as the user typed them (personal data included: the collector redacts)
    predictions: list[dict] | None  # V1 prediction objects, one per text
    asked: datetime
    answered: datetime | None
    version: str


@dataclass
class Feedback:
    event_id: str
    at: datetime
    kind: str
    request_id: str
    conversation_id: str
    comment: str = ""


@dataclass
class Seed:
    segments: list[tuple[str, str | None]]  # (text, entity type or None)
    intent: str


def load_seeds(path: Path = SAMPLE_DATA) -> tuple[list[Seed], dict[str, list[str]], list[str]]:
    """The sample data's messages cut at their entity spans, the values seen per entity type, and the intents."""
    frame = pd.read_csv(path, keep_default_na=False)
    seeds, values = [], {}
    for text, intent, cell in zip(frame["text"], frame["intent"], frame["entities"]):
        spans = sorted(json.loads(cell or "[]"), key=lambda s: s["start"])
        segments, at = [], 0
        for s in spans:
            segments += [(text[at : s["start"]], None), (text[s["start"] : s["end"]], s["type"])]
            values.setdefault(s["type"], []).append(text[s["start"] : s["end"]])
            at = s["end"]
        segments.append((text[at:], None))
        seeds.append(Seed([(t, k) for t, k in segments if t], intent))
    for name, templates in UNSEEN.items():
        seeds += [Seed([(t, None)], name) for t in templates]
    return seeds, values, sorted(set(frame["intent"]))


class Traffic:
    """Draws calls and feedback; one instance per window (its random state is the window's)."""

    def __init__(self, spec: WindowSpec):
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.seeds, self.values, intents = load_seeds()
        self.known = [i for i in intents if i != "oos"]
        self.seen = [s for s in self.seeds if s.intent not in UNSEEN]
        self.unseen = [s for s in self.seeds if s.intent in UNSEEN]
        self.catalog = ResponseCatalog.load(RESPONSE_CATALOG)

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    # ---- texts ----------------------------------------------------------------------------------

    def _digits(self, value: str) -> str:
        return re.sub(r"\d", lambda _: str(self.rng.randrange(10)), value)

    def _value(self, kind: str, value: str) -> str:
        if kind in ("product", "date"):
            return self.rng.choice(self.values[kind])
        return self._digits(value)

    def _typo(self, text: str) -> str:
        words = list(WORD.finditer(text))
        if not words:
            return text
        m = self.rng.choice(words)
        w, i = m.group(), self.rng.randrange(1, len(m.group()) - 1)
        op = self.rng.random()
        if op < 0.3:
            w = w[: i - 1] + w[i] + w[i - 1] + w[i + 1 :]
        elif op < 0.55:
            w = w[:i] + w[i + 1 :]
        elif op < 0.8:
            w = w[:i] + w[i] + w[i:]
        else:
            w = w[:i] + NEIGHBOURS.get(w[i].lower(), w[i]) + w[i + 1 :]
        return text[: m.start()] + w + text[m.end() :]

    def _pii(self) -> str:
        r = self.rng
        phrase = r.choice(PII_PHRASES)
        first, last = r.choice(FIRST_NAMES).lower(), r.choice(LAST_NAMES)
        email = f"{first}.{last}{r.randrange(100)}@{r.choice(MAIL_DOMAINS)}"
        digits = {k: "".join(str(r.randrange(10)) for _ in range(n)) for k, n in (("a", 4), ("b", 6))}
        digits |= {"a3": f"{r.randrange(200, 999)}", "b4": f"{r.randrange(1000, 9999)}"}
        digits |= {k: f"{r.randrange(100):02d}" for k in ("a2", "b2", "c2", "d2")}
        phone = r.choice(PHONES).format(**digits)
        body = r.choice(CARD_PREFIXES) + "".join(str(r.randrange(10)) for _ in range(11))
        digits16 = body + (luhn_digit(body) if r.random() < 0.5 else str(r.randrange(10)))
        card = " ".join(digits16[i : i + 4] for i in range(0, 16, 4))
        return phrase.format(email=email, phone=phone, card=card)

    def message(self) -> tuple[str, str, list[dict]]:
        """(text as typed, true intent, entity spans on it)."""
        r = self.rng
        seed = r.choice(self.unseen) if r.random() < 0.05 else r.choice(self.seen)
        segments = [(self._value(k, t) if k else t, k) for t, k in seed.segments]
        lower, upper = r.random() < 0.2, r.random() < 0.02
        if r.random() < 0.35:  # typos, in the words around the entities
            plain = [i for i, (_, k) in enumerate(segments) if k is None]
            for _ in range(1 + (r.random() < 0.25)):
                i = r.choice(plain)
                segments[i] = (self._typo(segments[i][0]), None)
        head = r.choice(PREFIXES) if r.random() < 0.3 else ""
        if r.random() < 0.05:
            head = r.choice(NAME_INTROS).format(name=r.choice(FIRST_NAMES))
        tail = r.choice(SUFFIXES) if r.random() < 0.3 else ""
        if r.random() < 0.03:
            tail += r.choice(NAME_OUTROS).format(name=r.choice(FIRST_NAMES))
        if r.random() < 0.01:
            tail += self._pii()
        case = str.upper if upper else str.lower if lower else str
        text, spans = case(head), []
        for value, kind in segments:
            value = case(value)  # per piece: a case change may change a length ("ß" -> "SS")
            if kind:
                spans.append({"type": kind, "start": len(text), "end": len(text) + len(value)})
            text += value
        return text + case(tail), seed.intent, spans

    # ---- the served model -----------------------------------------------------------------------

    def prediction(self, text: str, intent: str, spans: list[dict], version: str, request_id: str) -> dict:
        r = self.rng
        if intent in UNSEEN:
            predicted, confidence = r.choice(self.known), r.betavariate(2, 4)
        elif r.random() < 0.88:
            predicted, confidence = intent, r.betavariate(9, 1.3)
        else:
            predicted, confidence = r.choice(self.known), r.betavariate(3, 3)
        if intent == "oos":
            predicted, confidence = r.choice(self.known), r.betavariate(2, 3)
        found = [s for s in spans if r.random() < 0.92]  # the entity head misses a few
        entities = [
            {
                "type": s["type"],
                "text": text[s["start"] : s["end"]],
                "start": s["start"],
                "end": s["end"],
                "confidence": round(r.uniform(0.7, 0.999), 6),
            }
            for s in found
        ]
        fallback = confidence < 0.5
        return {
            "intent": predicted,
            "confidence": round(confidence, 6),
            "fallback": fallback,
            "reply": self.catalog.fallback if fallback else self.catalog.replies[predicted],
            "entities": entities,
            "model_version": version,
            "request_id": request_id,
        }

    # ---- conversations --------------------------------------------------------------------------

    def conversations(self) -> Iterator[tuple[list[Call], list[Feedback]]]:
        """One conversation at a time, until ``spec.requests`` texts were asked."""
        r, spec = self.rng, self.spec
        span_s = spec.days * 86400 - 3600  # the last hour stays free: every turn and feedback lands in the window
        canary_from = span_s - CANARY_DAYS * 86400
        asked = 0
        while asked < spec.requests:
            conversation = f"conv-{self.uid()[:18]}"
            at = spec.start + timedelta(seconds=r.uniform(0, span_s))
            offset = (at - spec.start).total_seconds()
            version = "15" if offset > canary_from and r.random() < CANARY_SHARE else "14"
            calls, feedback, truths = [], [], []
            for _ in range(min(1 + int(r.expovariate(0.8)), 6)):
                n = 2 if r.random() < 0.003 else 1
                n = min(n, spec.requests - asked)
                drawn = [self.message() for _ in range(n)]
                rid = self.uid()
                answered = None if r.random() < 0.002 else at + timedelta(milliseconds=r.lognormvariate(3.4, 0.4))
                preds = [self.prediction(t, i, s, version, rid) for t, i, s in drawn] if answered else None
                protocol = "v2" if r.random() < 0.05 else "v1"
                calls.append(Call(rid, conversation, protocol, [t for t, _, _ in drawn], preds, at, answered, version))
                truths.append([i for _, i, _ in drawn])
                asked += n
                if preds:
                    feedback += self._thumbs(calls[-1], truths[-1])
                at += timedelta(seconds=r.uniform(15, 120))
                if asked >= spec.requests:
                    break
            feedback += self._outcome(calls, truths, at)
            yield calls, feedback

    def _thumbs(self, call: Call, truths: list[str]) -> list[Feedback]:
        r, out = self.rng, []
        for pred, truth in zip(call.predictions, truths):
            right = pred["intent"] == truth and not pred["fallback"]
            p_up, p_down = (0.15, 0.02) if right else (0.0, 0.0 if pred["fallback"] else 0.45)
            draw = r.random()
            kind = "thumbs_up" if draw < p_up else "thumbs_down" if draw < p_up + p_down else ""
            if kind:
                when = call.answered + timedelta(seconds=r.uniform(2, 40))
                comment = r.choice(["", "", "not what I asked", "wrong answer"]) if kind == "thumbs_down" else ""
                out.append(Feedback(self.uid(), when, kind, call.request_id, "", comment))
        return out

    def _outcome(self, calls: list[Call], truths: list[list[str]], after: datetime) -> list[Feedback]:
        """What the front end reports of the conversation as a whole, naming only the conversation."""
        r = self.rng
        answered = [(c, t) for c, t in zip(calls, truths) if c.predictions]
        if not answered:
            return []
        last, truth = answered[-1]
        fell_back = any(p["fallback"] for c, _ in answered for p in c.predictions)
        right = last.predictions[-1]["intent"] == truth[-1] and not last.predictions[-1]["fallback"]
        draw = r.random()
        kind = ""
        if draw < (0.35 if fell_back else 0.03):
            kind = "escalated"
        elif draw < 0.4:
            kind = "resolved" if right and r.random() < 0.75 else ("abandoned" if not right else "")
        if not kind:
            return []
        when = min(after, last.answered + timedelta(seconds=90)) + timedelta(seconds=r.uniform(1, 20))
        return [Feedback(self.uid(), when, kind, "", last.conversation_id)]
