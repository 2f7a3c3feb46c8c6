"""Generator of tests/data/pii_eval.jsonl: chat templates and value formats written by hand, filled at random.

    python tests/data/make_pii_eval.py                          # rewrites pii_eval.jsonl (seed 20261127)
    python tests/data/make_pii_eval.py --seed 7 --out /tmp/heldout.jsonl   # a fresh draw to check for overfitting

Card numbers are Luhn-valid and IBANs mod-97-valid by construction; phone numbers are random digits in
realistic national formats, *not* filtered by python-phonenumbers, so the benchmark does not grade the
scanner against its own notion of validity.
"""

import argparse
import json
import random
import string
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--seed", type=int, default=20261127)
ap.add_argument("--out", default=str(Path(__file__).with_name("pii_eval.jsonl")))
ARGS = ap.parse_args()
rng = random.Random(ARGS.seed)


def luhn_complete(prefix, length):
    digits = [int(c) for c in prefix] + [rng.randrange(10) for _ in range(length - len(prefix) - 1)]
    for check in range(10):
        ds = digits + [check]
        total = 0
        for i, d in enumerate(reversed(ds)):
            if i % 2 == 1:
                d *= 2
                d = d - 9 if d > 9 else d
            total += d
        if total % 10 == 0:
            return "".join(map(str, ds))


def card():
    kind = rng.choice(["visa", "visa", "mc", "mc2", "amex", "disc"])
    if kind == "visa":
        n = luhn_complete("4" + str(rng.randrange(100, 999)), 16)
    elif kind == "mc":
        n = luhn_complete(str(rng.randrange(51, 56)), 16)
    elif kind == "mc2":
        n = luhn_complete(str(rng.randrange(2221, 2721)), 16)
    elif kind == "disc":
        n = luhn_complete("6011", 16)
    else:
        n = luhn_complete(rng.choice(["34", "37"]), 15)
    style = rng.choice(["space", "space", "dash", "plain"])
    if len(n) == 15:
        groups = [n[:4], n[4:10], n[10:]]
    else:
        groups = [n[i : i + 4] for i in range(0, 16, 4)]
    return {"space": " ".join(groups), "dash": "-".join(groups), "plain": n}[style]


IBAN_BBAN = {  # country: structure (n digits, a upper letters, c alnum)
    "DE": "18n",
    "GB": "4a14n",
    "FR": "10n11n2n",
    "NL": "4a10n",
    "ES": "20n",
    "IT": "1a10n12n",
    "BE": "12n",
    "IE": "4a14n",
    "AT": "16n",
    "CH": "17n",
    "PL": "24n",
}


def bban(spec):
    import re

    out = ""
    for count, kind in re.findall(r"(\d+)([nac])", spec):
        pool = (
            string.digits
            if kind == "n"
            else string.ascii_uppercase
            if kind == "a"
            else string.digits + string.ascii_uppercase
        )
        out += "".join(rng.choice(pool) for _ in range(int(count)))
    return out


def iban():
    country = rng.choice(list(IBAN_BBAN))
    b = bban(IBAN_BBAN[country])
    num = "".join(str(int(c, 36)) for c in b + country + "00")
    check = 98 - int(num) % 97
    code = f"{country}{check:02d}{b}"
    style = rng.choice(["grouped", "grouped", "plain", "lower"])
    if style == "grouped":
        return " ".join(code[i : i + 4] for i in range(0, len(code), 4))
    if style == "lower":
        return code.lower()
    return code


def d(n):
    return "".join(str(rng.randrange(10)) for _ in range(n))


def phone():
    area = rng.choice(["212", "415", "312", "646", "917", "305", "206", "617", "713", "404", "503", "720"])
    exch = str(rng.randrange(200, 999))
    line = d(4)
    forms = [
        lambda: f"({area}) {exch}-{line}",
        lambda: f"{area}-{exch}-{line}",
        lambda: f"+1 {area} {exch} {line}",
        lambda: f"{area}.{exch}.{line}",
        lambda: f"{area}{exch}{line}",
        lambda: f"+1-{area}-{exch}-{line}",
        lambda: f"07{rng.randrange(400, 999)} {d(6)}",
        lambda: f"+44 7{rng.randrange(400, 999)} {d(6)}",
        lambda: f"+44 20 7{d(3)} {d(4)}",
        lambda: f"020 7{d(3)} {d(4)}",
        lambda: f"+49 15{rng.choice('1279')} {d(8)}",
        lambda: f"0151 {d(4)} {d(4)}",
        lambda: f"030 {rng.randrange(2, 9)}{d(7)}",
        lambda: "06 " + " ".join(d(2) for _ in range(4)),
        lambda: "+33 6 " + " ".join(d(2) for _ in range(4)),
        lambda: f"06-{rng.randrange(1, 9)}{d(7)}",
        lambda: f"+31 6 {rng.randrange(1, 9)}{d(3)} {d(4)}",
        lambda: f"+34 6{d(2)} {d(3)} {d(3)}",
        lambda: f"+39 3{d(2)} {d(3)} {d(4)}",
        lambda: f"087 {d(3)} {d(4)}",
        lambda: f"+353 87 {d(3)} {d(4)}",
        lambda: f"04{d(2)} {d(3)} {d(3)}",
        lambda: f"+61 4{d(2)} {d(3)} {d(3)}",
        lambda: f"+91 9{d(4)} {d(5)}",
        lambda: f"+41 79 {d(3)} {d(2)} {d(2)}",
    ]
    return rng.choice(forms)()


FIRST = [
    "jane",
    "john",
    "maria",
    "ahmed",
    "li",
    "sophie",
    "tom",
    "anna",
    "rahul",
    "pierre",
    "kasia",
    "lucas",
    "emma",
    "diego",
    "yuki",
    "olga",
]
LAST = [
    "doe",
    "smith",
    "garcia",
    "khan",
    "wei",
    "martin",
    "obrien",
    "muller",
    "sharma",
    "dupont",
    "nowak",
    "silva",
    "jones",
    "lopez",
    "tanaka",
    "ivanova",
]
DOMAINS = [
    "gmail.com",
    "outlook.com",
    "yahoo.co.uk",
    "hotmail.com",
    "web.de",
    "orange.fr",
    "proton.me",
    "icloud.com",
    "company.ie",
    "mail.northwind-shop.com",
    "wp.pl",
    "empresa.es",
    "uni-heidelberg.de",
    "btinternet.com",
    "gmx.net",
    "example.org",
]


def email():
    f, l = rng.choice(FIRST), rng.choice(LAST)  # noqa: E741 - short names keep the templates readable
    local = rng.choice(
        [
            f"{f}.{l}",
            f"{f}{l}{rng.randrange(1, 99)}",
            f"{f[0]}.{l}",
            f"{f}_{l}",
            f"{f}+orders",
            f"{l}.{f}",
            f"{f}-{l}",
            f"{f}{rng.randrange(1970, 2005)}",
        ]
    )
    e = f"{local}@{rng.choice(DOMAINS)}"
    return e.upper() if rng.random() < 0.1 else e


def ip():
    if rng.random() < 0.25:
        return f"2001:db8:{rng.randrange(16**3):x}::{rng.randrange(16**4):x}:{rng.randrange(16**4):x}"
    return ".".join(
        str(x)
        for x in [
            rng.choice([81, 92, 178, 203, 10, 172, 192, 86]),
            rng.randrange(256),
            rng.randrange(256),
            rng.randrange(1, 255),
        ]
    )


def ssn():
    return f"{rng.randrange(101, 665)}-{rng.randrange(10, 99)}-{rng.randrange(1000, 9999)}"


T = {
    "EMAIL": [
        "my email is {}",
        "Please send the invoice to {} thanks",
        "can you update my email to {}?",
        "I never got the confirmation at {}",
        "contact me at {} if there is a problem",
        "{} is the address on my account",
        "hi, its {} , i cant log in",
        "Email: {}",
        "I changed my email from {} to {} last week",
        "the reset link isn't arriving at {}.",
        "pls reply to {} not my old one",
        "Account under {}, order hasn't shipped",
        "send the return label to {} please!",
        "why do you keep emailing {} with promotions",
        "i used {} when i signed up",
        "my wife's email is {} can she pick up the parcel",
        "(account email: {})",
        "Is {} still subscribed to the newsletter?",
        "unsubscribe {} from all marketing please",
        "login is {} but the password fails",
    ],
    "CARD": [
        "my card number is {}",
        "I was charged twice on card {}",
        "can you remove the card {} from my account",
        "Card: {} exp 09/27",
        "please refund to {} not store credit",
        "the payment with {} got declined again",
        "i want to pay with my other card, {}",
        "Visa {} keeps getting rejected at checkout",
        "here is the card {} cvv I won't share",
        "{} is the card I used for order 48213377",
        "why was {} charged 49.99?",
        "the new card is {}, update it please",
        "mastercard {} expired, use the new one",
        "I typed {} but it says invalid",
        "pay my balance with {}",
    ],
    "IBAN": [
        "my IBAN is {}",
        "please refund to IBAN {}",
        "bank account {} for the refund",
        "IBAN: {} (Sparkasse)",
        "send the money to {} please",
        "can you wire the refund to {}?",
        "I gave you {} as my account but the refund went elsewhere",
        "the direct debit should use {}",
        "new bank details {}",
        "refund not received on {} after 10 days",
        "iban {} name on account same as order",
    ],
    "PHONE": [
        "my number is {}",
        "call me on {}",
        "you can reach me at {} after 5pm",
        "phone: {}",
        "the courier should call {} when he arrives",
        "text me at {} when it ships",
        "please update my phone number to {}",
        "my mobile changed to {}",
        "I tried calling {} but nobody answered",
        "{} is my husband's number, he'll be home",
        "the SMS code never arrives on {}",
        "contact number {} for delivery",
        "ring {} if the door is locked",
        "cell {}",
        "can someone call me back on {}?",
        "the delivery guy called me from {} is that you?",
        "I got a text from {} claiming to be you, is it legit?",
        "my number {} is on the order, why no updates",
        "plz call {} asap",
    ],
    "IP": [
        "my IP address is {} and your site blocks me",
        "I get error 403 from IP {}",
        "logged in from {} which isn't me!",
        "you blocked {} by mistake",
        "the login alert said {}, was that my account being hacked?",
    ],
    "SSN": ["my SSN is {} for the credit check", "social security number {}", "do you need {} for store financing?"],
}
MULTI = [
    ("my email is {} and my phone is {}", ["EMAIL", "PHONE"]),
    ("card {} , email {}", ["CARD", "EMAIL"]),
    ("refund to {} or call me at {}", ["IBAN", "PHONE"]),
    ("name on card jane, card number {}, phone {}", ["CARD", "PHONE"]),
    ("email {} / iban {}", ["EMAIL", "IBAN"]),
    ("{} or {}, whichever you prefer", ["EMAIL", "PHONE"]),
]
GEN = {"EMAIL": email, "CARD": card, "IBAN": iban, "PHONE": phone, "IP": ip, "SSN": ssn}
COUNTS = {"EMAIL": 55, "CARD": 50, "IBAN": 40, "PHONE": 70, "IP": 10, "SSN": 6}

rows = []


def fill(tmpl, types):
    vals = [GEN[t]() for t in types]
    return {"text": tmpl.format(*vals), "pii": [{"type": t, "value": v} for t, v in zip(types, vals)]}


for t, n in COUNTS.items():
    for i in range(n):
        tmpl = T[t][i % len(T[t])]
        rows.append(fill(tmpl, [t] * tmpl.count("{}")))
for i in range(24):
    tmpl, types = MULTI[i % len(MULTI)]
    rows.append(fill(tmpl, types))


def order():
    return rng.choice(
        [f"#{d(8)}", f"NW-{d(8)}", f"NW-2024-{d(5)}", f"{d(8)}", f"order {d(4)} {d(4)}", f"{d(3)}-{d(7)}", f"{d(10)}"]
    )


def amount():
    return rng.choice(
        [
            f"${rng.randrange(5, 3000)}.{d(2)}",
            f"€{rng.randrange(5, 999)}",
            f"{rng.randrange(1, 9)}.{d(3)},00 EUR",
            f"£{rng.randrange(5, 500)}",
            f"{rng.randrange(1000, 9999)} euros",
            f"USD {rng.randrange(100, 5000)}",
        ]
    )


def date():
    return rng.choice(
        [
            f"{rng.randrange(1, 13):02d}/{rng.randrange(1, 29):02d}/2024",
            f"2024-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
            f"{rng.randrange(1, 29):02d}.{rng.randrange(1, 13):02d}.2025",
            f"March {rng.randrange(1, 29)}th",
            f"{rng.randrange(1, 29)} Nov 2024 at {rng.randrange(8, 20)}:{d(2)}",
        ]
    )


def tracking():
    return rng.choice(
        [f"1Z{d(3)}AA1{d(10)}", f"9400 {d(4)} {d(4)} {d(4)} {d(4)} {d(2)}", f"JD{d(18)}", f"TBA{d(12)}", f"{d(12)}"]
    )


def ean():
    return rng.choice(["4", "5", "0", "8"]) + d(12)


NEG = [
    ("where is my order {}?", order),
    ("order {} still says processing", order),
    ("I want to cancel order {}", order),
    ("my order number is {} and it arrived damaged", order),
    ("refund for {} please", order),
    ("can you check on {} for me", order),
    ("I paid {} but only got half the items", amount),
    ("why was I charged {} for shipping", amount),
    ("the refund of {} hasn't arrived", amount),
    ("it was {} last week and now it's more", amount),
    ("I ordered on {} and still nothing", date),
    ("delivery was promised for {}", date),
    ("my subscription renews on {}, cancel before that", date),
    ("the parcel tracking {} hasn't moved in days", tracking),
    ("tracking number {} shows delivered but it's not here", tracking),
    ("is the product with barcode {} in stock?", ean),
    ("EAN {} is what's on the box", ean),
    ("card ending in {} was charged twice", lambda: d(4)),
    ("the last four digits are {}", lambda: d(4)),
    (
        "my postcode is {} can you deliver there",
        lambda: rng.choice(["SW1A 1AA", "90210", "10115", "75008", "D02 X285", "1012 AB", "2000"]),
    ),
    ("I need {} units of the oak shelf", lambda: str(rng.randrange(2, 40))),
    ("invoice {} is wrong", lambda: f"INV-2024-{d(5)}"),
    ("the app version {} keeps crashing", lambda: rng.choice(["17.4.1", "3.12.0", "2.0.15", "5.1"])),
    ("coupon code {} doesn't work", lambda: rng.choice(["SAVE20", "WELCOME10", "BF2024", "NW-SPRING-15"])),
    ("model number {} is out of stock", lambda: f"KX-{d(4)}-{rng.choice('ABCD')}"),
    ("ticket {} was closed without an answer", lambda: f"#{d(6)}"),
    ("I've waited {} minutes on hold", lambda: str(rng.randrange(10, 120))),
    ("the size is {} cm, does it fit", lambda: f"{rng.randrange(40, 220)} x {rng.randrange(40, 220)}"),
    ("return authorisation {} please process it", lambda: f"RMA{d(7)}"),
    ("gift card {} shows zero balance", lambda: f"{rng.choice('ABCDEFGH')}{d(3)}-{d(4)}-{rng.choice('XYZ')}{d(3)}"),
    ("customer number {} here, where's my refund", lambda: f"C{d(7)}"),
    ("my loyalty id is {}", lambda: f"NWP-{d(6)}"),
]
PLAIN = [
    "where is my parcel",
    "I want to return the lamp, it's broken",
    "how do I change my delivery address",
    "can I pay with paypal",
    "my promo code isn't working",
    "cancel my northwind plus membership please",
    "the box arrived crushed",
    "is the teak bench back in stock",
    "I forgot my password",
    "my account is locked after 3 tries",
    "do you ship to Canada?",
    "how long do refunds take",
    "the discount wasn't applied to the sale items",
    "I received the wrong colour",
    "one of the chairs is missing",
    "how do I update my card details",
    "can I change my email address",
    "what's your returns policy",
    "talk to a human please",
    "this bot is useless",
    "I'd like to speak to an agent",
    "thanks, that solved it",
    "the tracking link doesn't work",
    "why is shipping so expensive",
    "can I get it delivered on Saturday",
    "I was charged twice for the same order",
    "do you price match",
    "my refund is less than I paid",
    "the website keeps logging me out",
    "how do I apply a gift card",
    "is there a student discount",
    "can you split my order into two deliveries",
    "I moved, please send it to my new place",
    "my password reset link expired",
    "the sofa leg snapped on day one",
    "where can I enter my coupon",
    "when will the rug be restocked",
    "I never received the confirmation email",
    "please call me about my complaint",
    "send me my invoice by email",
    "the courier says he'll call before delivery",
    "give me my money back",
    "my bank says the refund was never issued",
    "can I pay by bank transfer?",
]
for i in range(105):
    tmpl, gen = NEG[i % len(NEG)]
    rows.append({"text": tmpl.format(gen()), "pii": []})
for s in PLAIN:
    rows.append({"text": s, "pii": []})
rng.shuffle(rows)
with open(ARGS.out, "w") as fh:
    for r in rows:
        fh.write(json.dumps(r, ensure_ascii=False) + "\n")
print(len(rows), sum(1 for r in rows if r["pii"]))
