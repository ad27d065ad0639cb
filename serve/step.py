"""serve's step of `distill run`: the tuned student behind `POST /algorithm/ChatRest` in a real
gunicorn server, asked held-out inputs with and without the reasoning, to measure the early exit.

The `serve:` section of the project config:

    max_new_tokens: 256    # the longest answer
    quantization: none     # none, int8 or int4 (bitsandbytes)
    proof_inputs: 10       # held-out inputs asked both ways
    targets: {speedup: 3.0}   # conclusion-only answers at least this much faster (median latency)
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from distillery.config import validate
from distillery.errors import DistilleryError
from distillery.pipeline import RunContext, StepResult, Target
from distillery.stages import Stage

from .cli import main
from .process import ServerProcess

MEASURE_TIMEOUT_S = 1800  # per request while measuring; the server's default (60 s) is for production traffic


class ServeTargets(BaseModel):
    model_config = ConfigDict(extra="forbid")
    speedup: float = Field(3.0, gt=0)


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int = Field(256, ge=1)
    quantization: Literal["none", "int8", "int4"] = "none"
    proof_inputs: int = Field(10, ge=1)
    targets: ServeTargets = Field(default_factory=ServeTargets)


class EarlyExitFigures(BaseModel):
    inputs: int
    median_conclusion_s: float
    median_full_s: float
    speedup: float  # median full / median conclusion-only
    mean_conclusion_tokens: float
    mean_full_tokens: float
    tokens_per_s: float  # generated tokens / seconds over the full answers
    example_request: dict
    example_response: dict


class MeasureError(DistilleryError):
    """The server answered, but not as ChatRest promises."""


def configure(section: dict[str, Any], ctx: RunContext) -> ServeSettings:
    return validate(ServeSettings, section, None, section="serve")


def run(ctx: RunContext, settings: ServeSettings) -> StepResult:
    from transformers import AutoTokenizer

    model, prompts = ctx.handoff.model_dir, ctx.handoff.probe_prompts[: settings.proof_inputs]
    assert model is not None, "serve runs after finetune"
    options: list[str | Path] = ["--model", model, "--max-new-tokens", str(settings.max_new_tokens),
                                 "--quantization", settings.quantization]
    if ctx.threads:
        options += ["--torch-threads", str(ctx.threads)]
    ctx.command("serve", "gunicorn", *options, workspace=False)
    # One request at a time, measured: on a slow or busy machine a full answer may take minutes,
    # which the server's default per-request limit (then 504) would cut off.
    args = [str(o) for o in options] + ["--timeout-s", str(MEASURE_TIMEOUT_S)]
    tokenizer = AutoTokenizer.from_pretrained(model)
    log = ctx.workspace.root / "serve.log"
    with ServerProcess(args, log=log) as server:
        ctx.console.print(f"listening at {server.url}; asking {len(prompts)} held-out inputs, conclusion only and with reasoning")
        figures = measure_early_exit(server.url, prompts, lambda text: len(tokenizer.encode(text)),
                                     timeout_s=MEASURE_TIMEOUT_S + 60)
    ctx.console.print(f"POST {server.url}/algorithm/ChatRest {json.dumps(figures.example_request, ensure_ascii=False)[:160]}…")
    ctx.console.print(f"-> {json.dumps(figures.example_response, ensure_ascii=False)}", highlight=False)
    target = Target(name="early-exit speedup", wanted=f">= {settings.targets.speedup:g}x", got=f"{figures.speedup:.1f}x",
                    met=figures.speedup >= settings.targets.speedup)
    return StepResult(
        figures=figures.model_dump(mode="json"),
        markdown=markdown(figures),
        summary=[f"serving: {figures.tokens_per_s:.1f} tokens/s, early exit {figures.speedup:.1f}x; serve it: "
                 f"distill serve gunicorn --model {ctx.show(model)}"],
        targets=[target],
        outputs={"server log": log},
    )


def _completion_tokens(client: httpx.Client) -> float:
    """Tokens the server has generated so far, from its Prometheus counter."""
    text = client.get("/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("distill_serve_tokens_total{") and 'kind="completion"' in line)


def measure_early_exit(url: str, prompts: list[str], count_tokens: Callable[[str], int],
                       timeout_s: float = MEASURE_TIMEOUT_S) -> EarlyExitFigures:
    """Ask every prompt twice, one request at a time: conclusion only, then with the reasoning.

    The order alternates per input so neither mode always runs on a warmer cache.
    """
    if not prompts:
        raise MeasureError("no held-out inputs to measure the early exit with: prepare a test split (finetune.test > 0)")
    timings: dict[bool, list[float]] = {False: [], True: []}
    tokens: dict[bool, list[int]] = {False: [], True: []}
    example: tuple[dict, dict] | None = None
    full_generated = 0.0
    with httpx.Client(base_url=url, timeout=timeout_s) as client:
        body = {"prompt": prompts[0]}
        client.post("/algorithm/ChatRest", json=body).raise_for_status()  # warm-up, not counted
        for i, prompt in enumerate(prompts):
            for reasoning in ((False, True) if i % 2 == 0 else (True, False)):
                body = {"prompt": prompt, "reasoning": reasoning}
                before = _completion_tokens(client) if reasoning else 0.0
                started = time.perf_counter()
                response = client.post("/algorithm/ChatRest", json=body)
                timings[reasoning].append(time.perf_counter() - started)
                payload = response.json()
                if response.status_code != 200 or not payload.get("sucess"):
                    raise MeasureError(f"ChatRest refused a held-out input ({response.status_code}): {payload}")
                tokens[reasoning].append(count_tokens(payload["data"]["answer"]))
                if reasoning:
                    full_generated += _completion_tokens(client) - before
                if example is None and not reasoning:
                    example = (body, payload)
    concl, full = statistics.median(timings[False]), statistics.median(timings[True])
    assert example is not None
    return EarlyExitFigures(
        inputs=len(prompts), median_conclusion_s=concl, median_full_s=full, speedup=full / concl,
        mean_conclusion_tokens=statistics.fmean(tokens[False]), mean_full_tokens=statistics.fmean(tokens[True]),
        tokens_per_s=full_generated / sum(timings[True]), example_request=example[0], example_response=example[1],
    )


def markdown(e: EarlyExitFigures) -> list[str]:
    return [
        "## Early exit (tuned student behind `distill serve`, one request at a time)", "",
        f"{e.inputs} inputs. Conclusion only: median {e.median_conclusion_s:.2f} s, {e.mean_conclusion_tokens:.0f} tokens "
        f"in the answer. With the reasoning: median {e.median_full_s:.2f} s, {e.mean_full_tokens:.0f} tokens. "
        f"**{e.speedup:.1f}x** faster. Serving: {e.tokens_per_s:.1f} generated tokens/s.", "",
        "One ChatRest exchange:", "", "```json",
        json.dumps(e.example_request, ensure_ascii=False), json.dumps(e.example_response, ensure_ascii=False), "```",
    ]


STAGE = Stage(name="serve", help="the tuned student behind POST /algorithm/ChatRest, early exit measured",
              command=main, configure=configure, run=run)
