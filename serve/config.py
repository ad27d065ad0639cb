"""Server configuration as data: a YAML file, then environment variables, then explicit overrides.

    DISTILL_SERVE_CONFIG=serve.yaml             # the YAML file (optional)
    DISTILL_SERVE_QUANTIZATION=int4             # any top-level field: DISTILL_SERVE_<FIELD>
    DISTILL_SERVE_BATCHING__MAX_BATCH=32        # nested fields: '__' between the parts

The environment route exists because `gunicorn 'serve.app:create_app()'` takes no arguments:
everything a production process needs must be expressible without a command line.
`distill-serve config` prints the effective configuration as YAML.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from distillery.config import apply_overrides, read_mapping, validate
from distillery.errors import ConfigError
from distillery.records import SEPARATOR

ENV_PREFIX = "DISTILL_SERVE_"
CONFIG_ENV = f"{ENV_PREFIX}CONFIG"
DEFAULT_API_KEY_ENV = f"{ENV_PREFIX}API_KEY"
# Headroom of gunicorn threads beyond the requests the batcher may hold: health checks and
# /metrics scrapes must get a thread even when the queue is full.
_SPARE_THREADS = 8


class Generation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Upper bound for every answer; OpenAI-style requests may ask for fewer, never more.
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)  # 0 = greedy: the same prompt, the same answer
    top_p: float = Field(1.0, gt=0.0, le=1.0)


class Batching(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # static: a batch runs until its longest row ends. continuous: rows join and leave the running
    # batch between decode steps (a short answer never waits for a long one) and `stream: true`
    # works in-process; sampling requests still run static batches (serve/README.md has figures).
    engine: Literal["static", "continuous"] = "static"
    max_batch: int = Field(16, ge=1)  # 1 = one request at a time (the old design)
    max_wait_ms: float = Field(10.0, ge=0)  # how long the first request waits for companions (static)
    max_queue: int = Field(64, ge=1)  # requests waiting beyond this are refused with 503
    # Paged KV cache of the continuous engine, in tokens; None = max_batch x 512, and at least one
    # longest prompt with a longest answer.
    kv_cache_tokens: int | None = Field(None, ge=1)
    # continuous: rows reuse the KV blocks of a prompt prefix already computed (system prompt,
    # instruction, few-shot turns), so they prefill only what is their own. Exact (see README).
    prefix_sharing: bool = True


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None  # merged model dir, or the base for `adapter`; None = embedded SmolLM2
    # An OpenAI-compatible engine (vLLM, SGLang, ...) to answer instead of an in-process model:
    # its base URL (…/v1), the model name it serves (None: the first of its /models), and the
    # variable holding its key (unset or empty: none sent).
    upstream: str | None = None
    upstream_model: str | None = None
    upstream_api_key_env: str = f"{ENV_PREFIX}UPSTREAM_API_KEY"
    adapter: str | None = None  # LoRA adapter dir (finetune's output) applied on `model`
    quantization: Literal["none", "int8", "int4"] = "none"
    # compiled: a static KV cache and torch.compile for one-request decode (GPU; each longer
    # request length compiles once). eager stays right on a CPU, where compiling does not pay.
    decode: Literal["eager", "compiled"] = "eager"
    device: str = "auto"  # auto = cuda when available, else cpu
    # torch's intra-op threads; None = torch's default (all cores). On a CPU shared with other
    # processes, fewer threads than cores avoids OpenMP threads waiting on descheduled peers.
    torch_threads: int | None = Field(None, ge=1)
    model_name: str = "distillery"  # what /v1/models and OpenAI responses call the model
    system_prompt: str | None = None  # prepended to ChatRest conversations (match training)
    separator: str = Field(SEPARATOR, min_length=1)  # conclusion<sep>reasoning; the early exit
    generation: Generation = Field(default_factory=Generation)
    # The whole templated conversation (system + history + prompt), in tokens.
    max_prompt_tokens: int = Field(2048, ge=1)
    max_body_bytes: int = Field(1 << 20, ge=1024)  # larger request bodies get 413 before parsing
    batching: Batching = Field(default_factory=Batching)
    timeout_s: float = Field(60.0, gt=0)  # per request, queueing included; then 504
    # The API key is read from this environment variable; unset or empty = no auth.
    api_key_env: str = DEFAULT_API_KEY_ENV
    log_prompts: bool = False  # prompt and answer text in the log (off: ids, sizes, timings only)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None

    def upstream_key(self) -> str | None:
        return os.environ.get(self.upstream_api_key_env) or None

    def gunicorn_threads(self) -> int:
        """Threads for the one gunicorn worker: enough that the batcher's bounded queue, not
        gunicorn's unbounded one, is where excess load waits (and is refused)."""
        return self.batching.max_queue + self.batching.max_batch + _SPARE_THREADS

    def trained_system_prompt(self) -> str | None:
        """`system_prompt` if set, else the one the model was trained with: `distill-finetune` writes it
        to distillery_prompt.json beside the adapter and the merged model, so serving matches training."""
        if self.system_prompt is not None:
            return self.system_prompt
        for directory in (self.adapter, self.model):
            path = Path(directory, TRAINED_PROMPT_FILE) if directory else None
            if path is not None and path.is_file():
                try:
                    return str(json.loads(path.read_text(encoding="utf-8"))["system"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise ConfigError(f"{path}: no 'system' prompt in it ({exc!r}); fix the file or set system_prompt") from exc
        return None

    def check(self) -> None:
        """What must hold before loading, so start-up fails rather than the first request."""
        if self.upstream is not None:
            if not self.upstream.startswith(("http://", "https://")):
                raise ConfigError(f"upstream: {self.upstream} is not an http(s) URL (e.g. http://vllm:8000/v1)")
            if self.model is not None or self.adapter is not None or self.quantization != "none":
                raise ConfigError("upstream: the upstream engine holds the model; drop model/adapter/quantization "
                                  "(set them on the engine, e.g. vLLM's --quantization, --enable-lora)")
            return
        if self.adapter is not None and self.model is None:
            # Applied to the embedded SmolLM2, an adapter trained on Qwen2 would fail obscurely.
            raise ConfigError("adapter: needs model, the base model dir the adapter was trained on")
        for name in ("model", "adapter"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_dir():
                raise ConfigError(f"{name}: {value} is not a directory")


TRAINED_PROMPT_FILE = "distillery_prompt.json"


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """DISTILL_SERVE_<FIELD>[__<SUBFIELD>] variables as dotted overrides ("batching.max_batch")."""
    env = os.environ if environ is None else environ
    # Not fields: the config file's path, and the default home of the API key itself.
    skip = {CONFIG_ENV, DEFAULT_API_KEY_ENV, f"{ENV_PREFIX}UPSTREAM_API_KEY"}
    return {
        key[len(ENV_PREFIX) :].lower().replace("__", "."): value
        for key, value in env.items()
        # Empty counts as unset: compose files pass `${VAR:-}` through as "".
        if key.startswith(ENV_PREFIX) and key not in skip and value != ""
    }


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> ServeConfig:
    """YAML file (`path`, else $DISTILL_SERVE_CONFIG), then DISTILL_SERVE_* variables, then
    `overrides` like {"batching.max_batch": 1} (None values are skipped)."""
    env = os.environ if environ is None else environ
    path = path or env.get(CONFIG_ENV) or None
    data: dict[str, Any] = {}
    origins = []
    if path:
        data = read_mapping(path)
        origins.append(str(path))
    from_env = env_overrides(env)
    if from_env:
        names = ", ".join(f"{ENV_PREFIX}{k.upper().replace('.', '__')}" for k in from_env)
        origins.append(f"environment ({names})")
    for source in (from_env, overrides or {}):
        apply_overrides(data, source)
    if overrides and any(v is not None for v in overrides.values()):
        origins.append("command line")
    return validate(ServeConfig, data, " + ".join(origins) or "defaults")
