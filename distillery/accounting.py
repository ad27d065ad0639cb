"""Tokens and money: estimates before a job, exact figures from the provider's usage after."""

from __future__ import annotations

import math

from pydantic import BaseModel

from .teacher import Message


class Price(BaseModel):
    input_per_million: float
    output_per_million: float
    currency: str = "CNY"


# Moonshot list prices per million tokens as published in late 2026. Prices change and
# contracts differ: override them in the job config (`prices:`), they are only defaults.
DEFAULT_PRICES: dict[str, Price] = {
    "moonshot-v1-8k": Price(input_per_million=2.0, output_per_million=10.0),
    "moonshot-v1-32k": Price(input_per_million=5.0, output_per_million=20.0),
    "moonshot-v1-128k": Price(input_per_million=10.0, output_per_million=30.0),
    "kimi-k2-0905-preview": Price(input_per_million=4.0, output_per_million=16.0),
    "kimi-k2-turbo-preview": Price(input_per_million=8.0, output_per_million=58.0),
}

FREE = Price(input_per_million=0.0, output_per_million=0.0)


def cost(price: Price, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * price.input_per_million + completion_tokens * price.output_per_million) / 1_000_000


def estimate_tokens(text: str) -> int:
    """A provider-independent estimate: one token per non-ASCII (CJK) character, one per four ASCII.

    Real tokenizers pack Chinese tighter than this, so it errs high: the safe side for a TPM
    budget and a dry-run cost. Real usage replaces it once answers arrive.
    """
    ascii_chars = sum(1 for ch in text if ch.isascii())
    return math.ceil(ascii_chars / 4 + (len(text) - ascii_chars))


def estimate_prompt_tokens(messages: list[Message]) -> int:
    # Chat templates add a few tokens of role markers per message.
    return sum(estimate_tokens(str(m.get("content") or "")) + 4 for m in messages)
