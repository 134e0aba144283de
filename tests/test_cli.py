"""The ``lightalign`` command: dispatch, ``ls``, launcher arguments, errors as one line."""

from __future__ import annotations

import json
import os

import pytest

from lightalign.cli import main as cli
from lightalign.distributed import strip_launcher_args


def test_ls_lists_stages_pipelines_and_every_group(capsys):
    assert cli(["ls"]) == 0
    out = capsys.readouterr().out
    assert "stage sft       recipes/sft.py --config-name sft" in out
    assert "pipeline rlhf   sft -> rankings -> reward -> ppo" in out
    assert "model: " in out and "tiny-random" in out and "quant: nf4, none" in out
    assert "pipeline:" not in out  # pipelines are listed with their stages, not as a config group


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "--local_rank=1", "sft"], ["run", "sft"]),
        (["--local-rank", "0", "run", "sft", "a=1"], ["run", "sft", "a=1"]),
        (["run", "sft", "trainer.local_rank_x=1"], ["run", "sft", "trainer.local_rank_x=1"]),
    ],
)
def test_launcher_arguments_are_stripped(monkeypatch, argv, expected):
    monkeypatch.setenv("LOCAL_RANK", "unset")  # registers the variable's state, so what the call sets is undone
    monkeypatch.delenv("LOCAL_RANK")
    assert strip_launcher_args(argv) == expected
    if len(expected) < len(argv):
        assert os.environ["LOCAL_RANK"] in ("0", "1")  # the value moved to where transformers reads it


def test_injected_local_rank_does_not_reach_hydra(monkeypatch, capsys):
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert cli(["validate", "--local_rank=0", "sft", "model=tiny-random"]) == 0
    assert "name_or_path: lightalign:tiny-random" in capsys.readouterr().out


def test_unknown_target_is_one_line(capsys):
    assert cli(["run", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stages: sft, pretrain" in err


def test_sweeps_of_a_pipeline_are_refused(capsys):
    assert cli(["run", "rlhf", "-m", "trainer.max_steps=1,2"]) == 2
    assert "one stage at a time" in capsys.readouterr().err


def test_report_prints_a_sweep_table(tmp_path, capsys):
    (tmp_path / "multirun.yaml").write_text("{}\n")
    for job, (rank, loss) in enumerate([(8, 1.5), (16, 1.25)]):
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        (tmp_path / str(job) / ".hydra" / "overrides.yaml").write_text(f"- lora.r={rank}\n- model=tiny-random\n")
        (tmp_path / str(job) / "metrics.json").write_text(json.dumps({"train_loss": loss, "other": 3}))
    assert cli(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| job | lora.r | train_loss |" in out  # model=tiny-random is the same in every job: not a column
    assert "| 1 | 16 | 1.25 |" in out
    assert (tmp_path / "sweep.md").is_file()
