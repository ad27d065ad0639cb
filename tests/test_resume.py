"""kill -9 in the middle of a job, then resume: every chunk annotated once, nothing paid twice."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

from doubles.moonshot import FakeMoonshot
from helpers import kill_9_when, write_docs

KEY = "sk-test-resume"
N = 30


def _cli(ws, url, *args):
    env = {**os.environ, "FAKE_MOONSHOT_KEY": KEY}
    cmd = [sys.executable, "-m", "annotate", "-w", str(ws), "run", "--provider", "openai", "--base-url", url,
           "--api-key-env", "FAKE_MOONSHOT_KEY", "--concurrency", "3", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _ok_count(db) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT COUNT(*) FROM annotations WHERE status = 'ok'").fetchone()[0]


def test_kill_9_then_resume_annotates_each_chunk_exactly_once(tmp_path):
    docs = write_docs(tmp_path / "docs", [f"第{i}条 个人信息处理者应当履行第{i}项义务。" for i in range(N)])
    ws = tmp_path / "ws"
    subprocess.run([sys.executable, "-m", "annotate", "-w", str(ws), "ingest", str(docs)], check=True, capture_output=True)
    db = ws / "distillery.db"
    with FakeMoonshot(api_key=KEY, latency_s=0.3) as server:
        stored, in_flight = kill_9_when(_cli(ws, server.base_url), db, lambda: _ok_count(db) >= 8)
        assert 8 <= len(stored) < N, "the kill must land mid-job"
        seen_before = len(server.requests)  # every request so far (the job's probe included), not only chats

        out, _ = _cli(ws, server.base_url).communicate(timeout=120)
        assert "annotating" in out
        resent = [r["body"] for r in server.requests[seen_before:] if r["path"].endswith("/chat/completions")]

    resent_keys = {json.dumps(b, ensure_ascii=False) for b in resent}
    stored_keys = {json.dumps(json.loads(s), ensure_ascii=False) for s in stored}
    assert not resent_keys & stored_keys, "a request whose answer was stored was sent again"
    assert len(resent) == N - len(stored)  # only the unanswered ones, in-flight ones included
    assert in_flight <= 3
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT chunk_id, COUNT(*), MIN(status), MAX(status) FROM annotations GROUP BY chunk_id").fetchall()
        assert len(rows) == N and all(n == 1 and lo == hi == "ok" for _, n, lo, hi in rows)
        assert con.execute("SELECT COUNT(*) FROM calls WHERE status != 'ok'").fetchone()[0] == 0


def test_two_runs_on_one_workspace_at_once_pay_for_each_request_once(tmp_path):
    docs = write_docs(tmp_path / "docs", [f"第{i}条 个人信息处理者应当履行第{i}项义务。" for i in range(N)])
    ws = tmp_path / "ws"
    subprocess.run([sys.executable, "-m", "annotate", "-w", str(ws), "ingest", str(docs)], check=True, capture_output=True)
    with FakeMoonshot(api_key=KEY, latency_s=0.3) as server:
        first, second = _cli(ws, server.base_url), _cli(ws, server.base_url)
        outputs = [proc.communicate(timeout=120)[0] for proc in (first, second)]
        assert [first.returncode, second.returncode] == [0, 0], outputs
        sent = server.chat_hashes()
    assert len(sent) == len(set(sent)) == N, "a request was sent (and paid for) twice"
    with sqlite3.connect(ws / "distillery.db") as con:
        assert con.execute("SELECT COUNT(*) FROM annotations WHERE status = 'ok'").fetchone()[0] == N


def test_ctrl_c_stops_sending_at_once_and_the_run_resumes(tmp_path):
    docs = write_docs(tmp_path / "docs", [f"第{i}条 个人信息处理者应当履行第{i}项义务。" for i in range(N)])
    ws = tmp_path / "ws"
    subprocess.run([sys.executable, "-m", "annotate", "-w", str(ws), "ingest", str(docs)], check=True, capture_output=True)
    with FakeMoonshot(api_key=KEY, latency_s=0.5) as server:
        # 3 in flight, 120 RPM: most requests wait behind the rate limiter when the stop comes.
        proc = _cli(ws, server.base_url, "--rpm", "120")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(server.chat_hashes()) < 4:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        at_stop = len(server.chat_hashes())
        out, _ = proc.communicate(timeout=60)
        after = len(server.chat_hashes())
        assert proc.returncode == 1 and "stopped on request" in out
        assert after - at_stop <= 1, "requests kept going out after Ctrl-C"  # at most one already past the gate
        assert after < N
        out, _ = _cli(ws, server.base_url).communicate(timeout=120)
        sent = server.chat_hashes()
    assert len(sent) == len(set(sent)) == N  # resumed: the rest asked once, nothing twice
