"""Shared fixtures. Every test session gets its own LIGHTALIGN_HOME so caches never leak between runs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

# Set before any lightalign import reads it; subprocesses inherit it.
os.environ.setdefault("LIGHTALIGN_HOME", tempfile.mkdtemp(prefix="lightalign-test-home-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]
TINY = "lightalign:tiny-random"


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from lightalign.models import load_tokenizer

    return load_tokenizer(TINY)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from lightalign.models import resolve_model_path

    return Path(resolve_model_path(TINY))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
