"""The PPO recipe end to end on tiny-random through the real 4-bit path: run dir, kill + resume, NaN, config errors.

The reward model is a real reward stage run (``reward_run`` in this folder's conftest); the SFT stage is a
random LoRA adapter (what PPO does with it does not depend on how it was trained).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lightalign.cli import main as cli
from lightalign.rl.checkpoint import load_loop_checkpoint
from lightalign.rundir import LOG, read_log
from lightalign.training import find_resume_checkpoint

REPO = Path(__file__).resolve().parents[2]
TINY = "lightalign:tiny-random"
QUICK = ["model=tiny-random", "ppo.batch_size=4", "ppo.max_new_tokens=6", "ppo.num_ppo_epochs=2",
         "trainer.per_device_train_batch_size=2", "eval.max_new_tokens=6", "trainer.logging_steps=1"]
# The per-update metrics the issue asks for, logged to DIR/logs/metrics.jsonl.
UPDATE_METRICS = ("score", "kl", "non_score_reward", "total_reward", "entropy", "policy_clip_frac", "approx_kl",
                  "value_loss", "value_clip_frac", "explained_variance", "answer_tokens", "eos_fraction",
                  "tokens_per_second", "kl_coef", "learning_rate")

pytestmark = pytest.mark.slow


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


def test_lightalign_run_ppo_writes_the_run_dir(tmp_path, check_policy_run, sft_adapter, reward_run):
    out = tmp_path / "run"
    args = ["run", "ppo", *QUICK, "trainer.max_steps=2", "eval.num_prompts=2", f"hydra.run.dir={out}",
            f"ppo.sft_adapter={sft_adapter}", f"ppo.reward_model={reward_run}"]
    assert cli(args) == 0
    check_policy_run(out, sft_adapter, steps=2)  # the public files; the policy moved and loads
    metrics = json.loads((out / "metrics.json").read_text())
    # The names every stage shares (the pipeline report reads them); sft_* = the SFT model, the reference.
    for key in ("gold_score", "rm_score", "win_rate_rm", "win_rate_gold", "kl_to_sft", "sft_rm_score",
                "sft_gold_score", "answer_tokens", "eos_fraction", "train_score_last", "train_prompts_rows"):
        assert isinstance(metrics[key], float), key
    assert metrics["train_updates"] == 2
    rows = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["stage"] == "ppo" for r in rows)
    for key in UPDATE_METRICS:
        assert all(isinstance(r[key], float) for r in rows), key
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and {"prompt", "response", "gold_score", "rm_score"} <= set(samples[0])


def _resume_args(out: Path, sft_adapter: Path, reward_run: Path) -> list[str]:
    # Adaptive β with a short horizon: β moves at every update, so a resume that lost it would show; the SFT loss
    # on demonstrations, so a resume that lost their order would show in sft_loss.
    return [*QUICK, "trainer.max_steps=6", "trainer.save_steps=2", "trainer.save_total_limit=0",
            "eval.num_prompts=0", f"hydra.run.dir={out}", f"ppo.sft_adapter={sft_adapter}",
            f"ppo.reward_model={reward_run}", "ppo.kl_target=0.01", "ppo.kl_horizon=20", "ppo.sft_weight=0.5"]


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, capsys, killed_after_a_checkpoint, sft_adapter,
                                                        reward_run):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert cli(["run", "ppo", *_resume_args(full, sft_adapter, reward_run)]) == 0
    killed_after_a_checkpoint("ppo", _resume_args(killed, sft_adapter, reward_run), killed)
    capsys.readouterr()
    assert cli(["run", "ppo", *_resume_args(killed, sft_adapter, reward_run)]) == 0
    assert "resuming from" in capsys.readouterr().out

    # Tolerance: the same rollouts (restored RNG, prompt order, optimiser, KL controller) on fp32 adapters, so
    # at most summation order may differ: |a - b| <= 1e-5 + 1e-4 * |b| per weight. On CPU it is exact.
    a, b = _adapter(full), _adapter(killed)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)
    # The value role and head resumed as well, and the log holds each update exactly once.
    last_full = load_loop_checkpoint(full / "checkpoints" / "checkpoint-6").trainable
    last_killed = load_loop_checkpoint(killed / "checkpoints" / "checkpoint-6").trainable
    assert all(torch.allclose(last_full[k], last_killed[k], atol=1e-5, rtol=1e-4) for k in last_full)
    rows = [json.loads(line) for line in (killed / "logs" / "metrics.jsonl").read_text().splitlines()]
    full_rows = [json.loads(line) for line in (full / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert [r["score"] for r in rows] == pytest.approx([r["score"] for r in full_rows], abs=1e-5)
    betas = [r["kl_coef"] for r in rows]
    assert len(set(betas)) == 6 and betas == pytest.approx([r["kl_coef"] for r in full_rows], rel=1e-6)
    sft_losses = [r["sft_loss"] for r in rows]
    assert len(set(sft_losses)) == 6 and sft_losses == pytest.approx([r["sft_loss"] for r in full_rows], abs=1e-5)


def test_non_finite_reward_stops_naming_the_update_and_keeps_the_checkpoint(tmp_path, capsys, judge_fails_once):
    out = tmp_path / "nan"
    args = ["run", "ppo", *QUICK, "reward=gold_judge", "trainer.max_steps=3", "trainer.save_steps=1",
            "eval.num_prompts=0", f"hydra.run.dir={out}"]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "lightalign: error: PPO update 2: the reward was nan" in err and "Traceback" not in err
    assert "checkpoint-1" in err
    assert find_resume_checkpoint(out) == str(out / "checkpoints" / "checkpoint-1")
    assert not (out / "manifest.json").exists()
    judge_fails_once()  # judges normally again
    assert cli(args) == 0  # the same command resumes from update 1 and finishes
    assert "resuming from" in capsys.readouterr().out


def test_exactly_one_reward_is_required(tmp_path, capsys, reward_run):
    common = ["run", "ppo", "model=tiny-random", f"hydra.run.dir={tmp_path / 'x'}"]
    assert cli([*common, "reward=gold_judge", f"ppo.reward_model={reward_run}"]) == 2
    assert cli(common) == 2
    assert capsys.readouterr().err.count("set exactly one reward") == 2


def test_a_bad_sft_weight_fails_before_anything_loads(tmp_path, capsys):
    out = tmp_path / "x"
    common = ["run", "ppo", "model=tiny-random", "reward=gold_judge", f"hydra.run.dir={out}"]
    assert cli([*common, "ppo.sft_weight=-1"]) == 2
    assert cli([*common, "ppo.sft_weight=inf"]) == 2
    err = capsys.readouterr().err
    assert "ppo.sft_weight=-1.0: give a finite weight >= 0" in err and "ppo.sft_weight=inf: give" in err
    assert "Traceback" not in err and not (out / "config.yaml").exists()  # the typed config failed: nothing ran


def test_the_sft_loss_without_dialogues_in_data_train_is_a_one_line_error(tmp_path, error_line):
    args = ["run", "ppo", *QUICK, "reward=gold_judge", "data.train=demo:prompts", "ppo.sft_weight=0.5",
            f"hydra.run.dir={tmp_path / 'x'}"]
    assert cli(args) == 2
    line = error_line()
    assert "prompts.jsonl:1: unrecognised row" in line and "ppo.sft_weight > 0 learns from" in line


def test_resuming_with_the_sft_loss_a_run_saved_without_it_is_a_one_line_error(tmp_path, capsys, error_line):
    out = tmp_path / "run"
    args = ["run", "ppo", *QUICK, "reward=gold_judge", "trainer.save_steps=1", "eval.num_prompts=0",
            f"hydra.run.dir={out}"]
    assert cli([*args, "trainer.max_steps=1", "ppo.sft_weight=0"]) == 0  # the demo's default has it on
    capsys.readouterr()
    assert cli([*args, "trainer.max_steps=2", "ppo.sft_weight=0.5"]) == 2
    assert error_line() == (f"lightalign: error: cannot resume {out / 'checkpoints' / 'checkpoint-1'} with "
                            "ppo.sft_weight > 0: it was saved without the SFT loss; resume with the same settings or "
                            "use a new hydra.run.dir")


def test_report_to_tensorboard_gets_each_update_and_evaluation(tmp_path, tensorboard_scalars):
    # PPO's own loop, not a transformers trainer: its rows reach the tracker as TRL stages' do
    out = tmp_path / "run"
    args = ["run", "ppo", *QUICK, "reward=gold_judge", "trainer.max_steps=2", "eval.num_prompts=2",
            "eval.every_n_steps=2", "eval.evaluate_base=false", "trainer.report_to=tensorboard", f"hydra.run.dir={out}"]
    assert cli(args) == 0
    scalars = tensorboard_scalars(out)
    logged = [row for row in read_log(out / LOG) if "score" in row]
    assert [row["step"] for row in logged] == [1, 2]
    for key in ("score", "kl", "policy_loss", "value_loss"):  # the same numbers as the JSONL log
        assert scalars[f"train/{key}"] == [(row["step"], pytest.approx(row[key], rel=1e-5)) for row in logged]
    assert [step for step, _ in scalars["eval/kl_to_base"]] == [2]
