"""LLM-as-judge through annotate's client, limits and call ledger, against the local fake Moonshot."""

from click.testing import CliRunner

from distillery.store import Store
from doubles.moonshot import FakeMoonshot
from qc.cli import main
from qc.judge import read_score
from qc_fixtures import workspace

KEY = "sk-judge-test"


def judge_answer(messages):
    """Scores like a strict judge: off-topic notices 3, the rest 9; one record gets nonsense."""
    user = messages[-1]["content"]
    if "第3条" in user:
        return "这个答案还行吧"  # no score at all: stored as unreadable, not guessed
    return "3####理由与原文关系不大。" if "与个人信息保护无关" in user else "9分####结论正确，理由引用了原文。"


def _judge(ws, server, *extra):
    args = ["-w", str(ws), "check", "--judge", "--base-url", server.base_url, "--api-key-env", "JUDGE_KEY",
            "--model", "moonshot-v1-8k", "--concurrency", "4", "--rpm", "60000", *extra]
    return CliRunner().invoke(main, args, env={"JUDGE_KEY": KEY}, catch_exceptions=False)


def test_judge_scores_are_stored_flagged_and_never_paid_twice(tmp_path):
    ws = workspace(tmp_path, 24)
    with FakeMoonshot(api_key=KEY, responder=judge_answer) as server:
        result = _judge(ws, server)
        assert result.exit_code == 0, result.output
        first = len(server.chat_hashes())
        assert first == 24
        again = _judge(ws, server, "--judge-threshold", "4")
        assert again.exit_code == 0 and len(server.chat_hashes()) == first  # all 24 answers reused from the ledger
    assert "24 answers reused" in again.output
    with Store.open(ws) as store:
        judged = store.judgements(task_names=["relevance"])
        scores = {aid: js[0].score for aid, js in judged.items()}
        assert len(scores) == 24 and set(scores.values()) == {3, 9, None}
        flags = {aid for aid, fs in store.flags(task_names=["relevance"]).items() if any(f.kind == "judge_low" for f in fs)}
        assert flags == {aid for aid, s in scores.items() if s == 3}
        low = next(f for f in store.flags(task_names=["relevance"])[next(iter(flags))] if f.kind == "judge_low")
        assert low.score == 3 and "3/10" in low.detail and "keep threshold 4" in low.detail
        unreadable = next(js[0] for js in judged.values() if js[0].score is None)
        assert "no 1-10 score" in unreadable.reason
        # the judge's raw answers are in the call ledger, linked to the record they judge
        assert any("9分" in (c.content or "") for aid in scores for c in store.calls(aid))
    assert "1 unreadable" in result.output and "below 6" in result.output


def test_judge_needs_a_key_and_says_so(tmp_path):
    ws = workspace(tmp_path, 4)
    result = CliRunner().invoke(main, ["-w", str(ws), "check", "--judge", "--provider", "openai", "--api-key-env", "NO_SUCH_KEY"],
                                env={"NO_SUCH_KEY": ""})
    assert result.exit_code != 0 and "NO_SUCH_KEY" in result.output


def test_read_score_is_tolerant_but_never_guesses():
    assert read_score("8####不错") == (8, "不错")
    assert read_score("10分####完全正确") == (10, "完全正确")
    assert read_score("Score: 7/10 #### fine")[0] == 7
    assert read_score("很好")[0] is None
    assert read_score("12####?")[0] is None


def test_a_judge_with_a_refused_key_stops_before_any_paid_request(tmp_path):
    ws = workspace(tmp_path, 6)
    with FakeMoonshot(api_key="sk-the-right-one", responder=judge_answer) as server:
        result = _judge(ws, server)
        assert len(server.chat_hashes()) == 0  # the probe was refused: nothing was asked
    assert "judge stopped early" in result.output and "rejected the API key" in " ".join(result.output.split())
