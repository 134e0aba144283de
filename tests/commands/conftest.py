"""A trained tiny SFT run shared by the chat, export and rank tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightalign.cli import main as cli


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """Two steps at a high learning rate: an adapter that visibly changes the model (a fresh one adds zero)."""
    out = tmp_path_factory.mktemp("trained") / "sft"
    code = cli(["run", "sft", "model=tiny-random", "trainer.max_steps=2", "trainer.learning_rate=2e-2",
                "trainer.warmup_ratio=0", "trainer.lr_scheduler_type=constant", "eval.num_prompts=0",
                "eval.evaluate_base=false", "data.eval=null", "data.limit=16", f"hydra.run.dir={out}"])
    assert code == 0
    return out
