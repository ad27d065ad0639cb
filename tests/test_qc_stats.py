"""The statistics behind sampling and the lot decision, against published values."""

import pytest

from qc import iso2859
from qc.iso2859 import PlanError, code_letter, iso_plan, master_plan
from qc.sampling import SampleSpec, allocate, describe, draw, make_plan
from qc.stats import (
    Agreement,
    acceptance_probability,
    agreement,
    wilson,
    wilson_half_width,
    wilson_sample_size,
)


def test_wilson_interval_known_values():
    w = wilson(5, 200)
    assert w.estimate == 0.025
    assert w.low == pytest.approx(0.0107, abs=5e-4) and w.high == pytest.approx(0.0572, abs=5e-4)  # ~[1.1%, 5.7%]
    # 0 of 10 and 10 of 10: exact end points, the familiar 27.8% upper bound ("rule of three"-like)
    assert (wilson(0, 10).low, round(wilson(0, 10).high, 4)) == (0.0, 0.2775)
    assert (round(wilson(10, 10).low, 4), wilson(10, 10).high) == (0.7225, 1.0)
    # 90% confidence is narrower than 95%, 99% wider
    assert wilson(50, 100, 0.90).half_width < wilson(50, 100).half_width < wilson(50, 100, 0.99).half_width
    assert wilson(0, 0).estimate is None and (wilson(0, 0).low, wilson(0, 0).high) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_wilson_sample_size_is_the_smallest_that_meets_the_margin():
    for margin, confidence, expected in ((0.05, 0.95, 0.5), (0.03, 0.95, 0.9), (0.1, 0.99, 0.8), (0.02, 0.9, 0.97)):
        n = wilson_sample_size(margin, confidence, expected)
        assert wilson_half_width(expected, n, confidence) <= margin < wilson_half_width(expected, n - 1, confidence)
    # the textbook Wald figure for +/-5% at 95% is 385; Wilson's interval needs a few fewer
    assert wilson_sample_size(0.05) == 381


def test_iso_2859_code_letters_table_1():
    level_ii = {2: "A", 8: "A", 9: "B", 15: "B", 16: "C", 50: "D", 51: "E", 90: "E", 91: "F", 150: "F", 151: "G",
                280: "G", 281: "H", 500: "H", 501: "J", 1000: "J", 1200: "J", 1201: "K", 3200: "K", 3201: "L",
                10000: "L", 10001: "M", 35001: "N", 150001: "P", 500001: "Q"}
    assert {lot: code_letter(lot) for lot in level_ii} == level_ii
    assert (code_letter(1000, "I"), code_letter(1000, "III"), code_letter(1000, "S-1"), code_letter(1000, "S-4")) == (
        "G", "K", "C", "F")
    assert code_letter(600000, "III") == "R"
    with pytest.raises(PlanError, match="at least 2"):
        code_letter(1)
    with pytest.raises(PlanError, match="level"):
        code_letter(100, "IV")


# Table 2-A (normal inspection, single sampling) as printed, rows A..Q, AQL 0.65 .. 10:
# a number is the rejection number Re (Ac = Re - 1) at that letter's own sample size, "v"/"^"
# are the arrows to the first plan below/above.
PRINTED = {
    "A": "v v v v v 1 ^", "B": "v v v v 1 ^ v", "C": "v v v 1 ^ v 2", "D": "v v 1 ^ v 2 3",
    "E": "v 1 ^ v 2 3 4", "F": "1 ^ v 2 3 4 6", "G": "^ v 2 3 4 6 8", "H": "v 2 3 4 6 8 11",
    "J": "2 3 4 6 8 11 15", "K": "3 4 6 8 11 15 22", "L": "4 6 8 11 15 22 ^", "M": "6 8 11 15 22 ^ ^",
    "N": "8 11 15 22 ^ ^ ^", "P": "11 15 22 ^ ^ ^ ^", "Q": "15 22 ^ ^ ^ ^ ^",
}
COLUMNS = (0.65, 1.0, 1.5, 2.5, 4.0, 6.5, 10.0)


@pytest.mark.parametrize("letter", list(PRINTED))
def test_iso_2859_master_table_2a_matches_the_printed_table(letter):
    for aql, cell in zip(COLUMNS, PRINTED[letter].split(), strict=True):
        plan_letter, ac, re = master_plan(letter, aql)
        if cell.isdigit():
            assert (plan_letter, ac, re) == (letter, int(cell) - 1, int(cell)), (letter, aql)
        elif cell == "v":
            assert iso2859.CODE_LETTERS.index(plan_letter) > iso2859.CODE_LETTERS.index(letter), (letter, aql)
        elif letter != "A":  # A/10 points up at nothing: we take the plan below (documented)
            assert iso2859.CODE_LETTERS.index(plan_letter) < iso2859.CODE_LETTERS.index(letter), (letter, aql)


def test_iso_2859_plans_for_lots():
    p = iso_plan(1000, 1.0)
    assert (p.code_letter, p.sample_size, p.accept, p.reject, p.census) == ("J", 80, 2, 3, False)
    assert (iso_plan(1000, 2.5).accept, iso_plan(1000, 4.0).accept, iso_plan(1000, 0.65).accept) == (5, 7, 1)
    p = iso_plan(100, 1.0)  # F's cell is an up arrow: E's plan, 13 records, accept on zero
    assert (p.code_letter, p.plan_letter, p.sample_size, p.accept, p.reject) == ("F", "E", 13, 0, 1)
    p = iso_plan(300, 0.65)  # H's cell is a down arrow: J's plan
    assert (p.plan_letter, p.sample_size, p.accept, p.reject) == ("J", 80, 1, 2)
    p = iso_plan(10000, 4.0)
    assert (p.code_letter, p.sample_size, p.accept, p.reject) == ("L", 200, 14, 15)
    p = iso_plan(10, 0.65)  # the arrow leads to n=20 > lot: inspect all ten
    assert p.census and p.sample_size == 10
    assert iso_plan(5, 10.0).plan_letter == "C"  # A/10 edge
    with pytest.raises(PlanError, match="AQL 3"):
        iso_plan(1000, 3.0)


def test_operating_characteristic():
    assert acceptance_probability(80, 2, 0.01) == pytest.approx(0.9534, abs=1e-4)
    assert acceptance_probability(50, 3, 0.025) == pytest.approx(0.9638, abs=1e-4)
    assert acceptance_probability(80, 2, 0.0) == 1.0 and acceptance_probability(80, 2, 1.0) == 0.0


def test_plan_in_plain_words():
    plan = make_plan(SampleSpec(tasks=["t"], aql=1.0), 1000)
    text = " ".join(describe(plan))
    assert "code letter J" in text and "review 80 records" in text and "at most 2 of the 80" in text
    assert "fails as soon as 3" in text and "passes 95% of the time" in text
    plan = make_plan(SampleSpec(tasks=["t"], margin=0.05, expected=0.5), 1000)
    # 381 for an unlimited lot; drawing 277 of these 1000 without replacement pins the rate as well.
    assert (plan.n, plan.unlimited_n) == (277, 381) and "+/-5.0%" in " ".join(describe(plan))
    assert "finite-population correction): 277 records instead of the 381" in " ".join(describe(plan))
    plan = make_plan(SampleSpec(tasks=["t"], margin=0.05, expected=0.5), 200)
    assert not plan.census and plan.n == 132
    plan = make_plan(SampleSpec(tasks=["t"], size=50), 40)
    assert plan.census and plan.n == 40 and "review every one" in describe(plan)[0]
    assert "known exactly" in " ".join(describe(plan))
    with pytest.raises(ValueError, match="not aql and margin"):
        SampleSpec(tasks=["t"], aql=1.0, margin=0.05)
    assert SampleSpec(tasks=["t"]).aql == 2.5


def test_cohens_kappa_known_values():
    # Wikipedia's worked example: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> po 0.7, pe 0.5, kappa 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    ag = agreement(a, b)
    assert ag.n == 50 and ag.percent == pytest.approx(0.7) and ag.kappa == pytest.approx(0.4)
    assert ag.words == "fair"
    # Landis & Koch: below 0 poor, 0-0.20 slight (0 is chance-level agreement, not "poor").
    assert [Agreement(n=1, percent=0.5, kappa=k).words for k in (-0.1, 0.0, 0.2, 0.21, 0.81)] == [
        "poor", "slight", "slight", "fair", "almost perfect"]
    assert agreement(["a", "b", "a"], ["a", "b", "a"]).kappa == pytest.approx(1.0)
    assert agreement(["a", "a"], ["a", "a"]).kappa is None  # chance agreement is total
    assert agreement([], []).percent is None


def test_proportional_allocation_and_reproducible_draws():
    assert allocate({"a": 60, "b": 30, "c": 10}, 10) == {"a": 6, "b": 3, "c": 1}
    assert allocate({"a": 50, "b": 25, "c": 25}, 3) == {"a": 1, "b": 1, "c": 1}  # largest remainders: .75 > .5
    assert allocate({"b": 1, "a": 1}, 1) == {"a": 1, "b": 0}  # a tie goes by stratum name
    assert sum(allocate({"x": 7, "y": 5, "z": 1}, 9).values()) == 9
    units = [(f"id{i:03d}", "rel" if i % 4 else "irr") for i in range(200)]
    first = draw(units, 40, seed=3)
    assert draw(list(reversed(units)), 40, seed=3) == first  # order of the lot does not matter
    assert draw(units, 40, seed=4) != first
    assert len({u for u, _ in first}) == 40
    assert sum(s == "irr" for _, s in first) == 10  # a quarter of the lot, a quarter of the sample


def test_the_issue_examples_small_lots_and_plans_that_cannot_pass():
    # A 40-record lot at +/-10%: 37 records unlimited, 20 with the finite-population correction.
    plan = make_plan(SampleSpec(tasks=["t"], margin=0.1), 40)
    assert (plan.n, plan.unlimited_n) == (20, 37)
    # Ten records can never show a 90% target is met: 10 of 10 has a Wilson interval from 72%.
    words = " ".join(describe(make_plan(SampleSpec(tasks=["t"], size=10, target=0.9), 1000)))
    assert "cannot pass even if every one is accepted" in words and "--size 35" in words
    assert "cannot pass" not in " ".join(describe(make_plan(SampleSpec(tasks=["t"], size=35, target=0.9), 1000)))


def test_iso_plan_wording_names_the_code_letter_and_the_kind_of_level():
    plan = make_plan(SampleSpec(tasks=["t"], aql=2.5), 40)  # 40 records: code letter D; at AQL 2.5 the arrow points to C
    assert plan.iso.code_letter == "D" and plan.iso.plan_letter == "C"
    assert "code D (plan C)" in plan.one_line
    words = " ".join(describe(plan))
    assert "general inspection level II" in words and "fails as soon as 1 is." in words
    special = " ".join(describe(make_plan(SampleSpec(tasks=["t"], aql=1.0, level="S-3"), 1000)))
    assert "special inspection level S-3" in special
