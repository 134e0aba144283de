"""``lightalign validate``: compose + check without loading a model; every problem is one line, exit 2."""

from __future__ import annotations

import pytest
import yaml

from lightalign.cli import main as cli


def test_prints_the_resolved_config(capsys):
    assert cli(["validate", "sft", "model=tiny-random", "trainer.max_steps=3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# ---- sft: valid ----\n")
    cfg = yaml.safe_load(out)
    assert cfg["trainer"]["max_steps"] == 3 and cfg["model"]["name_or_path"] == "lightalign:tiny-random"
    assert "hydra" not in cfg


def test_a_pipeline_validates_every_stage_with_routed_overrides(capsys):
    assert cli(["validate", "pipeline/dpo", "trainer.max_steps=2", "dpo.dpo.beta=0.3"]) == 0
    out = capsys.readouterr().out
    assert "# ---- sft: valid ----" in out and "# ---- dpo: valid ----" in out
    dpo = yaml.safe_load(out.split("# ---- dpo: valid ----")[1])
    assert dpo["dpo"]["beta"] == 0.3 and dpo["trainer"]["max_steps"] == 2
    assert dpo["dpo"]["sft_adapter"].endswith("sft")  # handed off by stage name


def test_a_pipeline_validates_although_the_files_its_stages_hand_on_do_not_exist_yet(capsys):
    assert cli(["validate", "rlhf", "trainer.max_steps=2"]) == 0  # reward reads rankings' rankings.jsonl
    headers = [line for line in capsys.readouterr().out.splitlines() if line.startswith("# ----")]
    assert headers == ["# ---- sft: valid ----", "# ---- rankings: valid ----", "# ---- reward: valid ----",
                       "# ---- ppo: valid ----"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["lora.rnak=8"], "Key 'rnak' not in 'LoraSettings'"),
        (["lora.r=abc"], "could not be converted to Integer"),
        (["model=nope"], "tiny-random"),
        (["data=jsonl"], "key: data.train"),  # mandatory value left unset
        (["data.train=missing.jsonl"], "data.train=missing.jsonl: file not found"),
        (["model.name_or_path=./no/such/model"], "model folder does not exist"),
        (["trainer.report_to=comet"], "valid: none, tensorboard, wandb, mlflow"),
    ],
)
def test_bad_configs_fail_in_one_line(capsys, overrides, expected):
    assert cli(["validate", "sft", *overrides]) == 2
    captured = capsys.readouterr()
    assert expected in captured.err and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err and "valid ----" not in captured.out


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("ppo.kl_estimator=k9", "ppo.kl_estimator='k9' is not one of k1, k3"),
        ("ppo.value_init=bogus", "ppo.value_init='bogus' is not one of auto, reward, fresh"),
    ],
)
def test_bad_ppo_choices_fail_before_any_model_loads(capsys, override, expected):
    assert cli(["validate", "ppo", override]) == 2
    captured = capsys.readouterr()
    assert expected in captured.err and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err and "valid ----" not in captured.out
