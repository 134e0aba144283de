"""The SFT recipe end to end on tiny-random, through the real 4-bit path."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from datasets import Dataset
from peft import PeftModel
from safetensors.torch import load_file
from trl import SFTConfig, SFTTrainer

from lightalign.cli import main as cli
from lightalign.data import load_lm_examples
from lightalign.data.collators import LMCollator
from lightalign.data.tokenize import tokenize_lm_examples
from lightalign.models import LoraSettings, Quantization, apply_lora, load_base_model, resolve_precision
from lightalign.rundir import LOG, read_log
from lightalign.training import TrainerSettings, build_trl_args

REPO = Path(__file__).resolve().parents[2]
TINY = "lightalign:tiny-random"

pytestmark = pytest.mark.slow

QUICK = ["model=tiny-random", "trainer.max_steps=2", "eval.num_prompts=2", "eval.max_new_tokens=8"]


def _check_run_dir(out):
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/tokenizer.json",
                 "metrics.json", "samples.jsonl", "config.yaml", "manifest.json", "logs/metrics.jsonl"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(isinstance(v, int | float) for v in metrics.values())
    for key in ("gold_score", "base_gold_score", "eval_loss", "perplexity", "train_loss", "train_tokens_per_second",
                "train_rows", "train_truncated", "train_skipped"):
        assert key in metrics, key
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and {"prompt", "response"} <= set(samples[0])
    # only adapter weights are saved
    assert all("lora_" in key for key in load_file(out / "adapter" / "adapter_model.safetensors"))
    return metrics


def test_lightalign_run_sft_and_python_recipe_write_the_same_run(tmp_path):
    cli_dir, script_dir = tmp_path / "cli", tmp_path / "script"
    assert cli(["run", "sft", *QUICK, f"hydra.run.dir={cli_dir}"]) == 0
    from_cli = _check_run_dir(cli_dir)
    subprocess.run([sys.executable, str(REPO / "recipes" / "sft.py"), *QUICK, f"hydra.run.dir={script_dir}"],
                   check=True, capture_output=True)
    from_script = _check_run_dir(script_dir)
    assert from_cli["train_loss"] == pytest.approx(from_script["train_loss"], rel=1e-4)  # seeded: same run

    # the adapter reloads on the 4-bit base and generates
    base = load_base_model(TINY, Quantization())
    model = PeftModel.from_pretrained(base, cli_dir / "adapter")
    assert isinstance(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear4bit)
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)


@pytest.mark.gpu
def test_the_sft_recipe_runs_on_cuda(tmp_path):
    out = tmp_path / "run"
    assert cli(["run", "sft", *QUICK, f"hydra.run.dir={out}"]) == 0
    metrics = _check_run_dir(out)
    assert math.isfinite(metrics["train_loss"]) and metrics["train_tokens"] > 0


def test_only_adapter_weights_change_in_4bit_training(tmp_path, tiny_tokenizer):
    rows, _ = tokenize_lm_examples(tiny_tokenizer, load_lm_examples("demo:sft", limit=16), max_length=256)
    model = apply_lora(load_base_model(TINY, Quantization()), LoraSettings(r=4, alpha=8))
    before = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    args = build_trl_args(SFTConfig, TrainerSettings(max_steps=3, learning_rate=1e-2, logging_steps=1),
                          tmp_path, resolve_precision("auto"), dataset_kwargs={"skip_prepare_dataset": True},
                          max_length=None, save_strategy="no")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         data_collator=LMCollator(tiny_tokenizer.pad_token_id), processing_class=tiny_tokenizer)
    trainer.train()
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all("lora_" in name for name in changed)
    assert any("lora_B" in name for name in changed)
    assert isinstance(model.base_model.model.model.layers[0].mlp.down_proj.base_layer, bnb.nn.Linear4bit)


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    common = ["model=tiny-random", "eval.num_prompts=0", "eval.evaluate_base=false", "trainer.save_steps=2",
              "trainer.lr_scheduler_type=constant", "trainer.warmup_ratio=0", "trainer.logging_steps=1"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert cli(["run", "sft", *common, "trainer.max_steps=4", f"hydra.run.dir={full}"]) == 0
    assert cli(["run", "sft", *common, "trainer.max_steps=2", f"hydra.run.dir={resumed}"]) == 0
    assert cli(["run", "sft", *common, "trainer.max_steps=4", f"hydra.run.dir={resumed}"]) == 0
    log = [json.loads(line) for line in (resumed / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log if "loss" in row] == [1, 2, 3, 4]  # steps 3-4 ran after the resume
    a = load_file(full / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["lora.rnak=8"], "rnak"),
        (["model=nope"], "tiny-random"),
        (["model.name_or_path=/does/not/exist"], "model folder /does/not/exist does not exist"),
        (["data.train=BAD"], "bad.jsonl:2: field 'completion'"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(tmp_path, capsys, overrides, expected):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": 3}\n', encoding="utf-8")
    overrides = [o.replace("BAD", str(bad)) for o in overrides]
    code = cli(["run", "sft", "model=tiny-random", f"hydra.run.dir={tmp_path / 'out'}", *overrides])
    err = capsys.readouterr().err
    assert code != 0 and expected in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_report_to_tensorboard_writes_the_loss(tmp_path, tensorboard_scalars):
    out = tmp_path / "run"
    args = ["run", "sft", "model=tiny-random", "trainer.max_steps=2", "trainer.logging_steps=1", "eval.num_prompts=0",
            "trainer.report_to=tensorboard", f"hydra.run.dir={out}"]
    assert cli(args) == 0
    loss = tensorboard_scalars(out)["train/loss"]
    logged = [row for row in read_log(out / LOG) if "loss" in row]
    assert [step for step, _ in loss] == [1, 2] and [row["step"] for row in logged] == [1, 2]
    assert [value for _, value in loss] == [pytest.approx(row["loss"], rel=1e-5) for row in logged]
