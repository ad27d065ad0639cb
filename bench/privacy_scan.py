"""Personal-data detection: recall on planted values, false positives on look-alikes, and speed.

    .venv/bin/python bench/privacy_scan.py                 # distillery.privacy (~20 s)
    .venv/bin/python bench/privacy_scan.py --values 2000   # quicker
    PY/bin/python bench/privacy_scan.py --presidio         # the same planted set through Presidio's
                                                           # recognizers (a venv with presidio-analyzer)

1. recall: planted values (tests/doubles/personal_data.py: IDs with real check digits, phones in
   the ways people write them, Luhn-valid cards, e-mails, SSNs) inside Chinese and English
   sentences; a value counts as found when a finding covers exactly it, with the right kind.
2. false positives: look-alike sentences (dates, amounts, article numbers, ISBNs, order numbers)
   and mistyped numbers (wrong ID check digit, month 13, card one digit off).
3. speed: ms per 800-character chunk, detection only (clean text full of numbers; text with 8
   values) and the whole masking step with the store assigning placeholders.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the planted-data double lives there

from doubles.personal_data import LOOK_ALIKES, TEMPLATES, mistyped, planted  # noqa: E402

Find = Callable[[str], list[tuple[int, int, str]]]  # text -> (start, end, kind)


def recall(find: Find, n: int, seed: int = 11) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """(planted, found exactly, found but with a wrong span) by kind."""
    rng = random.Random(seed)
    planted_by, exact, sloppy = Counter[str](), Counter[str](), Counter[str]()
    for _ in range(n):
        kind, value = planted(rng)
        template = rng.choice(TEMPLATES)
        text, start = template.format(v=value), template.index("{v}")
        end = start + len(value)
        planted_by[kind] += 1
        spans = [(s, e) for s, e, k in find(text) if k == kind]
        if (start, end) in spans:
            exact[kind] += 1
        elif any(s < end and e > start for s, e in spans):
            sloppy[kind] += 1
    return planted_by, exact, sloppy


def false_positives(find: Find, n: int, seed: int = 12) -> tuple[int, int]:
    """(texts scanned, findings in them): look-alike sentences and mistyped numbers."""
    rng = random.Random(seed)
    texts = list(LOOK_ALIKES) + [f"编号{v}，请核对。" for _ in range(n) for v in mistyped(rng)]
    return len(texts), sum(len(find(t)) for t in texts)


def report(name: str, find: Find, values: int) -> None:
    planted_by, exact, sloppy = recall(find, values)
    print(f"{name}: recall on {values} planted values (exact span, right kind)")
    for kind in sorted(planted_by):
        print(f"  {kind:10} {exact[kind]:6}/{planted_by[kind]:<6} {exact[kind] / planted_by[kind]:7.2%}"
              f"   wrong span {sloppy[kind]}")
    total = sum(planted_by.values())
    print(f"  {'all':10} {sum(exact.values()):6}/{total:<6} {sum(exact.values()) / total:7.2%}")
    scanned, hits = false_positives(find, values // 4)
    print(f"{name}: false positives: {hits} findings in {scanned} look-alike texts")


def presidio_find() -> Find:
    from presidio_analyzer.predefined_recognizers import CreditCardRecognizer, EmailRecognizer, PhoneRecognizer, UsSsnRecognizer
    kinds = {"CREDIT_CARD": "bank_card", "EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "US_SSN": "ssn"}
    recognizers = [CreditCardRecognizer(), EmailRecognizer(), PhoneRecognizer(supported_regions=("CN", "US")),
                   UsSsnRecognizer()]

    def find(text: str) -> list[tuple[int, int, str]]:
        return [(r.start, r.end, kinds[r.entity_type]) for rec in recognizers
                for r in rec.analyze(text, rec.supported_entities, None) if r.entity_type in kinds]
    return find


def speed(values: int) -> None:
    from distillery.privacy import Detector, Privacy
    from distillery.store import Store
    from distillery.teacher_config import PrivacyConfig

    rng = random.Random(13)
    clean = ("第12条 自2023年10月15日起，合同金额¥1,234,567.89元，订单号2023101512345678，ISBN 978-7-111-12345-6。"
             "Revenue grew 12.5% to $3,456,789 in 2023; see section 4.2.1 and table 17. ") * 8
    clean = clean[:800]
    dense = []
    for _ in range(200):
        parts = [rng.choice(TEMPLATES).format(v=planted(rng)[1]) for _ in range(8)]
        dense.append(("".join(parts) + clean)[:800])
    detector = Detector(PrivacyConfig())
    for label, texts in (("clean chunk (numbers, no personal data)", [clean] * 200), ("chunk with 8 values", dense)):
        started = time.perf_counter()
        for t in texts:
            detector.find(t)
        print(f"detect, {label}: {(time.perf_counter() - started) / len(texts) * 1000:.2f} ms per 800 chars")
    with tempfile.TemporaryDirectory() as tmp, Store.open(tmp) as store:
        privacy = Privacy(store, PrivacyConfig(), local_teacher=False)
        started = time.perf_counter()
        for t in dense:
            privacy.screen(t)
        first = (time.perf_counter() - started) / len(dense) * 1000
        started = time.perf_counter()
        for t in dense:
            privacy.screen(t)
        again = (time.perf_counter() - started) / len(dense) * 1000
    print(f"mask (detect + store placeholders), chunk with 8 values: {first:.2f} ms new values, {again:.2f} ms known")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--values", type=int, default=10000, help="planted values for the recall figure")
    parser.add_argument("--presidio", action="store_true", help="measure Presidio's recognizers instead")
    args = parser.parse_args()
    if args.presidio:
        report("presidio", presidio_find(), args.values)
        return
    from distillery.privacy import Detector
    from distillery.teacher_config import PrivacyConfig

    detector = Detector(PrivacyConfig())
    report("distillery.privacy", lambda text: [(f.start, f.end, f.kind) for f in detector.find(text)], args.values)
    speed(args.values)


if __name__ == "__main__":
    main()
