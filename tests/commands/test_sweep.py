"""Hydra multirun sweeps: one directory per combination, a results table, nothing carried between jobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lightalign.cli import main as cli
from lightalign.commands.sweep import format_sweep_table
from lightalign.demo import ensure_demo_data


def test_table_shows_what_varies_and_marks_unfinished_jobs():
    jobs = [{"job": 0, "overrides": {"lora.r": "8", "model": "tiny-random"}, "metrics": {"train_loss": 1.23456}},
            {"job": 1, "overrides": {"lora.r": "16", "model": "tiny-random"}, "metrics": {}}]
    table = format_sweep_table(jobs)
    assert table.splitlines()[0] == "| job | lora.r | train_loss |"
    assert "| 0 | 8 | 1.235 |" in table and "| 1 | 16 | – |" in table


@pytest.mark.slow
def test_sweep_with_relative_data_and_no_state_carried_between_jobs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # every path below is relative to this working directory
    rows = Path(ensure_demo_data()["sft"]).read_text().splitlines()[:12]
    Path("data").mkdir()
    Path("data/train.jsonl").write_text("\n".join(rows) + "\n")
    common = ["model=tiny-random", "trainer.max_steps=1", "trainer.warmup_ratio=0", "trainer.learning_rate=1e-2",
              "eval.num_prompts=0", "eval.evaluate_base=false", "data.train=data/train.jsonl",
              "data.eval=data/train.jsonl"]
    assert cli(["run", "sft", "-m", "lora.r=2,4", *common, "hydra.sweep.dir=sweep"]) == 0
    out = capsys.readouterr().out
    assert "| job | lora.r | train_loss | eval_loss |" in out
    assert (tmp_path / "sweep" / "sweep.md").read_text().strip() == out[out.index("| job"):].strip()
    for job, rank in ((0, 2), (1, 4)):
        job_dir = tmp_path / "sweep" / str(job)
        assert yaml.safe_load((job_dir / "config.yaml").read_text())["lora"]["r"] == rank
        assert json.loads((job_dir / "metrics.json").read_text())["train_rows"] == 12  # our relative file
        adapter = load_file(job_dir / "adapter" / "adapter_model.safetensors")
        assert {t.shape[0] for k, t in adapter.items() if "lora_A" in k} == {rank}

    # the second job equals the same run alone: no seed, model or trainer state carried over from the first
    assert cli(["run", "sft", "lora.r=4", *common, "hydra.run.dir=alone"]) == 0
    swept = json.loads((tmp_path / "sweep" / "1" / "metrics.json").read_text())
    alone = json.loads((tmp_path / "alone" / "metrics.json").read_text())
    assert swept["train_loss"] == pytest.approx(alone["train_loss"], rel=1e-6)
    assert swept["eval_loss"] == pytest.approx(alone["eval_loss"], rel=1e-6)
    a = load_file(tmp_path / "sweep" / "1" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "alone" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
