"""Qwen2-7B-Instruct's architecture with random weights, and a tokenizer that fits it, written as a
plain HF model directory (what `finetune`, `ModelRuntime` and `serve` load). No weights reach a GPU
host, and the speed and memory figures depend on the shapes alone.

The tokenizer is byte-level: each UTF-8 byte is one token (ids 0-255), Qwen2's special tokens sit
at Qwen2's ids (<|endoftext|> 151643, <|im_start|> 151644, <|im_end|> 151645) and every other id up
to the vocabulary size is a filler token that decodes to plain ASCII letters. Encoding never
produces a filler (there are no merges), but a random model emits them, and each must decode.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast, Qwen2Config

QWEN2_7B = {"hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
            "intermediate_size": 18944, "vocab_size": 152064, "rope_theta": 1_000_000.0,
            "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
# The CI stand-in: the same code paths in seconds on a CPU (head_dim 16, 2 KV heads as grouped attention).
TINY = QWEN2_7B | {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "intermediate_size": 128, "vocab_size": 1024, "max_position_embeddings": 4096}

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN2_SPECIAL_ID = 151643  # <|endoftext|>'s id in Qwen2; the other two follow it
# Qwen2-7B-Instruct's own chat template (a default system turn when none is given).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _filler(i: int) -> str:
    """A distinct token string of ASCII letters (they map to themselves in the byte-level alphabet)."""
    letters = ""
    while True:
        i, r = divmod(i, 26)
        letters += chr(ord("a") + r)
        if i == 0:
            return "x" + letters


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    byte_chars = _byte_alphabet()
    special_at = min(QWEN2_SPECIAL_ID, vocab_size - len(SPECIALS))
    vocab = {c: i for i, c in enumerate(byte_chars)}
    for i in range(len(vocab), vocab_size):
        special = i - special_at
        vocab[SPECIALS[special] if 0 <= special < len(SPECIALS) else _filler(i)] = i
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIALS))  # already in the vocabulary: keep their ids, never split them
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        model_max_length=32768)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _byte_alphabet() -> list[str]:
    """The character standing for each byte 0-255 in the byte-level alphabet (GPT-2's bytes_to_unicode):
    printable Latin-1 bytes stand for themselves, the rest for 256, 257, ... in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    others = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(others)) for b in range(256)]


def write_random_model(target: Path, shape: dict[str, float | int | bool], device: torch.device,
                       dtype: torch.dtype) -> dict[str, float]:
    """Random weights of the given Qwen2 shape, initialised directly on `device` in `dtype` (no fp32
    copy on the host), saved with the tokenizer to `target`. Returns the figures of the build."""
    started = time.monotonic()
    tokenizer = build_tokenizer(int(shape["vocab_size"]))
    eos, pad = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    config = Qwen2Config(**shape, bos_token_id=pad, eos_token_id=eos, pad_token_id=pad)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad)
    built = time.monotonic()
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    figures = {"params_b": sum(p.numel() for p in model.parameters()) / 1e9,
               "weight_gb": sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9,
               "init_s": built - started, "save_s": time.monotonic() - built}
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return figures
