"""LocalTeacher: the embedded model behind the Teacher protocol."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("torch", reason="needs the model extra")

from annotate.local_teacher import LocalTeacher
from annotate.runtime import ModelRuntime
from annotate.teacher import ChatRequest, ChatResult, Guide, TeacherError

pytestmark = pytest.mark.model

LABELS = ["relevant", "irrelevant"]


def request(text: str, **kw: object) -> ChatRequest:
    messages = [
        {"role": "system", "content": "Judge whether the text is about personal data. Answer label####reason."},
        {"role": "user", "content": text},
    ]
    return ChatRequest(messages=messages, model="smollm2-135m-instruct", temperature=0, max_tokens=16, **kw)


async def ask(teacher: LocalTeacher, *requests: ChatRequest) -> list[ChatResult]:
    try:
        return await asyncio.gather(*(teacher.complete(r) for r in requests))
    finally:
        await teacher.aclose()


def test_guided_labels_give_label_then_separator(runtime: ModelRuntime) -> None:
    req = request("Employees' ID numbers must be encrypted at rest.", guide=Guide(labels=LABELS))
    (result,) = asyncio.run(ask(LocalTeacher(runtime), req))

    label, sep, _ = result.content.partition("####")
    assert label in LABELS and sep == "####"
    scores = result.raw["label_logprobs"]
    assert label == max(scores, key=scores.get)
    assert result.finish_reason in ("stop", "length")
    assert result.model == "smollm2-135m-instruct" and result.latency_s > 0
    raw = result.raw
    assert raw["id"].startswith("local-") and raw["object"] == "chat.completion"
    assert raw["choices"][0]["message"] == {"role": "assistant", "content": result.content}
    assert raw["usage"] == {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }
    # The chosen label is part of the answer: counted as completion, within max_tokens.
    assert runtime.count_tokens(f"{label}####") < result.completion_tokens <= req.max_tokens
    assert result.prompt_tokens == runtime.count_tokens(runtime.apply_chat_template(req.messages))


def test_plain_requests_run_concurrently_in_one_batch(runtime: ModelRuntime) -> None:
    teacher = LocalTeacher(runtime, max_batch=4)
    texts = ["Phone numbers of customers.", "The canteen opens at 7.", "Passwords are hashed.", "It rained."]

    async def main() -> list[ChatResult]:
        results = await asyncio.gather(*(teacher.complete(request(t)) for t in texts))
        assert teacher.stats is not None and max(teacher.stats.sizes) > 1
        await teacher.aclose()
        return results

    results = asyncio.run(main())
    assert all(r.content and r.completion_tokens > 0 for r in results)
    assert teacher.stats is None


def test_model_errors_become_server_errors(runtime: ModelRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(runtime, "generate", broken)
    with pytest.raises(TeacherError) as info:
        asyncio.run(ask(LocalTeacher(runtime), request("anything")))
    assert info.value.kind == "server" and info.value.retryable
    assert "out of memory" in info.value.message


def test_prompt_over_the_context_is_refused_before_the_model_runs(runtime: ModelRuntime) -> None:
    with pytest.raises(TeacherError) as info:
        asyncio.run(ask(LocalTeacher(runtime), request("word " * 9000)))
    assert info.value.kind == "context_overflow"
