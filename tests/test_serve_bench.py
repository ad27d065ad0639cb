"""bench/serve_bench.py's sections exist and its help says what it measures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "serve_bench.py"


def test_help_names_the_modes() -> None:
    out = subprocess.run([sys.executable, str(BENCH), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--only" in out and "--quick" in out and "one request at a time" in out
