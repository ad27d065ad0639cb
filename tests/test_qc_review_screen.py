"""The review screen driven as a person would: a pseudo-terminal, keys in, screen out, kill -9."""

import os
import signal
import sys
import textwrap
from pathlib import Path

import pexpect
import pytest
from click.testing import CliRunner

from distillery.store import Store
from qc.cli import main
from qc.sampling import SampleSpec, create_sample
from qc.screen import source_window
from qc.text import shared_spans
from qc.verdicts import current
from qc_fixtures import workspace

ROOT = Path(__file__).resolve().parents[1]
KEYS_LINE = r"\[\?\] help"


@pytest.fixture
def ws(tmp_path):
    ws = workspace(tmp_path, 30)
    with Store.open(ws) as store:
        create_sample(store, SampleSpec(tasks=["relevance"], size=6, target=0.5))
    return ws


def spawn(ws: Path, *args: str, env: dict[str, str] | None = None) -> pexpect.spawn:
    environ = {**os.environ, "TERM": "xterm-256color", **(env or {})}
    return pexpect.spawn(sys.executable, ["-m", "qc", "-w", str(ws), "review", *args], cwd=str(ROOT), env=environ,
                         dimensions=(40, 140), encoding="utf-8", timeout=15)


def screen(child: pexpect.spawn, record: int, of: int = 6) -> None:
    """Wait until the screen shows this record and is ready for a key."""
    child.expect(f"record {record} of {of}")
    child.expect(KEYS_LINE)


def my_reviews(ws: Path, reviewer: str = "alice"):
    with Store.open(ws) as store:
        sample = store.sample("s1")
        items = [i.annotation_id for i in store.sample_items(sample.id)]
        log = store.reviews(reviewer=reviewer)
    return items, log


def test_review_keys_accept_reject_fix_skip_back_help_quit(ws):
    child = spawn(ws, "-r", "alice")
    child.expect("estimate: review 6")
    screen(child, 1)
    assert "Plan: estimate the acceptance rate. Review 6 records" in child.before  # the plan, before the first key
    child.send("a")
    screen(child, 2)
    assert "saved: accept" in child.before
    child.send("r")
    child.expect("Why\\?")
    child.send("2")
    child.expect("note \\(Enter for none\\): ")
    child.sendline("理由与原文不符")
    screen(child, 3)
    child.send("f")
    child.expect("New conclusion")
    child.send("\x1b")  # Esc: nothing saved, same record
    screen(child, 3)
    assert "fix cancelled" in child.before
    child.send("f")
    child.expect("New conclusion")
    child.send("\r")  # keep the label
    child.expect("reasoning: ")
    child.send("\x15")  # Ctrl-U: clear the prefilled reasoning
    child.sendline("改正：文本只说明了通知时间和地点。")
    child.expect("What was wrong\\?")
    child.send("2")
    screen(child, 4)
    child.send("s")
    screen(child, 5)
    child.send("b")  # back to the skipped record 4, back again to the fixed record 3
    screen(child, 4)
    child.send("b")
    screen(child, 3)
    assert "your verdict: fix" in child.before
    assert "改正：文本只说明了通知时间和地点。" in child.before and "your fix of teacher" in child.before  # the fix, not the teacher's
    child.send("b")
    screen(child, 2)
    child.send("a")  # a changed mind: record 2 now accepted; on to the first open record
    screen(child, 4)
    child.send("?")
    child.expect("Reasons:")
    child.send("x")
    screen(child, 4)
    child.send("q")
    child.expect(r"This session: 4 verdicts \(accept 2, fix 1, reject 1\), 1 skipped")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

    items, log = my_reviews(ws)
    assert [(r.annotation_id, r.verdict) for r in log] == [
        (items[0], "accept"), (items[1], "reject"), (items[2], "fix"), (items[3], "skip"), (items[1], "accept")]
    reject, fix = log[1], log[2]
    assert (reject.reason, reject.note) == ("unsupported", "理由与原文不符")  # kept, though superseded
    assert fix.reasoning == "改正：文本只说明了通知时间和地点。" and fix.conclusion == fix.original_conclusion
    assert fix.reason == "unsupported" and fix.original_reasoning != fix.reasoning
    now = current(log)
    assert now[(items[1], "alice")].verdict == "accept" and (items[3], "alice") not in now


def test_kill_9_mid_review_loses_only_the_record_on_screen_and_resumes(ws):
    child = spawn(ws, "-r", "alice")
    for record in (1, 2, 3):
        screen(child, record)
        child.send("a")
    screen(child, 4)
    child.send("r")  # half a rejection: the reason menu is up when the terminal dies
    child.expect("Why\\?")
    child.kill(signal.SIGKILL)
    child.close(force=True)
    items, log = my_reviews(ws)
    assert [(r.annotation_id, r.verdict) for r in log] == [(i, "accept") for i in items[:3]]

    child = spawn(ws, "-r", "alice")
    screen(child, 4)
    assert "welcome back: 3 of 6 done" in child.before
    for record in (4, 5, 6):
        child.send("a")
        if record < 6:
            screen(child, record + 1)
    child.expect("All 6 records of sample s1 have your verdict")
    child.send("q")
    child.expect("6 of 6 records have your verdict")
    child.expect(pexpect.EOF)
    _, log = my_reviews(ws)
    assert len(log) == 6 and len({r.annotation_id for r in log}) == 6

    # another reviewer starts at the beginning: verdicts are per reviewer
    bob = spawn(ws, "-r", "bob")
    screen(bob, 1)
    bob.send("q")
    bob.expect(pexpect.EOF)


def test_fix_in_editor_reopens_a_broken_edit_with_the_reviewers_text(ws, tmp_path):
    editor = tmp_path / "editor.py"
    # First round: the reviewer writes a long reasoning but deletes the #### line. Second round
    # (the editor reopened with their text and the problem on top): they put the line back.
    editor.write_text(textwrap.dedent("""
        import sys
        path = sys.argv[1]
        text = open(path, encoding="utf-8").read()
        if "NOT SAVED" not in text:
            text = "不相关\\n第一行理由：这是一则内部通知。\\n第二行：与个人信息保护无关。\\n"
        else:
            assert "第一行理由" in text, text
            text = text.replace("不相关\\n第一行", "不相关\\n####\\n第一行")
        open(path, "w", encoding="utf-8").write(text)
    """), encoding="utf-8")
    child = spawn(ws, "-r", "carol", "--editor", f"{sys.executable} {editor}")
    screen(child, 1)
    child.send("e")
    child.expect("What was wrong\\?")
    child.send("\x1b")  # Esc here gives no reason; the correction is kept
    screen(child, 2)
    assert "saved: fix" in child.before
    child.send("q")
    child.expect(pexpect.EOF)
    items, log = my_reviews(ws, "carol")
    with Store.open(ws) as store:
        original = store.annotation(items[0])
    (fix,) = log
    assert fix.verdict == "fix" and fix.conclusion == "不相关" and fix.reason is None
    assert fix.reasoning == "第一行理由：这是一则内部通知。\n第二行：与个人信息保护无关。"
    assert (fix.original_conclusion, fix.original_reasoning) == (original.conclusion, original.reasoning)


def test_a_long_source_is_shown_around_the_part_the_answer_quotes():
    text = "甲" * 2000 + "个人信息处理者应当告知处理目的和方式" + "乙" * 1000
    spans = shared_spans(text, "文本说个人信息处理者应当告知处理目的")
    start, end = source_window(text, spans, 300)
    assert end - start == 300 and start < 2000 and end > 2000 + 18
    assert source_window("短文本", [], 300) == (0, 3)


def test_review_without_a_terminal_points_to_the_spreadsheet(ws):
    result = CliRunner().invoke(main, ["-w", str(ws), "review", "-r", "alice"])
    assert result.exit_code == 1 and "sheet export" in result.output
    result = CliRunner().invoke(main, ["-w", str(ws), "review", "--sample", "nope"])
    assert result.exit_code == 1


def test_keys_typed_ahead_each_count(ws):
    """A fast reviewer types before the screen redraws: "aaa" is three verdicts, "r1" a reject with its reason."""
    child = spawn(ws, "-r", "alice")
    screen(child, 1)
    child.send("aaar1")  # one write: the terminal delivers all five keys at once
    child.expect("reason: ")  # the picked reason is echoed
    child.expect("note \\(Enter for none\\): ")
    child.sendline("")
    screen(child, 5)
    child.send("q")
    child.expect(pexpect.EOF)
    items, log = my_reviews(ws)
    assert [(r.annotation_id, r.verdict) for r in log] == [
        (items[0], "accept"), (items[1], "accept"), (items[2], "accept"), (items[3], "reject")]
    assert log[3].reason == "wrong_conclusion"  # key 1, typed ahead with the r
