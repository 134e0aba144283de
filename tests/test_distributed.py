"""Multi-process launch: SFT under DDP with 2 CPU processes (gloo) through the real 4-bit path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightalign.distributed import is_main_process, process_rank

REPO = Path(__file__).resolve().parents[1]


def test_rank_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert process_rank() == 0 and is_main_process()
    monkeypatch.setenv("RANK", "1")
    assert process_rank() == 1 and not is_main_process()


@pytest.mark.slow
def test_sft_under_ddp_with_two_cpu_processes(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes share the cores
    # `torchrun -m lightalign` = `accelerate launch --multi_gpu -m lightalign` on CPU: both start N processes
    # with RANK/LOCAL_RANK/WORLD_SIZE set; the trainer then runs DDP over gloo.
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "lightalign", "run", "sft", "model=tiny-random", "trainer.max_steps=1", "trainer.logging_steps=1",
         "trainer.per_device_train_batch_size=2", "data.limit=16", "data.eval_limit=4", "eval.num_prompts=2",
         "eval.max_new_tokens=4", f"hydra.run.dir={out}"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("lightalign: sft finished") == 1  # rank 1 trains but writes nothing
    assert result.stdout.count("train rows: 16 kept") == 2  # both ranks ran the recipe
    log = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    # 16 rows, 2 per process per step: one step covers 4 rows = 1/4 epoch with 2 processes (1/8 with one)
    assert [row["epoch"] for row in log if "loss" in row] == [0.25]
    for name in ("adapter/adapter_model.safetensors", "metrics.json", "samples.jsonl", "manifest.json"):
        assert (out / name).is_file(), name


@pytest.mark.parametrize("config", sorted((REPO / "examples" / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_example_accelerate_configs_are_valid(config):
    from accelerate.commands.config.config_args import ClusterConfig

    assert ClusterConfig.from_yaml_file(str(config)).num_processes == 2  # unknown keys would raise
