"""Planted personal data for the privacy tests and bench: values built by each number's own rules
(check digits computed here, not by the code under test), written the ways people write them,
and look-alikes that must be left alone. Seeded through the `random.Random` passed in.
"""

from __future__ import annotations

import random

_COUNTIES = ["110101", "310101", "440106", "510104", "330106", "420102", "320102", "500103", "650102"]
_ID_WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
MOBILE = ["130", "135", "138", "139", "150", "152", "158", "166", "176", "177", "180", "186", "188", "189", "199"]


def id_number(rng: random.Random) -> str:
    """A resident ID with a real county code, a real birth date and its ISO 7064 MOD 11-2 check digit."""
    base = (f"{rng.choice(_COUNTIES)}{rng.randrange(1940, 2012)}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}"
            f"{rng.randrange(1000):03d}")
    return base + "10X98765432"[sum(int(d) * w for d, w in zip(base, _ID_WEIGHTS)) % 11]


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    """`prefix` + random digits + the Luhn check digit, `length` digits in all."""
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, d in enumerate(reversed(body)):  # the check digit will sit right of these: double every other from here
        n = int(d) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return body + str((10 - total % 10) % 10)


def card_number(rng: random.Random) -> str:
    """UnionPay (16/19), Visa, Mastercard, Amex or Discover."""
    prefix, length = rng.choice([("62", 16), ("62", 19), ("4", 16), ("51", 16), ("55", 16), ("37", 15), ("6011", 16)])
    return luhn_complete(prefix + str(rng.randrange(10)), length, rng)


def grouped(digits: str, sep: str) -> str:
    return sep.join(digits[i:i + 4] for i in range(0, len(digits), 4))


def planted(rng: random.Random) -> tuple[str, str]:
    """(kind, value as written) in one of the ways people write it."""
    kind = rng.choice(["id_card", "mobile", "landline", "bank_card", "email", "ssn", "us_phone"])
    if kind == "id_card":
        return "id_card", id_number(rng)
    if kind == "mobile":
        n = rng.choice(MOBILE) + f"{rng.randrange(10**8):08d}"
        return "phone", rng.choice([n, f"+86 {n[:3]} {n[3:7]} {n[7:]}", f"{n[:3]}-{n[3:7]}-{n[7:]}", f"(+86){n}", f"0086-{n}"])
    if kind == "landline":
        area = rng.choice(["010", "021", "020", "0755", "0571", "028"])
        local = rng.choice("2345678") + f"{rng.randrange(10**7):07d}"
        return "phone", rng.choice([f"{area}-{local}", f"({area}){local}", f"{area} {local[:4]} {local[4:]}"])
    if kind == "bank_card":
        digits = card_number(rng)
        return "bank_card", rng.choice([digits, grouped(digits, " "), grouped(digits, "-")])
    if kind == "email":
        user = rng.choice(["zhang.wei", "li_na88", "wang-fang", "j.smith", "hr+jobs", "chen2023"])
        return "email", f"{user}@{rng.choice(['example.com', 'mail.example.cn', 'corp.example.com.cn', 'qq.com'])}"
    if kind == "ssn":
        area = rng.choice([n for n in range(1, 900) if n != 666])
        return "ssn", f"{area:03d}-{rng.randrange(1, 100):02d}-{rng.randrange(1, 10000):04d}"
    area = rng.choice(["212", "415", "617", "312", "206", "303"])
    exchange, line = rng.randrange(200, 1000), rng.randrange(10000)
    return "phone", rng.choice([f"({area}) {exchange}-{line:04d}", f"{area}-{exchange}-{line:04d}",
                                f"+1 {area} {exchange} {line:04d}"])


# Sentences around a planted value: Chinese ones put it right against CJK characters, no spaces.
TEMPLATES = [
    "请联系{v}办理相关手续。", "经办人信息：{v}，如有疑问请致电。", "客户留下的是{v}", "{v}是登记在册的信息。",
    "（{v}）", "申请人“{v}”已核验，", "Please contact us at {v} for details.", "Record: {v}; verified on 2023-10-15.",
    "{v}", "Customer {v} confirmed.",
]

# Text full of numbers that are no personal data: none may be found.
LOOK_ALIKES = [
    "第12条 依照本法第一百二十三条的规定，自2023年10月15日起施行。",
    "日期：2023-10-15，2023/10/15，20231015，时间 12:30-13:45，1990-2000 年间。",
    "合同金额为¥1,234,567.89元（大写：壹佰贰拾叁万肆仟伍佰陆拾柒元捌角玖分），另付12345678.90元。",
    "ISBN 978-7-111-12345-6，ISBN 7-111-12345-X，标准号 GB/T 22239-2019，版本 1.2.3456789。",
    "订单号2023101512345678，流水号 20231015093000123，邮编100086，客服 10086、95588。",
    "服务器 IP 192.168.100.200，端口 8080，圆周率 3.1415926535。",
    "SSN placeholders 000-12-3456, 666-12-3456, 912-34-5678 and 123-00-4567 are not issued.",
    "An invoice total of $12,345,678.90 was paid on 2023-10-15 (ref 2023-10-15-0042).",
    "the email field is empty (user@ with no domain) and @example.com alone is no address.",
    "12345678901 is not a Chinese mobile number.",
]


def mistyped(rng: random.Random) -> list[str]:
    """Numbers one check away from personal data: an ID with a wrong check digit, one with month 13,
    a card with one digit off (Luhn fails), bare and grouped."""
    good = id_number(rng)
    wrong_check = good[:-1] + next(c for c in "0123456789X" if c != good[-1])
    bad_date = good[:10] + "1345" + good[14:]
    card = card_number(rng)
    bad_card = card[:-1] + str((int(card[-1]) + rng.randrange(1, 10)) % 10)
    return [wrong_check, bad_date, bad_card, grouped(bad_card, " ")]
