"""Tokens and money: estimates before a job, exact figures from the provider's usage after."""

from __future__ import annotations

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


def _is_cjk(ch: str) -> bool:
    return "\u3000" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or "\uff00" <= ch <= "\uffef"


def estimate_text_tokens(text: str) -> int:
    """A provider-independent estimate: ~1 token per CJK character, ~4 other characters per token.

    Moonshot's and Qwen's tokenizers both land within about 30% of this on mixed text; it
    feeds the TPM limiter and the dry run, and real usage replaces it once answers arrive.
    """
    cjk = sum(1 for ch in text if _is_cjk(ch))
    return cjk + (len(text) - cjk + 3) // 4


def estimate_prompt_tokens(messages: list[Message]) -> int:
    # Chat templates add a few tokens of role markers per message.
    return sum(estimate_text_tokens(str(m.get("content", ""))) + 4 for m in messages)
