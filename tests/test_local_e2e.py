"""The embedded default end to end: no key, no base URL, the local SmolLM2 teacher annotates real chunks."""

import pytest
from click.testing import CliRunner

from annotate.cli import main

pytestmark = pytest.mark.model


def test_cli_main_job_on_the_embedded_teacher(tmp_path, monkeypatch, embedded_cache):
    monkeypatch.setenv("DISTILLERY_CACHE", str(embedded_cache))
    monkeypatch.delenv("MOONSHOT_API_KEY", raising=False)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "zh.txt").write_text("第二条 个人信息处理者在处理个人信息前，应当告知处理目的和方式。", encoding="utf-8")
    (docs / "en.md").write_text("# Canteen\nThe canteen opens at seven and serves noodles on Fridays.", encoding="utf-8")
    ws = ["-w", str(tmp_path / "ws")]
    assert CliRunner().invoke(main, [*ws, "ingest", str(docs)]).exit_code == 0
    result = CliRunner().invoke(main, [*ws, "run", "--max-tokens", "24", "--temperature", "0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "embedded local model" in result.output

    from distillery.store import Store

    with Store.open(tmp_path / "ws") as store:
        anns = [a for _, a in store.annotations()]
        assert len(anns) == 2
        for ann in anns:
            # guided decoding keeps the label set even with a 135M model
            assert ann.status == "ok" and ann.conclusion in {"相关", "不相关"} and ann.reasoning
            assert ann.provider == "local" and ann.model == "smollm2-135m-instruct"
            assert ann.prompt_tokens > 50 and 0 < ann.completion_tokens <= 24 and ann.cost == 0
            call = store.answered_call(ann.request_hash)
            assert call.content.startswith(ann.conclusion + "####")
    # a second run sends nothing: every answer is stored
    again = CliRunner().invoke(main, [*ws, "run", "--max-tokens", "24", "--temperature", "0"])
    assert "nothing to do" in again.output
