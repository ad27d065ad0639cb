"""Small builders shared by the annotate tests."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from annotate.ingest import ChunkingConfig, ingest
from distillery.store import Store
from distillery.teacher_config import JobConfig, load_job_config

ZH = [
    "第二条 个人信息处理者在处理个人信息前，应当告知处理目的和方式。",
    "员工食堂自下月起调整早餐时间，增设素食窗口。",
    "第五条 违反本办法处理个人信息的，处一百万元以下罚款。",
    "本周末登山活动因天气原因取消，请大家留意通知。",
]


def write_docs(folder: Path, texts: list[str] = ZH) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts):
        (folder / f"doc{i:03d}.txt").write_text(text, encoding="utf-8")
    return folder


def ingested_store(tmp_path: Path, texts: list[str] = ZH) -> Store:
    store = Store.open(tmp_path / "ws")
    report = ingest(store, [write_docs(tmp_path / "docs", texts)], config=ChunkingConfig(max_size=200, overlap=0))
    assert report.failures == []
    return store


def openai_config(base_url: str, **teacher: object) -> JobConfig:
    overrides = {"teacher.provider": "openai", "teacher.base_url": base_url, "teacher.api_key_env": "FAKE_MOONSHOT_KEY",
                 "teacher.max_retries": 3, "teacher.backoff_s": 0.01}
    overrides |= {f"teacher.{k}": v for k, v in teacher.items()}
    return load_job_config(None, overrides)


def kill_9_when(proc: subprocess.Popen[str], db: Path, ready: Callable[[], bool], *, timeout_s: float = 60) -> tuple[set[str], int]:
    """kill -9 `proc` once `ready()` (or after `timeout_s`); returns the requests whose answers its
    store holds and how many calls it left out (`sent`, no answer)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (not db.exists() or not ready()):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db) as con:
        stored = {r[0] for r in con.execute("SELECT request FROM calls WHERE status = 'ok'")}
        in_flight = con.execute("SELECT COUNT(*) FROM calls WHERE status = 'sent'").fetchone()[0]
    return stored, in_flight
