"""The output contract: `conclusion####reasoning`, conclusion first.

Conclusion first is what lets the tuned student stop at `####` when an app needs only
the conclusion. This module turns a teacher's raw answer into the two parts, or says
precisely what is wrong so the teacher can be re-asked.
"""

from __future__ import annotations

import re
import unicodedata

from pydantic import BaseModel

from .errors import DistilleryError
from .records import SEPARATOR


class ContractError(DistilleryError, ValueError):
    """The answer broke the contract; the message is written to be shown to the teacher."""


class Parsed(BaseModel):
    conclusion: str
    reasoning: str


_FENCE = re.compile(r"^```[\w-]*\s*\n?|\n?```\s*$")
# Labels teachers like to put in front of the parts ("结论：", "**Conclusion:**").
_PART_LABEL = re.compile(
    r"^\s*(?:\*\*|__)?\s*(?:结论|结果|答案|理由|原因|推理|分析|conclusion|answer|reasoning|reason|rationale)"
    r"\s*(?:\*\*|__)?\s*[:：]\s*(?:\*\*|__)?\s*",
    re.IGNORECASE,
)
_EDGE_NOISE = " \t\r\n*_`>\"'“”‘’「」『』【】[]《》"
_TRAILING_PUNCT = "。．.！!？?；;，,、:："


def _clean(part: str) -> str:
    part = _PART_LABEL.sub("", part.strip(_EDGE_NOISE))
    return part.strip(_EDGE_NOISE)


def _label_key(text: str) -> str:
    return unicodedata.normalize("NFKC", text).strip(_EDGE_NOISE + _TRAILING_PUNCT).casefold()


def match_label(conclusion: str, labels: list[str]) -> str | None:
    """The label the conclusion states, tolerating case, width, quotes and trailing punctuation."""
    key = _label_key(conclusion)
    by_key = {_label_key(label): label for label in labels}
    if key in by_key:
        return by_key[key]
    # "不相关。该文本……" states a label then runs on: take the longest label it starts with,
    # so "不相关" is never read as "相关".
    starts = [k for k in by_key if key.startswith(k) and (len(key) == len(k) or not key[len(k)].isalnum())]
    return by_key[max(starts, key=len)] if starts else None


def parse_answer(
    text: str,
    *,
    labels: list[str] | None = None,
    separator: str = SEPARATOR,
    finish_reason: str | None = None,
    min_reasoning_chars: int = 1,
) -> Parsed:
    body = _FENCE.sub("", text.strip())
    if separator not in body:
        if finish_reason == "length":
            raise ContractError(
                f"the answer was cut off (max_tokens) before '{separator}'; "
                f"put the conclusion first, then '{separator}', and keep the reasoning short"
            )
        raise ContractError(f"the answer has no '{separator}' separator between conclusion and reasoning")
    head, _, tail = body.partition(separator)
    conclusion, reasoning = _clean(head), _clean(tail.replace(separator, " "))
    if not conclusion:
        raise ContractError(f"the conclusion before '{separator}' is empty")
    if len(reasoning) < min_reasoning_chars:
        raise ContractError(f"the reasoning after '{separator}' is empty")
    if labels:
        label = match_label(conclusion, labels)
        if label is None:
            raise ContractError(f"the conclusion '{conclusion[:80]}' is not one of: {' | '.join(labels)}")
        conclusion = label
    return Parsed(conclusion=conclusion, reasoning=reasoning)


_NUMBERING = re.compile(r"^\s*(?:[-*•]|\(?\d{1,2}[.)、:：）]|[QqＱ]\d{0,2}[.:：、]?|问题\s*\d{0,2}\s*[.:：、]?)\s*")


def parse_questions(conclusion: str, *, max_questions: int) -> list[str]:
    """Questions listed one per line in the conclusion, numbering stripped, duplicates dropped."""
    questions: list[str] = []
    for line in conclusion.splitlines():
        q = _NUMBERING.sub("", line).strip(_EDGE_NOISE)
        if len(q) >= 4 and q not in questions:
            questions.append(q)
    if not questions:
        raise ContractError("the conclusion lists no questions; write one question per line before '####'")
    return questions[:max_questions]
