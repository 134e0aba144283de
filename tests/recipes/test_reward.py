"""The reward recipe on tiny-random through the 4-bit path: learns a separable preference, saves its head."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from lightalign.cli import main as cli
from lightalign.data import load_preference_splits
from lightalign.reward_model import RewardModel

pytestmark = pytest.mark.slow


def test_reward_model_learns_a_separable_preference_and_reloads(reward_run, toy_rankings):
    for name in ("adapter/adapter_model.safetensors", "metrics.json", "manifest.json", "config.yaml",
                 "logs/metrics.jsonl"):
        assert (reward_run / name).is_file(), name
    metrics = json.loads((reward_run / "metrics.json").read_text())
    assert metrics["pairwise_accuracy"] >= 0.9 and metrics["base_pairwise_accuracy"] < 0.9
    assert metrics["eval_pairs"] == 30 and metrics["train_pairs"] == 90 and metrics["train_invalid_rows"] == 0

    # the trained head is saved with the adapter...
    saved = load_file(reward_run / "adapter" / "adapter_model.safetensors")
    assert any(key.endswith("score.weight") for key in saved)
    # ...and the reloaded model scores the held-out pairs as the trained one did
    held_out = load_preference_splits(str(toy_rankings), None, eval_fraction=0.25).held_out
    reward = RewardModel.load(reward_run)
    chosen = reward.score([p.prompt for p in held_out], [p.chosen for p in held_out])
    rejected = reward.score([p.prompt for p in held_out], [p.rejected for p in held_out])
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    assert sum(m > 0 for m in margins) / len(margins) == pytest.approx(metrics["pairwise_accuracy"])
    assert sum(margins) / len(margins) == pytest.approx(metrics["mean_margin"], rel=2e-2)


def test_reward_resumes_from_its_last_checkpoint(toy_rankings, tmp_path, capsys):
    common = ["model=tiny-random", "data=jsonl", f"data.train={toy_rankings}", "eval.evaluate_base=false",
              "trainer.save_steps=2", "trainer.logging_steps=1", f"hydra.run.dir={tmp_path}"]
    assert cli(["run", "reward", *common, "trainer.max_steps=2"]) == 0
    assert cli(["run", "reward", *common, "trainer.max_steps=3"]) == 0
    assert f"resuming from {tmp_path / 'checkpoints' / 'checkpoint-2'}" in capsys.readouterr().out
    log = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log if "loss" in row] == [1, 2, 3]
    assert json.loads((tmp_path / "metrics.json").read_text())["train_steps"] == 3


@pytest.mark.parametrize(
    ("rows", "overrides", "expected"),
    [
        ([{"prompt": "Q", "responses": ["a", "b"], "ranking": [0, 0]}], [], "bad.jsonl:1: field 'ranking'"),
        ([{"prompt": "Q", "chosen": "a", "rejected": "a"}], [], "bad.jsonl:1: chosen and rejected are the same"),
        ([{"prompt": "Q", "chosen": "a", "rejected": "a"}], ["data.invalid=skip"], "no usable preference pairs"),
        ([{"prompt": "Q", "chosen": "a", "rejected": "b"}], ["data.eval_fraction=2"], "data.eval_fraction=2.0"),
    ],
)
def test_bad_preference_data_is_one_line_and_non_zero(tmp_path, capsys, rows, overrides, expected):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code = cli(["run", "reward", "model=tiny-random", "data=jsonl", f"data.train={bad}",
                f"hydra.run.dir={tmp_path / 'out'}", *overrides])
    err = capsys.readouterr().err
    assert code != 0 and expected in err and "Traceback" not in err


def test_a_fitted_score_mix_is_saved_and_every_loader_scores_with_it(fitted_reward_run):
    """reward.likelihood=fit: the score is head_weight * the head + likelihood_weight * the answer's mean
    log-probability under the reward adapter's trunk; RewardModel.load scores exactly that, each part checked
    against an independent path (the sequence classifier's head; the causal LM's own forward)."""
    import torch

    from lightalign.data.tokenize import IGNORE_INDEX, encode_scored_exchange
    from lightalign.models.logprobs import causal_lm_label_logprobs
    from lightalign.models.roles import REWARD, use_adapter
    from lightalign.models.trained import ModelSource, load_model_source
    from lightalign.rundir import StageRun
    from lightalign.score_mix import load_score_mix

    tmp_path = fitted_reward_run
    mix = load_score_mix(tmp_path / "adapter")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert mix.likelihood_weight != 0 and metrics["score_likelihood_weight"] == mix.likelihood_weight
    for key in ("pairwise_accuracy", "head_pairwise_accuracy", "likelihood_pairwise_accuracy",
                "train_pairwise_accuracy"):
        assert 0 <= metrics[key] <= 1, key

    prompts = [[{"role": "user", "content": "Tell me about piano #3."}]] * 2
    answers = ["Sure, piano is great!", "No. piano is awful."]
    mixed = RewardModel.load(tmp_path).score(prompts, answers)

    run = StageRun.open(tmp_path, stage="reward")
    classifier, tokenizer = load_model_source(ModelSource.of_run(run))
    head = RewardModel(classifier, tokenizer, max_length=run.setting("data.max_length")).score(prompts, answers)
    lm = RewardModel.load(tmp_path).scorer.model  # the base as a causal LM with the reward adapter
    likelihood = []
    for prompt, answer in zip(prompts, answers, strict=True):
        ids, start = encode_scored_exchange(tokenizer, prompt, answer, run.setting("data.max_length"))
        labels = torch.tensor([[IGNORE_INDEX] * start + ids[start:]])
        with use_adapter(lm, REWARD), torch.no_grad():
            logprobs = causal_lm_label_logprobs(lm, torch.tensor([ids]), labels)
        likelihood.append(logprobs.sum().item() / (len(ids) - start))
    expected = [mix.head_weight * h + mix.likelihood_weight * ll for h, ll in zip(head, likelihood, strict=True)]
    assert mixed == pytest.approx(expected, abs=1e-4)
