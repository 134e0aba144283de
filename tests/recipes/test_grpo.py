"""The GRPO recipe end to end on tiny-random through the real 4-bit path: run dir, kill + resume, bad rewards.

The SFT stage is a random LoRA adapter (what GRPO does with it does not depend on how it was trained); the
reward is the demo judge, whose conciseness and form parts give a random model's answers a spread.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lightalign.cli import main as cli
from lightalign.models import LoraSettings, Quantization, load_base_model, resolve_precision
from lightalign.models.roles import POLICY, REFERENCE, REWARD, load_policy_and_reference
from lightalign.reward_model import RewardModel, RewardRole, SharedBaseRewardModel
from lightalign.rundir import LOG, StageRun, read_log
from lightalign.training import find_resume_checkpoint

REPO = Path(__file__).resolve().parents[2]
TINY = "lightalign:tiny-random"
# tiny-random rarely stops within 6 tokens: with the demo's grpo.mask_truncated nearly every answer would be left out
QUICK = ["model=tiny-random", "grpo.batch_size=2", "grpo.group_size=4", "grpo.max_new_tokens=6",
         "trainer.per_device_train_batch_size=4", "trainer.gradient_accumulation_steps=2", "eval.max_new_tokens=6",
         "rewards=[correct,gold_judge]", "grpo.mask_truncated=false"]
# The per-step metrics docs/grpo.md lists, logged to DIR/logs/metrics.jsonl.
STEP_METRICS = ("reward", "reward/correct", "reward/gold", "reward_std", "zero_spread_fraction", "kl", "loss",
                "clip_frac", "ratio_mean", "grad_norm", "answer_tokens", "eos_fraction", "learning_rate", "epoch",
                "step_seconds", "sample_seconds", "samples_per_second")

pytestmark = pytest.mark.slow


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


def test_lightalign_run_grpo_writes_the_run_dir(tmp_path, check_policy_run, sft_adapter):
    out = tmp_path / "run"
    args = ["run", "grpo", *QUICK, "trainer.max_steps=2", "eval.num_prompts=2", f"hydra.run.dir={out}",
            f"grpo.sft_adapter={sft_adapter}"]
    assert cli(args) == 0
    check_policy_run(out, sft_adapter, steps=2)  # the public files; the policy moved and loads
    metrics = json.loads((out / "metrics.json").read_text())
    # The names every stage shares (the pipeline report reads them); sft_* = the SFT model, the reference.
    for key in ("correct_fraction", "gold_score", "reward_score", "win_rate_gold", "win_rate_reward", "kl_to_sft",
                "sft_gold_score", "sft_correct_fraction", "answer_tokens", "eos_fraction", "train_reward_first",
                "train_reward_last", "train_kl_last", "train_samples_per_second", "train_prompts_rows"):
        assert isinstance(metrics[key], float), key
    assert metrics["train_steps"] == 2
    rows = read_log(out / LOG)
    assert [r["step"] for r in rows] == [1, 2] and all(r["stage"] == "grpo" for r in rows)
    for key in STEP_METRICS:
        assert all(isinstance(r[key], float) for r in rows), key
    # each part is logged unweighted, the reward is their weighted sum (both weights 1)
    assert all(r["reward"] == pytest.approx(r["reward/correct"] + r["reward/gold"]) for r in rows)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and {"prompt", "response", "gold_score", "reward_score", "correct"} <= set(samples[0])


def _resume_args(out: Path, sft_adapter: Path) -> list[str]:
    # Two passes over each step's answers in two mini-batches, and the SFT loss on demonstrations: the resumed
    # run must restore the sampling policy's log-probs' source (RNG, prompt order), the shuffles, the
    # demonstrations' order and the optimiser exactly.
    return [*QUICK, "trainer.max_steps=6", "trainer.save_steps=2", "trainer.save_total_limit=0",
            "trainer.gradient_accumulation_steps=1", "grpo.num_iterations=2", "eval.num_prompts=0",
            "grpo.sft_weight=0.5",
            f"hydra.run.dir={out}", f"grpo.sft_adapter={sft_adapter}"]


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, capsys, killed_after_a_checkpoint, sft_adapter):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert cli(["run", "grpo", *_resume_args(full, sft_adapter)]) == 0
    killed_after_a_checkpoint("grpo", _resume_args(killed, sft_adapter), killed)
    capsys.readouterr()
    assert cli(["run", "grpo", *_resume_args(killed, sft_adapter)]) == 0
    assert "resuming from" in capsys.readouterr().out

    # The same samples, shuffles and optimiser on fp32 adapters: at most summation order may differ.
    a, b = _adapter(full), _adapter(killed)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)
    rows, full_rows = read_log(killed / LOG), read_log(full / LOG)
    assert [r["step"] for r in rows] == list(range(1, 7))  # each step logged exactly once
    assert [r["reward"] for r in rows] == pytest.approx([r["reward"] for r in full_rows], abs=1e-6)
    assert [r["clip_frac"] for r in rows] == pytest.approx([r["clip_frac"] for r in full_rows], abs=1e-6)
    assert [r["sft_loss"] for r in rows] == pytest.approx([r["sft_loss"] for r in full_rows], abs=1e-5)


def test_a_nan_reward_stops_naming_the_step_and_the_part_and_keeps_the_checkpoint(tmp_path, capsys, judge_fails_once):
    out = tmp_path / "nan"
    args = ["run", "grpo", *QUICK, "rewards=correct", "trainer.max_steps=3", "trainer.save_steps=1",
            "eval.num_prompts=0", f"hydra.run.dir={out}"]
    assert cli(args) == 2
    err = capsys.readouterr().err
    # one line (progress bars share stderr, so it may follow one's carriage return), no stack trace
    line = "lightalign: error:" + err.split("lightalign: error:", 1)[1].split("\n", 1)[0]
    assert line.startswith("lightalign: error: GRPO step 2: reward part 'correct' returned nan for answer 0")
    assert line.endswith(f"the last checkpoint ({out / 'checkpoints' / 'checkpoint-1'}) is intact")
    assert "Traceback" not in err
    assert find_resume_checkpoint(out) == str(out / "checkpoints" / "checkpoint-1")
    assert not (out / "manifest.json").exists()
    judge_fails_once()  # judges normally again
    assert cli(args) == 0  # the same command resumes from step 1 and finishes
    assert "resuming from" in capsys.readouterr().out


def test_bad_settings_fail_before_anything_loads(tmp_path, capsys):
    common = ["run", "grpo", "model=tiny-random", f"hydra.run.dir={tmp_path / 'x'}"]
    assert cli([*common, "rewards=none"]) == 2
    assert cli([*common, "grpo.group_size=1"]) == 2
    assert cli([*common, "grpo.sft_weight=-1"]) == 2
    err = capsys.readouterr().err
    assert "GRPO has no reward" in err and "grpo.group_size=1" in err and "grpo.sft_weight=-1.0" in err
    assert not (tmp_path / "x" / "checkpoints").exists()


@pytest.mark.parametrize("run_fixture", ["reward_run", "fitted_reward_run"])  # the head alone; head + likelihood
def test_the_reward_model_on_the_policy_s_base_scores_like_the_reward_stage(request, run_fixture, sft_adapter,
                                                                           tiny_tokenizer):
    reward_run = request.getfixturevalue(run_fixture)
    # one base: the policy, its reference and the reward model are three adapters of it
    # the compute dtype the reward stage's own model loads with (its trainer.precision, auto)
    base = load_base_model(TINY, Quantization(), compute_dtype=resolve_precision("auto").compute_dtype)
    model = load_policy_and_reference(base, LoraSettings(), sft_adapter=sft_adapter)
    role = RewardRole.attach(model, StageRun.open(reward_run, stage="reward").adapter_dir)
    assert set(model.peft_config) == {POLICY, REFERENCE, REWARD} and model.active_adapter == POLICY
    assert not any(p.requires_grad for name, p in model.named_parameters() if f".{REWARD}." in name)
    shared = SharedBaseRewardModel(role, tiny_tokenizer, max_length=256)
    alone = RewardModel.load(reward_run)  # the reward stage's own model, a base of its own
    prompts, answers = ["Tell me about apple #1.", "Tell me about river #2."], ["Sure, apple is great!", "No."]
    assert shared(prompts, answers) == pytest.approx(alone(prompts, answers), abs=1e-4)


def test_grpo_on_a_reward_model_logs_its_part_and_its_scores(tmp_path, reward_run, sft_adapter):
    out = tmp_path / "rm"
    args = ["run", "grpo", *QUICK, "rewards=none", f"grpo.reward_model={reward_run}", "grpo.reward_model_weight=2",
            "trainer.max_steps=1", "eval.num_prompts=2", f"grpo.sft_adapter={sft_adapter}", f"hydra.run.dir={out}"]
    assert cli(args) == 0
    row = read_log(out / LOG)[0]
    assert row["reward"] == pytest.approx(2 * row["reward/rm"])  # the part unweighted, the reward weighted
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"rm_score", "sft_rm_score", "win_rate_rm", "reward_score"} <= set(metrics)


def test_the_sft_loss_without_dialogues_in_data_train_is_a_one_line_error(tmp_path, error_line):
    args = ["run", "grpo", *QUICK, "data.train=demo:prompts", "grpo.sft_weight=0.5",
            f"hydra.run.dir={tmp_path / 'x'}"]
    assert cli(args) == 2
    line = error_line()
    assert "prompts.jsonl:1: unrecognised row" in line and "grpo.sft_weight > 0 learns from" in line
