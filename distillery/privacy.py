"""Personal data stays home: found in what a job would send to an external teacher, then masked
with placeholders, or the request blocked, by the workspace's policy (`JobConfig.privacy`).

Detectors: Chinese resident ID numbers (ISO 7064 MOD 11-2 check digit via python-stdnum, birth
date, province code), phone numbers (mobile, landline, international: Google's
libphonenumber rules via `phonenumbers`), bank and credit card numbers (Luhn plus a card-issuer
prefix or a card word nearby), e-mail addresses, US social security numbers, the user's own
regex patterns (each a kind) and names (exact strings). Candidates are cut with boundaries that
work inside Chinese text (no spaces around a number there), then validated, so dates, amounts,
article numbers and ISBNs stay as they are. Why not Presidio: see docs/privacy.md.

Masking is deterministic: a value's placeholder (`[PHONE_3]`) is its number in the workspace's
store, given in order of first sight and never changed, so the same value reads the same in
every request of every job, and a re-run builds byte-identical requests (the call ledger reuses
their stored answers). Needs the annotate or qc extra (phonenumbers, python-stdnum).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import NamedTuple

import phonenumbers
from stdnum import luhn
from stdnum.cn import ric
from stdnum.us import ssn

from .errors import ConfigError
from .store import Store
from .teacher_config import PrivacyConfig

# Full-width digits, letters and the signs around numbers and addresses read as their ASCII twins
# (one character for one, so positions in the text stay valid).
_HALF_WIDTH = str.maketrans({chr(c): chr(c - 0xFEE0) for c in range(0xFF01, 0xFF5F)} | {"\u3000": " "})

# Digits and Latin letters continue a token; CJK characters do not (\b would say they do).
_L, _R = r"(?<![0-9A-Za-z])", r"(?![0-9A-Za-z])"
_ID = re.compile(_L + r"[1-9][0-9]{5} ?(?:18|19|20)[0-9]{2}[01][0-9][0-3][0-9] ?[0-9]{3}[0-9Xx]" + _R)
_CARD = re.compile(_L + r"(?:[0-9]{13,19}|[0-9]{3,6}(?:[ -][0-9]{3,6}){1,5})" + _R)
_CARD_WORDS = re.compile(r"(?:卡号|银行卡|信用卡|借记卡|储蓄卡|账号|帐号|账户|帐户|card|account|acct)\W{0,3}\w{0,6}\W{0,3}$", re.I)
_SSN = re.compile(r"(?<![0-9A-Za-z-])[0-9]{3}-[0-9]{2}-[0-9]{4}(?![0-9A-Za-z-])")
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
                    r"[A-Za-z]{2,24}(?![A-Za-z0-9-])")
_BARE_DIGITS = re.compile(r"[0-9]+")

# Which detector wins when two claim overlapping text of the same length: the user's own first.
_RANK = {"pattern": 0, "name": 1, "id_card": 2, "bank_card": 3, "ssn": 4, "email": 5, "phone": 6}


class Finding(NamedTuple):
    start: int
    end: int
    kind: str
    value: str  # normalised: one placeholder for "138-1234-5678" and "+86 13812345678"
    rank: int


def _plausible_birth(digits: str) -> bool:
    try:
        born = date(int(digits[6:10]), int(digits[10:12]), int(digits[12:14]))
    except ValueError:
        return False
    return date(1900, 1, 1) <= born <= date.today()


# GB 2260 province-level codes: the ID's first two digits.
_PROVINCES = frozenset({11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51, 52,
                        53, 54, 61, 62, 63, 64, 65, 71, 81, 82})


def _id_cards(text: str) -> Iterator[Finding]:
    for m in _ID.finditer(text):
        number = m.group().replace(" ", "").upper()
        # Check digit (ISO 7064 MOD 11-2), birth date, province. Not stdnum's ric.is_valid: it also
        # wants the county to have existed in the birth year, but an ID carries the code of where it
        # was issued (1985 on), so it rejects most IDs of people born before their district was made.
        if int(number[:2]) in _PROVINCES and _plausible_birth(number) and ric.calc_check_digit(number) == number[-1]:
            yield Finding(m.start(), m.end(), "id_card", number, _RANK["id_card"])


def _issuer_prefix(digits: str) -> bool:
    """A card scheme's prefix (Visa 4, Mastercard 51-55/2221-2720, Amex/JCB/Diners 3, UnionPay/Discover 6, Maestro 5/6)."""
    return digits[0] in "3456" or 2221 <= int(digits[:4]) <= 2720


def _looks_like_id(digits: str) -> bool:
    """18 digits with a province code and a birth year: an ID number (valid or mistyped), not a card."""
    return len(digits) == 18 and int(digits[:2]) in _PROVINCES and digits[6:8] in ("18", "19", "20")


def _bank_cards(text: str) -> Iterator[Finding]:
    for m in _CARD.finditer(text):
        groups = re.split("[ -]", m.group())
        # Grouped digits too long for a card ("4111 1111 1111 1111 2023") may be a card and the
        # next number: the longest run of groups from the start that is one counts. A run of card
        # length is judged whole: a mistyped card is no card.
        n = len(groups)
        while n and len("".join(groups[:n])) > 19:
            n -= 1
        digits = "".join(groups[:n])
        if len(digits) < 13 or _looks_like_id(digits) or not luhn.is_valid(digits):
            continue
        if _issuer_prefix(digits) or _CARD_WORDS.search(text[max(0, m.start() - 16):m.start()]):
            end = m.start() + len(" ".join(groups[:n]))
            yield Finding(m.start(), end, "bank_card", digits, _RANK["bank_card"])


def _ssns(text: str) -> Iterator[Finding]:
    for m in _SSN.finditer(text):
        if ssn.is_valid(m.group()):
            yield Finding(m.start(), m.end(), "ssn", m.group(), _RANK["ssn"])


def _emails(text: str) -> Iterator[Finding]:
    for m in _EMAIL.finditer(text):
        yield Finding(m.start(), m.end(), "email", m.group().lower(), _RANK["email"])


def _digits(s: str) -> str:
    return re.sub("[^0-9]", "", s)


def _phones(text: str, regions: list[str]) -> Iterator[Finding]:
    best: dict[tuple[int, int], tuple[tuple[bool, int], str]] = {}
    for i, region in enumerate(regions):
        for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            # A bare run of digits is a phone number only by the home region's rules (the first):
            # "12345678901" is no Chinese number, though +1 234-567-8901 would be a US one.
            if i and _BARE_DIGITS.fullmatch(m.raw_string):
                continue
            # Valid in two regions ("415-555-2671": US, or Dandong without its 0): the region whose
            # own way of writing it is what the text has wins, then the earlier region.
            national = phonenumbers.format_number(m.number, phonenumbers.PhoneNumberFormat.NATIONAL)
            rank = (not _digits(m.raw_string).endswith(_digits(national)), i)
            e164 = phonenumbers.format_number(m.number, phonenumbers.PhoneNumberFormat.E164)
            # "（138-1234-5678）": the matcher takes the opening bracket of a parenthesis as the
            # number's own; it is not part of it unless closed inside ("(010)88886666").
            start = m.start + (m.raw_string.count("(") > m.raw_string.count(")"))
            if (start, m.end) not in best or rank < best[start, m.end][0]:
                best[start, m.end] = rank, e164
    for (start, end), (_, e164) in best.items():
        yield Finding(start, end, "phone", e164, _RANK["phone"])


def _strings_pattern(strings: Iterable[str]) -> re.Pattern[str] | None:
    """One pattern for exact strings, longest first; a Latin edge must not continue a word."""
    alternatives = []
    for s in sorted(set(strings), key=len, reverse=True):
        left = _L if re.match("[0-9A-Za-z]", s) else ""
        right = _R if re.search("[0-9A-Za-z]$", s) else ""
        alternatives.append(left + re.escape(s) + right)
    return re.compile("|".join(alternatives)) if alternatives else None


def _resolve(findings: Iterable[Finding]) -> list[Finding]:
    """Non-overlapping findings in text order: the longer wins, then the better-ranked detector."""
    kept: list[Finding] = []
    for f in sorted(findings, key=lambda f: (f.start - f.end, f.rank, f.start)):
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept)


class Detector:
    """Finds personal data in text, by the kinds a PrivacyConfig turns on."""

    def __init__(self, config: PrivacyConfig) -> None:
        unknown = [r for r in config.phone_regions if r not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ConfigError(f"privacy.phone_regions: unknown region(s) {', '.join(unknown)}; use ISO 3166 codes "
                              "such as CN, US, GB")
        self.kinds = set(config.detect)
        self.regions = config.phone_regions
        self.patterns = {kind: re.compile(regex) for kind, regex in config.patterns.items()}
        self.names = _strings_pattern(config.names)

    def find(self, text: str) -> list[Finding]:
        """Personal data in `text`, non-overlapping, in order."""
        plain = text.translate(_HALF_WIDTH)
        found: list[Finding] = []
        if "id_card" in self.kinds:
            found += _id_cards(plain)
        if "bank_card" in self.kinds:
            found += _bank_cards(plain)
        if "ssn" in self.kinds:
            found += _ssns(plain)
        if "email" in self.kinds:
            found += _emails(plain)
        if "phone" in self.kinds:
            found += _phones(plain, self.regions)
        for kind, pattern in self.patterns.items():
            found += (Finding(m.start(), m.end(), kind, m.group(), _RANK["pattern"])
                      for m in pattern.finditer(text) if m.end() > m.start())
        if self.names:
            found += (Finding(m.start(), m.end(), "name", m.group(), _RANK["name"]) for m in self.names.finditer(text))
        return _resolve(found)


def placeholder(kind: str, number: int) -> str:
    return f"[{kind.upper()}_{number}]"


@dataclass
class Screened:
    """Texts made fit to send: personal data replaced by placeholders, or `blocked` saying why not."""

    texts: list[str | None]  # the inputs, in order, as they may be sent
    found: Counter[str] = field(default_factory=Counter)  # values replaced, by kind
    blocked: str | None = None  # why nothing may be sent (policy block), in words without the values
    originals: dict[str, str] = field(default_factory=dict)  # placeholder -> the value as first written

    def restore(self, text: str) -> str:
        """`text` (a teacher's answer) with this request's placeholders turned back into the values."""
        if not self.originals:
            return text
        pattern = re.compile("|".join(re.escape(p) for p in self.originals))
        return pattern.sub(lambda m: self.originals[m.group()], text)


def describe_found(found: Mapping[str, int]) -> str:
    """'3 phone, 2 id_card': values by kind, most first."""
    return ", ".join(f"{n} {kind}" for kind, n in sorted(found.items(), key=lambda kv: (-kv[1], kv[0])))


class Privacy:
    """The workspace's privacy policy applied to what one job sends to its teacher."""

    def __init__(self, store: Store, config: PrivacyConfig, *, local_teacher: bool) -> None:
        self.store, self.policy = store, config.policy
        # An embedded model runs in this process: the text never leaves the machine.
        self.active = config.policy != "allow" and not (local_teacher and config.local_sees_original)
        self.detector = Detector(config) if self.active else None

    def screen(self, *texts: str | None) -> Screened:
        """Mask `texts` (a chunk, then what goes with it: a question, an answer to judge) together, so
        a value found in one is replaced in all (a card number is recognised by the word "卡号"
        before it in the chunk, not in an answer quoting it)."""
        if self.detector is None:
            return Screened(list(texts))
        per_text: list[list[Finding]] = []
        known: dict[str, Finding] = {}  # value as written -> its finding
        for text in texts:
            findings = self.detector.find(text) if text else []
            if text and known:
                quoted = _strings_pattern(known)
                assert quoted is not None
                findings = _resolve([*findings, *(known[m.group()]._replace(start=m.start(), end=m.end(), rank=-1)
                                                  for m in quoted.finditer(text))])
            for f in findings:
                known.setdefault(text[f.start:f.end], f)
            per_text.append(findings)
        found = Counter(f.kind for findings in per_text for f in findings)
        if not found:
            return Screened(list(texts))
        if self.policy == "block":
            return Screened(list(texts), found, blocked=f"personal data found ({describe_found(found)}) and the privacy "
                                                        "policy is block: not sent")
        numbers = self.store.placeholder_numbers([(f.kind, f.value) for findings in per_text for f in findings])
        originals: dict[str, str] = {}
        masked: list[str | None] = []
        for text, findings in zip(texts, per_text):
            if not text or not findings:
                masked.append(text)
                continue
            out, at = [], 0
            for f in findings:
                token = placeholder(f.kind, numbers[(f.kind, f.value)])
                originals.setdefault(token, text[f.start:f.end])
                out += [text[at:f.start], token]
                at = f.end
            masked.append("".join(out) + text[at:])
        return Screened(masked, found, originals=originals)
