"""What ChatRest in front of an upstream engine costs: the same requests sent to the upstream
directly and through `distill serve gunicorn --upstream URL`, at 1, 8 and 32 concurrent clients.

    .venv/bin/python bench/serve_upstream.py               # upstream answers in 0.2 s
    .venv/bin/python bench/serve_upstream.py --latency 0

The upstream is the Moonshot double (tests/doubles) in its own process, standing in for vLLM:
what is measured is the front's own overhead per request (median latency through the front
minus direct) and its throughput against the direct one, in the same run.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from serve.process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]

PROMPT = "判断以下文本是否与个人信息保护相关：第二条 个人信息处理者在处理个人信息前，应当告知处理目的。"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(url: str, path: str, body: dict, clients: int, per_client: int) -> tuple[list[float], float]:
    """Latencies of clients x per_client requests, and the wall time they took."""
    latencies: list[float] = []
    lock = threading.Lock()

    def one_client() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            for _ in range(per_client):
                started = time.perf_counter()
                client.post(path, json=body).raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=one_client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the upstream takes per answer")
    parser.add_argument("--requests", type=int, default=64, help="requests per level (split over the clients)")
    args = parser.parse_args()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))}
    upstream = subprocess.Popen([sys.executable, "-m", "doubles.moonshot", "--port", str(port), "--latency",
                                 str(args.latency), "--api-key", ""], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(100):
            try:
                httpx.get(f"{base}/models", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        with tempfile.TemporaryDirectory() as tmp, ServerProcess(["--upstream", base], log=Path(tmp) / "serve.log") as front:
            direct_body = {"model": "moonshot-v1-8k", "messages": [{"role": "user", "content": PROMPT}],
                           "max_tokens": 256, "temperature": 0.0, "stop": ["####"]}
            load(front.url, "/algorithm/ChatRest", {"prompt": PROMPT}, 1, 2)  # warm both paths
            print(f"upstream latency {args.latency:g} s; {args.requests} requests per level; "
                  f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
            print("clients | direct: median ms, req/s | through ChatRest: median ms, req/s | overhead ms/request")
            for clients in (1, 8, 32):
                per = max(1, args.requests // clients)
                d_lat, d_wall = load(base, "/chat/completions", direct_body, clients, per)
                f_lat, f_wall = load(front.url, "/algorithm/ChatRest", {"prompt": PROMPT}, clients, per)
                d_med, f_med = statistics.median(d_lat) * 1000, statistics.median(f_lat) * 1000
                print(f"{clients:7d} | {d_med:8.1f}, {len(d_lat) / d_wall:7.1f} | {f_med:8.1f}, {len(f_lat) / f_wall:7.1f} "
                      f"| {f_med - d_med:6.1f}")
    finally:
        upstream.terminate()
        upstream.wait()


if __name__ == "__main__":
    main()
