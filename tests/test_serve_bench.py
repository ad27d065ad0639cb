"""bench/serve_bench.py's modes exist; the GPU mode refuses clearly where there is no GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "serve_bench.py"


def test_help_names_the_modes() -> None:
    out = subprocess.run([sys.executable, str(BENCH), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--gpu" in out and "--quick" in out and "one request at a time" in out


def test_gpu_mode_without_cuda_says_so_and_fails() -> None:
    torch = pytest.importorskip("torch", reason="needs the model extra")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the mode would run")
    result = subprocess.run([sys.executable, str(BENCH), "--gpu"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "--gpu needs a CUDA GPU" in result.stderr and "Traceback" not in result.stderr
