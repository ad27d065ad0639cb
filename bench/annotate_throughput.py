"""Annotation throughput, CPU and memory against a local Moonshot-compatible server.

    .venv/bin/python bench/annotate_throughput.py            # full run (~5 min)
    .venv/bin/python bench/annotate_throughput.py --quick    # smaller figures (~1.5 min)

Three measurements, each printed as figures and ratios against a baseline from the same run:
1. rate: the server answers in ~1 s and enforces an RPM limit over a sliding 60 s window; the
   job is configured with the same RPM. Achieved requests/min vs the limit, share of 429s, and
   client CPU per request (this process only: the server runs in a subprocess).
2. naive: a one-request-at-a-time loop (what a plain script does) against the same server;
   our throughput / naive throughput.
3. memory: peak RSS of this process while a job of many chunks runs against an instant server.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from annotate import runner
from distillery.records import Chunk, Document
from distillery.store import Store
from distillery.tasks import load_task
from distillery.teacher_config import load_job_config

TESTS = Path(__file__).resolve().parents[1] / "tests"  # the Moonshot double lives there, not in the product

KEY = "sk-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m doubles.moonshot` in its own process, so its CPU is not ours."""

    def __init__(self, latency: float, rpm: int | None) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "doubles.moonshot", "--port", str(self.port), "--latency", str(latency),
               "--api-key", KEY]
        if rpm:
            cmd += ["--rpm", str(rpm)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        self.url = f"http://127.0.0.1:{self.port}/v1"
        for _ in range(100):
            try:
                httpx.get(f"{self.url}/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("fake server did not start")

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait()


def make_store(folder: Path, n: int) -> Store:
    """A workspace with n distinct chunks, written directly (ingest speed is not measured here)."""
    store = Store.open(folder)
    per_doc = 1000
    for d in range(0, n, per_doc):
        doc = Document(id=hashlib.sha256(f"doc{d}".encode()).hexdigest()[:32], path=f"doc{d:07d}.txt", kind="txt", n_chars=0)
        chunks = []
        for i in range(d, min(n, d + per_doc)):
            text = f"第{i}条 个人信息处理者应当在处理前告知处理目的、方式和保存期限，并取得个人同意。"
            cid = hashlib.sha256(f"{doc.id}\x00{text}".encode()).hexdigest()[:32]
            chunks.append(Chunk(id=cid, document_id=doc.id, seq=i - d, text=text, char_start=0, char_end=len(text), size=len(text)))
        store.add_document(doc, chunks)
    return store


def job(store: Store, url: str, **teacher: object) -> runner.JobStats:
    config = load_job_config(None, {"teacher.provider": "openai", "teacher.base_url": url, "teacher.api_key_env": "BENCH_KEY",
                                "teacher.max_tokens": 64, **{f"teacher.{k}": v for k, v in teacher.items()}})
    task = load_task("relevance")
    runner.plan(store, task, config)
    return asyncio.run(runner.run_job(store, task, config))


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bench_rate(rpm: int, seconds: float, stream: bool) -> float:
    n = int(rpm * seconds / 60)
    with tempfile.TemporaryDirectory() as tmp, Server(latency=1.0, rpm=rpm) as server:
        store = make_store(Path(tmp), n)
        cpu0, t0 = cpu_s(), time.monotonic()
        stats = job(store, server.url, rpm=rpm, concurrency=max(4, rpm // 30), tpm=10_000_000, stream=stream)
        wall, cpu = time.monotonic() - t0, cpu_s() - cpu0
    achieved = stats.calls_sent / wall * 60
    attempts = stats.calls_sent + stats.retries
    print(f"rate   limit {rpm} RPM, server latency 1.0 s, {stats.calls_sent} requests in {wall:.1f} s")
    print(f"       achieved {achieved:.1f} requests/min = {achieved / rpm:.1%} of the limit "
          f"(the first requests start at once, so short runs read a little high)")
    print(f"       429 answers: {stats.retries} of {attempts} attempts = {stats.retries / attempts:.2%}")
    print(f"       client CPU {cpu / stats.calls_sent * 1000:.2f} ms per request ({cpu:.1f} s CPU total)")
    return achieved


def bench_naive(requests: int) -> float:
    with Server(latency=1.0, rpm=None) as server, httpx.Client(headers={"Authorization": f"Bearer {KEY}"}) as client:
        t0 = time.monotonic()
        for i in range(requests):
            r = client.post(f"{server.url}/chat/completions", json={"model": "moonshot-v1-8k", "max_tokens": 64,
                            "messages": [{"role": "user", "content": f"第{i}条"}]}, timeout=30)
            r.raise_for_status()
        wall = time.monotonic() - t0
    rate = requests / wall * 60
    print(f"naive  one request at a time: {requests} requests in {wall:.1f} s = {rate:.1f} requests/min")
    return rate


def bench_memory(chunks: int, stream: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp, Server(latency=0.0, rpm=None) as server:
        store = make_store(Path(tmp), chunks)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.monotonic()
        stats = job(store, server.url, concurrency=32, rpm=10_000_000, tpm=10_000_000_000, stream=stream)
        wall = time.monotonic() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"memory {chunks:,}-chunk job: {stats.by_status.get('ok', 0):,} ok in {wall:.0f} s "
          f"({stats.calls_sent / wall:.0f} requests/s); peak RSS {peak:.0f} MB (before the job {base:.0f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--no-stream", dest="stream", action="store_false", help="answers in one piece, not streamed")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # figures appear as they come, also when piped
    os.environ["BENCH_KEY"] = KEY
    print(f"answers {'streamed' if args.stream else 'in one piece (--no-stream)'}")
    rate = bench_rate(args.rpm, 30 if args.quick else 90, args.stream)
    naive = bench_naive(10 if args.quick else 20)
    print(f"ratio  our throughput / naive loop = {rate / naive:.1f}x")
    bench_memory(10_000 if args.quick else 100_000, args.stream)


if __name__ == "__main__":
    main()
