"""Reliability: SIGKILL and resume, torn checkpoints, non-finite losses, safe loading."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lightalign.cli import main as cli
from lightalign.models import Quantization, load_base_model
from lightalign.training import find_resume_checkpoint

REPO = Path(__file__).resolve().parents[1]
# constant LR and no warm-up: a resumed schedule is then trivially the uninterrupted one
STEADY = ["model=tiny-random", "eval.num_prompts=0", "eval.evaluate_base=false", "trainer.lr_scheduler_type=constant",
          "trainer.warmup_ratio=0", "trainer.logging_steps=1", "trainer.save_steps=2", "trainer.max_steps=6"]
# Just enough rows for 6 steps; no held-out split, so no evaluation runs after training.
STAGE_ARGS = {
    "sft": ["data.limit=64"],
    "reward": ["data.limit=32", "data.eval_fraction=0"],  # 4 ranked groups (16 answers) per step
    "dpo": ["data.limit=8", "data.eval_fraction=0"],  # 8 rankings -> 48 pairs; a fresh adapter, base reference
}
STAGES = list(STAGE_ARGS)


def _overrides(stage: str, out: Path, extra: list[str]) -> list[str]:
    return [*STEADY, *STAGE_ARGS[stage], *extra, f"hydra.run.dir={out}"]


def _command(stage: str, out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, str(REPO / "recipes" / f"{stage}.py"), *_overrides(stage, out, extra)]


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_then_same_command_equals_uninterrupted_run(tmp_path, capsys, killed_after_a_checkpoint, stage):
    full, killed = tmp_path / "full", tmp_path / "killed"
    # The uninterrupted run and the restart run in this process (the same recipe code as the command line,
    # without paying for another interpreter and torch import); the run to kill needs a process of its own.
    assert cli(["run", stage, *_overrides(stage, full, [])]) == 0
    killed_after_a_checkpoint(stage, _overrides(stage, killed, []), killed, timeout=300)
    capsys.readouterr()
    assert cli(["run", stage, *_overrides(stage, killed, [])]) == 0
    assert "resuming from" in capsys.readouterr().out
    a, b = _adapter(full), _adapter(killed)
    assert a.keys() == b.keys()
    # Tolerance: fp32 adapters (and score head) and the same batches in the same order, so only the order of
    # floating-point summation may differ between the two runs: |a - b| <= 1e-5 + 1e-4 * |b| per weight.
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a), _max_difference(a, b)


@pytest.mark.parametrize("named", [True, False], ids=["hydra.run.dir given", "default directory"])
def test_ctrl_c_is_one_line_exit_130_and_says_how_to_resume(tmp_path, capsys, named):
    import signal
    import subprocess
    import time

    given = tmp_path / "sft"
    command = _command("sft", given, ["trainer.max_steps=200"])  # far more steps than it gets to run
    if not named:  # the default, outputs/sft/<time> under the working directory
        command = [arg for arg in command if not arg.startswith("hydra.run.dir=")]
    # as a terminal's foreground job gets it: a suite started in the background (`cmd &`) ignores SIGINT, and a
    # child inherits that, so Ctrl-C would never reach the run
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    out = given
    while find_resume_checkpoint(out) is None and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
        out = given if named else next((tmp_path / "outputs" / "sft").glob("*"), given)
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    hint = "re-run the same command to resume" if named else f"re-run it with hydra.run.dir={out} to resume"
    # (on a line a progress bar shares, which may also redraw after it as the process exits)
    assert f"lightalign: interrupted; {hint} from the last checkpoint\n" in err
    assert "Traceback" not in err and not (out / "manifest.json").exists()
    capsys.readouterr()
    assert cli(["run", "sft", *_overrides("sft", out, ["trainer.max_steps=4"])]) == 0  # resumes
    assert "resuming from" in capsys.readouterr().out


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
@pytest.mark.parametrize("stage", STAGES)
def test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path, capsys, stage):
    out = tmp_path / "nan"
    # A huge learning rate: the first update is finite, the next forward pass overflows.
    code = cli(["run", stage, *_overrides(stage, out, ["trainer.learning_rate=1e30", "trainer.save_steps=1",
                                                        "trainer.max_steps=4"])])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("lightalign: error:") == 1  # one line (progress bars share stderr)
    assert "Traceback" not in err
    match = re.search(r"lightalign: error: non-finite loss/gradients at step (\d+);", err)
    assert match, err[-500:]
    bad_step = int(match.group(1))
    # the last good step was saved and is what a restart resumes from; the run is not marked complete
    assert bad_step >= 2 and find_resume_checkpoint(out) == str(out / "checkpoints" / f"checkpoint-{bad_step - 1}")
    assert not (out / "manifest.json").exists()


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
