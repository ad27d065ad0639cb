"""The teacher job configuration as data (a YAML file, overridable from the command line), read
by `annotate run` and `qc check --judge` alike, and the teacher it builds.

Which teacher: with a key in the environment (MOONSHOT_API_KEY by default) or a base URL set,
the OpenAI-compatible API (Kimi by default); with neither, the embedded local model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .accounting import DEFAULT_PRICES, FREE, Price
from .config import load_config
from .ratelimit import TIERS, Limits
from .teacher import Teacher, TeacherError

KIMI_BASE_URL = "https://api.moonshot.cn/v1"
KIMI_MODEL = "moonshot-v1-8k"
LOCAL_MODEL = "smollm2-135m-instruct"


class TeacherConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: Literal["auto", "openai", "local"] = "auto"
    base_url: str | None = None  # None + provider openai => Kimi
    api_key_env: str = "MOONSHOT_API_KEY"  # the key is read from here; never stored
    model: str | None = None  # None => moonshot-v1-8k (openai) / the embedded model (local)
    local_model_path: str | None = None  # a HF model dir for the local teacher instead of SmolLM2
    temperature: float = Field(0.3, ge=0, le=2)
    max_tokens: int = Field(1024, ge=1)
    # Streamed (the default): the longest silence between two pieces of an answer; unstreamed: the
    # whole exchange. A slow but live teacher keeps a streamed answer going up to deadline_s.
    timeout_s: float = Field(120, gt=0)
    stream: bool = True
    deadline_s: float = Field(1800, gt=0)
    tier: str = "tier1"  # Moonshot account tier preset for the limits below
    concurrency: int | None = Field(None, ge=1)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    max_retries: int = Field(6, ge=0)
    backoff_s: float = Field(1.0, gt=0)  # first retry waits up to this, doubling (Moonshot: 1 s, 2 s, 4 s...)

    @field_validator("tier")
    @classmethod
    def _known_tier(cls, tier: str) -> str:
        if tier not in TIERS:
            raise ValueError(f"unknown tier '{tier}'; use one of {', '.join(TIERS)}")
        return tier

    def resolved_provider(self) -> Literal["openai", "local"]:
        """auto: the API when a base URL is set, or a key is in the default variable, or a key
        variable was named (then a missing key is an error, not a quiet switch to the local model)."""
        if self.provider != "auto":
            return self.provider
        named_key = "api_key_env" in self.model_fields_set
        return "openai" if self.base_url or named_key or os.environ.get(self.api_key_env) else "local"

    def resolved_model(self) -> str:
        if self.model:
            return self.model
        return KIMI_MODEL if self.resolved_provider() == "openai" else LOCAL_MODEL

    def resolved_base_url(self) -> str | None:
        return (self.base_url or KIMI_BASE_URL).rstrip("/") if self.resolved_provider() == "openai" else None

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None

    def key_problem(self) -> str | None:
        """Why no request could be sent (no key for the default provider), or None."""
        if self.resolved_provider() == "openai" and not self.api_key() and not self.base_url:
            return f"no API key: set {self.api_key_env} (or --base-url for a server that needs none)"
        return None

    def lease_s(self) -> float:
        """The longest one request can take, retries and their backoff (at most 60 s each) included:
        after that, a call another machine left 'sent' is taken to be dead."""
        per_attempt = max(self.timeout_s, self.deadline_s) if self.stream else self.timeout_s
        return per_attempt * (self.max_retries + 1) + 60 * self.max_retries

    def limits(self) -> Limits:
        preset = TIERS[self.tier]
        if self.resolved_provider() == "local":
            # The local model batches what it is given; more in flight only queues.
            preset = Limits(concurrency=8, rpm=None, tpm=None)
        return Limits(
            concurrency=self.concurrency or preset.concurrency,
            rpm=self.rpm or preset.rpm,
            tpm=self.tpm or preset.tpm,
        )


PersonalKind = Literal["id_card", "phone", "bank_card", "email", "ssn"]
PERSONAL_KINDS: tuple[PersonalKind, ...] = ("id_card", "phone", "bank_card", "email", "ssn")


class PrivacyConfig(BaseModel):
    """What happens to personal data before a chunk goes to an external teacher (distillery.privacy):
    `mask` sends it with placeholders, `block` sends no chunk that has any, `allow` sends it as is."""

    model_config = ConfigDict(extra="forbid")
    policy: Literal["mask", "block", "allow"] = "mask"
    detect: list[PersonalKind] = Field(default_factory=lambda: list(PERSONAL_KINDS))  # the built-in detectors on
    patterns: dict[str, str] = Field(default_factory=dict)  # your own kinds: name -> regex
    names: list[str] = Field(default_factory=list)  # exact strings (people, clients) masked as kind "name"
    phone_regions: list[str] = Field(default_factory=lambda: ["CN", "US"])  # numbers without +: first region's rules
    local_sees_original: bool = True  # the embedded model runs here: nothing leaves the machine

    @field_validator("patterns")
    @classmethod
    def _usable_patterns(cls, patterns: dict[str, str]) -> dict[str, str]:
        for kind, regex in patterns.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]*", kind):
                raise ValueError(f"kind '{kind}': use lower-case letters, digits and _ (it becomes the placeholder "
                                 f"[{kind.upper()}_1])")
            try:
                compiled = re.compile(regex)
            except re.error as exc:
                raise ValueError(f"{kind}: '{regex}' is not a regular expression ({exc})") from None
            if compiled.fullmatch(""):
                raise ValueError(f"{kind}: '{regex}' matches the empty string; it would mask nothing useful")
        return patterns

    @field_validator("names")
    @classmethod
    def _no_blank_names(cls, names: list[str]) -> list[str]:
        stripped = [n.strip() for n in names]
        if not all(stripped):
            raise ValueError("a blank name would match everywhere; remove it")
        return stripped


class JobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str = "relevance"  # built-in name or path to a task YAML
    vars: dict[str, Any] = Field(default_factory=dict)  # task variable overrides
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    budget: float | None = Field(None, gt=0)  # stop cleanly once this much is spent (price currency)
    prices: dict[str, Price] = Field(default_factory=dict)  # per model, overrides the defaults
    expected_completion_tokens: int = Field(200, ge=1)  # for the dry-run estimate
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)  # personal data bound for an external teacher

    def price(self) -> Price:
        if self.teacher.resolved_provider() == "local":
            return FREE
        model = self.teacher.resolved_model()
        table = {**DEFAULT_PRICES, **self.prices}
        return table.get(model, FREE)

    def has_price(self) -> bool:
        return self.teacher.resolved_provider() == "local" or self.teacher.resolved_model() in {**DEFAULT_PRICES, **self.prices}


def load_job_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> JobConfig:
    """Read a job YAML (or start from defaults) and apply overrides like {"teacher.rpm": 100}."""
    return load_config(JobConfig, path, overrides)


def build_teacher(config: TeacherConfig, on_retry: Callable[[TeacherError], None] | None = None) -> Teacher:
    """The teacher the config names: an OpenAI-compatible API client, or the embedded local model."""
    if config.resolved_provider() == "local":
        from .local_teacher import LocalTeacher  # needs the model extra

        return LocalTeacher(model_path=config.local_model_path, model_name=config.resolved_model())
    from .client import OpenAIChatClient

    base_url = config.resolved_base_url()
    assert base_url is not None
    return OpenAIChatClient(
        base_url,
        config.api_key(),
        limits=config.limits(),
        max_retries=config.max_retries,
        backoff_base_s=config.backoff_s,
        timeout_s=config.timeout_s,
        stream=config.stream,
        deadline_s=config.deadline_s,
        on_retry=on_retry,
    )
