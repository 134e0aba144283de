"""Reliability: SIGKILL and resume, torn checkpoints, non-finite losses, safe loading."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lightalign.models import Quantization, load_base_model
from lightalign.training import find_resume_checkpoint

REPO = Path(__file__).resolve().parents[1]
# constant LR and no warm-up: a resumed schedule is then trivially the uninterrupted one
STEADY = ["model=tiny-random", "eval.num_prompts=0", "eval.evaluate_base=false", "trainer.lr_scheduler_type=constant",
          "trainer.warmup_ratio=0", "trainer.logging_steps=1", "trainer.save_steps=2", "trainer.max_steps=6"]
STAGE_ARGS = {"sft": ["data.limit=64"]}


def _command(stage: str, out: Path, extra: list[str]) -> list[str]:
    recipe = {"sft": "sft.py", "reward": "reward.py", "dpo": "dpo.py"}[stage]
    return [sys.executable, str(REPO / "recipes" / recipe), *STEADY, *STAGE_ARGS.get(stage, []), *extra,
            f"hydra.run.dir={out}"]


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft"])
def test_sigkill_then_same_command_equals_uninterrupted_run(tmp_path, stage):
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_command(stage, full, []), check=True, capture_output=True)
    process = subprocess.Popen(_command(stage, killed, []), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while find_resume_checkpoint(killed) is None and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)  # between checkpoints: step 2 is saved, later steps are lost
    process.wait()
    assert find_resume_checkpoint(killed) is not None and not (killed / "manifest.json").exists()
    result = subprocess.run(_command(stage, killed, []), check=True, capture_output=True, text=True)
    assert "resuming from" in result.stdout
    a, b = _adapter(full), _adapter(killed)
    # tolerance: float32 adapters, same batches; only summation order may differ
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)


def test_torn_checkpoint_is_skipped(tmp_path):
    root = tmp_path / "checkpoints"
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = root / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"\0" * 10)
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    (root / "tmp-checkpoint-8").mkdir()  # a checkpoint still being written
    assert find_resume_checkpoint(tmp_path) == str(root / "checkpoint-4")


@pytest.mark.slow
def test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "nan"
    command = _command("sft", out, ["trainer.learning_rate=1e30", "trainer.save_steps=1", "trainer.max_steps=4"])
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("lightalign: error:") == 1  # one line (progress bars share stderr)
    assert "lightalign: error: non-finite loss/gradients at step 3;" in result.stderr
    assert "Traceback" not in result.stderr
    assert find_resume_checkpoint(out) is not None and not (out / "manifest.json").exists()


def test_weights_load_only_from_safetensors(tmp_path, tiny_model_dir):
    import shutil

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")  # a pickle: loading it could run code
    with pytest.raises(Exception, match="safetensors"):
        load_base_model(str(folder), Quantization(load_in_4bit=False))


def test_trust_remote_code_is_off_by_default():
    import inspect

    from lightalign.config.schema import ModelSettings
    from lightalign.models import load_tokenizer

    assert ModelSettings().trust_remote_code is False
    assert inspect.signature(load_base_model).parameters["trust_remote_code"].default is False
    assert inspect.signature(load_tokenizer).parameters["trust_remote_code"].default is False
