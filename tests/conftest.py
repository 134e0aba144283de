"""Shared fixtures. Every test session gets its own LIGHTALIGN_HOME so caches never leak between runs."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
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


@pytest.fixture(scope="session")
def sft_adapter(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """An ``adapter/`` folder as the SFT stage writes one, for tiny-random: a random LoRA adapter
    (``init_lora_weights=False``, so the SFT model differs from the base). What PPO and GRPO do with an SFT
    adapter does not depend on how it was trained."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    folder = tmp_path_factory.mktemp("sft") / "adapter"
    torch.manual_seed(7)
    model = get_peft_model(LlamaForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def expressive_tiny(tmp_path_factory) -> Path:
    """The tiny tokenizer on a tiny Llama initialised 10x wider than tiny-random (std 0.2, not 0.02).

    tiny-random's logits are nearly uniform and a LoRA on its linear layers can barely move them; with
    larger embeddings a rank-8 adapter can change what the model says within a few dozen updates.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from lightalign.models.tiny import build_tiny_tokenizer

    folder = tmp_path_factory.mktemp("expressive_tiny")
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=0,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
                         initializer_range=0.2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def killed_after_a_checkpoint():
    """Run a recipe in a process of its own and SIGKILL it once its first checkpoint is complete, before it ends:
    what a crash between checkpoints leaves behind. Call it as ``killed_after_a_checkpoint("ppo", overrides, out)``
    with ``hydra.run.dir=out`` among the overrides."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from lightalign.training import find_resume_checkpoint

    def run(recipe: str, overrides: list[str], out: Path, timeout: float = 600) -> None:
        command = [sys.executable, str(REPO / "recipes" / f"{recipe}.py"), *overrides]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while find_resume_checkpoint(out) is None and time.time() < deadline and process.poll() is None:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)  # between checkpoints: the first is saved, later steps are lost
        process.wait()
        assert find_resume_checkpoint(out) is not None and not (out / "manifest.json").exists()

    return run


# docs/pipelines.md's smoke run of the full pipeline, as the docs show it (tests/test_docs.py checks they still do)
FULL_SMOKE_RUN = "lightalign run full model=tiny-random trainer.max_steps=2 hydra.run.dir=DIR"


@dataclass(frozen=True)
class FullSmokeRun:
    """A finished :data:`FULL_SMOKE_RUN` and what ``pipeline.json`` said on the way."""

    command: str  # as the docs show it, with DIR
    run_dir: Path
    overrides: tuple[str, ...]  # the command's arguments after ``lightalign run full``, the run directory filled in
    after_two_stages: dict  # pipeline.json's stages after a first run of sft and rankings alone
    after_all: dict  # and after the command itself, run next in the same directory


@pytest.fixture(scope="session")
def full_smoke_run(tmp_path_factory: pytest.TempPathFactory) -> FullSmokeRun:
    """:data:`FULL_SMOKE_RUN`, run as if a first run had been killed after its second stage: ``stages=[sft,
    rankings]`` first, then the command itself. The five stages are the suite's most expensive minute and a half;
    tests/test_pipeline.py (hand-off, stage-level resume, the report) and tests/test_docs.py (the command the docs
    show) both read this one run. Tests that run the pipeline again in it must leave it finished."""
    import json

    from lightalign.cli import main as cli

    run_dir = tmp_path_factory.mktemp("full-smoke") / "run"
    overrides = tuple(FULL_SMOKE_RUN.replace("DIR", str(run_dir)).split()[3:])

    def stages() -> dict:
        return json.loads((run_dir / "pipeline.json").read_text())["stages"]

    assert cli(["run", "full", "stages=[sft,rankings]", *overrides]) == 0
    after_two = stages()
    assert cli(["run", "full", *overrides]) == 0
    return FullSmokeRun(FULL_SMOKE_RUN, run_dir, overrides, after_two, stages())


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def count_4bit_calls():
    """A context manager counting the forward calls of every bitsandbytes 4-bit layer inside it: ``with
    count_4bit_calls() as calls: ...; len(calls)`` (0 when dense weights stood in for every 4-bit layer)."""
    from contextlib import contextmanager

    import bitsandbytes as bnb

    @contextmanager
    def counting():
        calls: list[int] = []
        original = bnb.nn.Linear4bit.forward

        def counted(self, x):
            calls.append(1)
            return original(self, x)

        bnb.nn.Linear4bit.forward = counted
        try:
            yield calls
        finally:
            bnb.nn.Linear4bit.forward = original

    return counting
