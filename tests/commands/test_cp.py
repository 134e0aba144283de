"""``lightalign cp``: copies run with their copied configs, edits take effect, nothing is overwritten silently."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from lightalign.cli import main as cli
from lightalign.commands.cp import configs_needed, plan_copy
from lightalign.paths import conf_dir

QUICK = ["model=tiny-random", "trainer.max_steps=1", "eval.num_prompts=0", "eval.evaluate_base=false",
         "data.eval=null", "data.limit=8"]


def test_configs_needed_follow_defaults_lists():
    primaries, groups = configs_needed("pretrain")
    assert primaries == ["pretrain", "sft"]  # pretrain.yaml builds on sft.yaml
    assert {"model", "quant", "lora", "data", "trainer", "eval"} <= set(groups) and "pipeline" not in groups


def test_a_recipe_copy_points_at_its_own_conf(tmp_path):
    plan = plan_copy("pretrain", tmp_path / "my_pretrain.py")
    recipe = plan.files[tmp_path / "my_pretrain.py"].decode()
    assert 'config_path="conf"' in recipe and 'config_name="pretrain"' in recipe
    assert "register_configs()" in recipe  # typed schemas still come from the package
    copied = {p.relative_to(tmp_path).as_posix() for p in plan.files}
    groups = configs_needed("sft")[1]
    options = {f"conf/{p.relative_to(conf_dir()).as_posix()}" for g in groups for p in (conf_dir() / g).glob("*.yaml")}
    assert copied == {"my_pretrain.py", "conf/sft.yaml", "conf/pretrain.yaml"} | options  # every option of each group


def test_pipeline_and_config_option_copies(tmp_path):
    plan = plan_copy("pipeline/dpo", tmp_path / "mine")
    names = {p.relative_to(tmp_path / "mine").as_posix() for p in plan.files}
    assert {"sft.py", "dpo.py", "conf/sft.yaml", "conf/dpo.yaml", "conf/pipeline/dpo.yaml"} <= names
    assert plan.run_hint.startswith(f"lightalign run --from {tmp_path / 'mine'} dpo")
    option = plan_copy("lora/default", tmp_path / "myconf")
    assert list(option.files) == [tmp_path / "myconf" / "lora" / "default.yaml"]


def test_refuses_to_overwrite_changes_without_force(tmp_path, capsys):
    dest = tmp_path / "my_sft.py"
    assert cli(["cp", "sft", str(dest)]) == 0
    assert cli(["cp", "sft", str(dest)]) == 0  # identical files: nothing to overwrite
    assert "copied 0 file(s)" in capsys.readouterr().out
    edited = tmp_path / "conf" / "lora" / "default.yaml"
    edited.write_text("r: 4\n")
    assert cli(["cp", "sft", str(dest)]) == 2
    assert "would overwrite 1 changed file(s)" in capsys.readouterr().err and edited.read_text() == "r: 4\n"
    assert cli(["cp", "sft", str(dest), "--force"]) == 0
    assert edited.read_text() != "r: 4\n"
    assert cli(["cp", "nope", str(tmp_path)]) == 2


def test_a_copied_option_is_selectable_with_config_dir(tmp_path, capsys):
    assert cli(["cp", "lora/small", str(tmp_path / "lora" / "tiny.yaml")]) == 0
    (tmp_path / "lora" / "tiny.yaml").write_text("r: 3\nalpha: 6\n")
    capsys.readouterr()
    assert cli(["run", "sft", "--config-dir", str(tmp_path), "lora=tiny", "--cfg", "job", "--package", "lora"]) == 0
    assert yaml.safe_load(capsys.readouterr().out.split("\n", 1)[1])["r"] == 3


@pytest.mark.slow
def test_editing_the_copy_changes_the_run(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "mine"
    assert cli(["cp", "sft", str(folder / "my_sft.py")]) == 0
    trainer_yaml = folder / "conf" / "trainer" / "sft.yaml"
    trainer_yaml.write_text(trainer_yaml.read_text().replace("learning_rate: 3e-4", "learning_rate: 1.234e-4"))
    monkeypatch.chdir(folder)
    assert cli(["run", "./my_sft.py", *QUICK, "hydra.run.dir=run"]) == 0
    assert yaml.safe_load((folder / "run" / "config.yaml").read_text())["trainer"]["learning_rate"] == 1.234e-4
    assert (folder / "run" / "manifest.json").is_file()
    assert cli(["validate", "./my_sft.py", "--config-name", "pretrain"]) == 0
    assert "stage: pretrain" in capsys.readouterr().out
    # `python my_sft.py` composes the same edited config (--cfg job prints it without training)
    job = subprocess.run([sys.executable, "my_sft.py", "--cfg", "job", "--package", "trainer"],
                         capture_output=True, text=True, check=True)
    assert "learning_rate: 0.0001234" in job.stdout


def test_a_copied_pipeline_composes_from_its_copied_configs(tmp_path, capsys):
    folder = tmp_path / "mine"
    assert cli(["cp", "pipeline/dpo", str(folder)]) == 0
    sft_yaml = folder / "conf" / "sft.yaml"
    sft_yaml.write_text(sft_yaml.read_text() + "trainer:\n  seed: 1234\n")
    capsys.readouterr()
    assert cli(["validate", "--from", str(folder), "pipeline/dpo"]) == 0
    assert "seed: 1234" in capsys.readouterr().out.split("# ---- dpo")[0]
