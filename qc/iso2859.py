"""ISO 2859-1 (= ANSI/ASQ Z1.4, MIL-STD-105E) single sampling for normal inspection.

Table 1 maps the lot size and inspection level to a sample size code letter; Table 2-A maps the
code letter and the AQL to a sample size and acceptance/rejection numbers. Table 2-A is a
diagonal table: along each diagonal (code letter index + AQL index) the plan is the same Ac/Re
pair, and the cells just off the "0 1" diagonal are arrows to the nearest plan above or below.
The diagonal form below reproduces the printed table cell for cell (see tests/test_qc_stats.py).
"""

from __future__ import annotations

from pydantic import BaseModel

from distillery.errors import DistilleryError

CODE_LETTERS = "ABCDEFGHJKLMNPQR"  # no I, no O: as printed
SAMPLE_SIZES = dict(zip(CODE_LETTERS, (2, 3, 5, 8, 13, 20, 32, 50, 80, 125, 200, 315, 500, 800, 1250, 2000), strict=True))

# Table 1, upper lot-size bounds and the code letter per inspection level.
LEVELS = ("S-1", "S-2", "S-3", "S-4", "I", "II", "III")
_TABLE_1: list[tuple[float, str]] = [
    (8, "AAAAAAB"),
    (15, "AAAAABC"),
    (25, "AABBBCD"),
    (50, "ABBCCDE"),
    (90, "BBCCCEF"),
    (150, "BBCDDFG"),
    (280, "BCDEEGH"),
    (500, "BCDEFHJ"),
    (1200, "CCEFGJK"),
    (3200, "CDEGHKL"),
    (10000, "CDFGJLM"),
    (35000, "CDFHKMN"),
    (150000, "DEGJLNP"),
    (500000, "DEGJMPQ"),
    (float("inf"), "DEHKNQR"),
]

# The percent-nonconforming AQL columns of Table 2-A (the columns past 10 count nonconformities
# per hundred items, which a record does not have).
AQLS = (0.010, 0.015, 0.025, 0.040, 0.065, 0.10, 0.15, 0.25, 0.40, 0.65, 1.0, 1.5, 2.5, 4.0, 6.5, 10.0)

# Table 2-A by diagonal (code letter index + AQL index): Ac, Re = Ac + 1 for single sampling.
_ACCEPT_BY_DIAGONAL = {14: 0, 17: 1, 18: 2, 19: 3, 20: 5, 21: 7, 22: 10, 23: 14, 24: 21}
_UP = {15}  # "use the first sampling plan above the arrow" (smaller sample); also every diagonal > 24
# Every other diagonal (< 14, and 16) points down: "use the first sampling plan below the arrow".


class PlanError(DistilleryError, ValueError):
    """A lot size, level or AQL the standard has no plan for; the message says what is allowed."""


class IsoPlan(BaseModel):
    lot_size: int
    level: str
    aql: float
    code_letter: str  # from Table 1
    plan_letter: str  # after following Table 2-A's arrows
    sample_size: int  # from Table 2-A; the whole lot when the lot is smaller
    accept: int  # Ac: accept the lot with at most this many nonconforming records
    reject: int  # Re: reject it with this many or more
    census: bool  # the sample is the whole lot


def code_letter(lot_size: int, level: str = "II") -> str:
    """Table 1: the sample size code letter for a lot size at an inspection level."""
    if level not in LEVELS:
        raise PlanError(f"inspection level '{level}' is not one of {', '.join(LEVELS)}")
    if lot_size < 2:
        raise PlanError(f"a lot needs at least 2 records to sample, this one has {lot_size}")
    column = LEVELS.index(level)
    return next(letters[column] for upper, letters in _TABLE_1 if lot_size <= upper)


def _aql_index(aql: float) -> int:
    for i, value in enumerate(AQLS):
        if abs(value - aql) < 1e-9:
            return i
    raise PlanError(f"AQL {aql:g} is not a column of ISO 2859-1 Table 2-A; use one of {', '.join(f'{a:g}' for a in AQLS)}")


def master_plan(letter: str, aql: float) -> tuple[str, int, int]:
    """Table 2-A: (plan letter, Ac, Re) for a code letter and AQL, following the arrows."""
    if letter not in SAMPLE_SIZES:
        raise PlanError(f"code letter '{letter}' is not one of {CODE_LETTERS}")
    a = _aql_index(aql)
    row = CODE_LETTERS.index(letter)
    direction = 0  # once an arrow is followed, keep going the same way
    for _ in range(len(CODE_LETTERS)):
        diagonal = row + a
        if diagonal in _ACCEPT_BY_DIAGONAL:
            accept = _ACCEPT_BY_DIAGONAL[diagonal]
            return CODE_LETTERS[row], accept, accept + 1
        step = -1 if diagonal in _UP or diagonal > 24 else 1
        direction = direction or step
        if not 0 <= row + direction < len(CODE_LETTERS):
            # The printed table has an up-arrow at A/10 with no plan above it: take the one below.
            direction = -direction
        row += direction
    raise AssertionError(f"no plan reached from {letter}/{aql}")  # the table has none such


def iso_plan(lot_size: int, aql: float, level: str = "II") -> IsoPlan:
    """The single sampling plan for normal inspection of a lot."""
    letter = code_letter(lot_size, level)
    plan_letter, accept, reject = master_plan(letter, aql)
    n = SAMPLE_SIZES[plan_letter]
    # The standard: when the sample size equals or exceeds the lot size, inspect every item.
    census = n >= lot_size
    return IsoPlan(lot_size=lot_size, level=level, aql=aql, code_letter=letter, plan_letter=plan_letter,
                   sample_size=min(n, lot_size), accept=accept, reject=reject, census=census)
