"""LocalTeacher: the embedded model behind the Teacher protocol."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("torch", reason="needs the model extra")

from distillery.local_teacher import LocalTeacher, evidence, quote
from distillery.runtime import ModelRuntime
from distillery.teacher import ChatRequest, ChatResult, Guide, TeacherError

pytestmark = pytest.mark.model

LABELS = ["relevant", "irrelevant"]


def request(text: str, max_tokens: int = 16, **kw: object) -> ChatRequest:
    messages = [
        {"role": "system", "content": "Judge whether the text is about personal data. Answer label####reason."},
        {"role": "user", "content": text},
    ]
    return ChatRequest(messages=messages, model="smollm2-135m-instruct", temperature=0, max_tokens=max_tokens, **kw)


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
    assert raw["label_scoring"] == "direct"


def test_cues_pick_the_label_whose_cue_makes_the_source_likeliest(runtime: ModelRuntime) -> None:
    source = ("We collect your name and e-mail address, and delete them two years after your last login. "
              "The office is closed on Monday. You may ask us for a copy of your personal data.")
    cues = ["An article about privacy and personal data:\n", "An article about hiking and camping:\n"]
    req = request(source, guide=Guide(labels=LABELS, cues=cues, source=source), max_tokens=128)
    (result,) = asyncio.run(ask(LocalTeacher(runtime), req))

    expected = runtime.score_texts(cues, source)
    assert list(result.raw["label_logprobs"].values()) == pytest.approx(expected, abs=1e-3)
    assert result.raw["label_scoring"] == "channel"
    best = max(range(len(LABELS)), key=expected.__getitem__)
    # Extractive: the reasoning quotes, in text order, the sentences the chosen cue explains best.
    rows, offsets = runtime.text_logprobs(cues, source)
    spans = evidence(source, rows, offsets, best)
    assert [tuple(s) for s in result.raw["evidence"]] == spans and 1 <= len(spans) <= 2
    assert result.content == f"{LABELS[best]}####" + quote(source, sorted(spans))
    assert result.finish_reason == "stop" and result.completion_tokens == runtime.count_tokens(result.content)


def test_a_short_budget_quotes_fewer_sentences(runtime: ModelRuntime) -> None:
    source = ("Your personal data is stored in encrypted form on servers in Frankfurt. "
              "We share your e-mail address with no one, and you may withdraw your consent at any time.")
    cues = ["An article about privacy and personal data:\n", "An article about hiking and camping:\n"]
    guide = Guide(labels=LABELS, cues=cues, source=source)
    long, short = asyncio.run(ask(LocalTeacher(runtime), request(source, guide=guide, max_tokens=200),
                                  request(source, guide=guide, max_tokens=30)))
    assert len(long.raw["evidence"]) == 2
    assert short.content.count(". ") < long.content.count(". ") and short.completion_tokens <= long.completion_tokens


def test_evidence_ranks_sentences_by_what_the_chosen_cue_explains() -> None:
    source = "Alpha one. Beta two. Gamma three."
    # One "token" per sentence (offsets), so each sentence's evidence is its own margin.
    offsets = [(0, 10), (11, 20), (21, 33)]
    rows = [[-1.0, -5.0, -2.0],   # cue 0
            [-3.0, -1.0, -6.0],   # cue 1
            [-3.0, -3.0, -6.0]]   # cue 2
    # For cue 0: margins 2.0, -3.0, 4.0 -> Gamma, then Alpha; Beta argues against it.
    assert evidence(source, rows, offsets, 0) == [(21, 33), (0, 10)]
    assert evidence(source, rows, offsets, 0, most=1) == [(21, 33)]
    # For cue 2 no sentence helps: the least bad one is still quoted.
    assert evidence(source, rows, offsets, 2) == [(11, 20)]


def test_quote_frames_the_sentences_in_the_source_script() -> None:
    assert quote("One.\n Two  words.", [(0, 4), (6, 17)]) == "The text says: One. Two words."
    assert quote("第一句。第二句。", [(4, 8)]) == "文中写道：第二句。"


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
