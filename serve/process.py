"""The production server in a child process on a loopback port the OS picks: for tests,
benchmarks and scripts that need the real thing (gunicorn + the model) and must clean it up.

    with ServerProcess(["--max-batch", "1"], log=Path("server.log")) as server:
        httpx.post(f"{server.url}/algorithm/ChatRest", json={"prompt": "hi"})
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from distillery.errors import DistilleryError

_LISTENING = re.compile(r"Listening at: (http://[\d.]+:\d+)")


class ServerFailed(DistilleryError, RuntimeError):
    """The server exited or never became ready; the message holds its log."""


class ServerProcess:
    def __init__(self, args: Sequence[str] = (), *, log: Path, env: Mapping[str, str] | None = None,
                 host: str = "127.0.0.1", ready_timeout_s: float = 300) -> None:
        """`args` are `distill-serve gunicorn` options (--model, --max-batch, ...); `env` is
        added to this process's environment; everything the server prints goes to `log`."""
        # Port 0: gunicorn logs the port it got, so parallel runs never race for one.
        self.argv = [sys.executable, "-m", "serve", "gunicorn", "--bind", f"{host}:0", *args]
        self.env = {**os.environ, **(env or {})}
        self.log = log
        self.ready_timeout_s = ready_timeout_s
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(self.argv, stdout=sink, stderr=subprocess.STDOUT, env=self.env)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            if not self.url and (found := _LISTENING.search(self.log.read_text(errors="replace"))):
                self.url = found.group(1)
            if self.url:
                try:
                    if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        raise ServerFailed(f"the server was not ready after {self.ready_timeout_s:g} s:\n{self.log.read_text()}")

    def stop(self, timeout_s: float = 60) -> int | None:
        """SIGTERM (gunicorn lets requests in flight finish), then SIGKILL if it hangs."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
