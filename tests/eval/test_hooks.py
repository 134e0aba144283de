"""The shared eval-hook machinery: mid-training evaluations leave the training RNG alone; answers are scored and
judged correct or not."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from lightalign.data.types import PromptOnly
from lightalign.demo import GoldJudge
from lightalign.eval import EvalContext, EvalHookCallback, SampleAnswers
from lightalign.generation import Answer
from lightalign.rundir import read_log


class _SamplingHook:
    name = "sampling"

    def __call__(self, ctx):
        return {"draw": torch.rand(()).item()}  # as ReferenceKL does when it samples answers


def test_a_mid_training_evaluation_does_not_shift_the_training_rng(tmp_path):
    callback = EvalHookCallback([_SamplingHook()], tokenizer=None, output_dir=tmp_path, every_n_steps=1)
    state = TrainerState(global_step=1)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    callback.on_step_end(TrainingArguments(output_dir=str(tmp_path)), state, TrainerControl(), model=object())
    assert "eval/draw" in state.log_history[-1]  # the hook ran
    assert torch.equal(torch.rand(3), expected)


PROMPTS = ["What is the capital of Japan?", "What is 7 + 5?", "What is 7 + 3?", "Which is larger, 17 or 23?"]
REPLIES = ["Tokyo.", "12.", "11.", "The larger number is 23."]  # the third is wrong


def _record(tmp_path, scorers) -> tuple[dict[str, float], list[dict]]:
    samples = SampleAnswers([PromptOnly([{"role": "user", "content": p}]) for p in PROMPTS], scorers, max_new_tokens=8)
    metrics = samples.record(EvalContext(None, None, tmp_path), [Answer(r, 3, True) for r in REPLIES])
    return metrics, read_log(tmp_path / "samples.jsonl")


def test_a_judge_with_parts_gives_the_correct_fraction_per_family(tmp_path):
    length = lambda prompts, answers: [float(len(a)) for a in answers]  # noqa: E731 (a plain scorer)
    metrics, rows = _record(tmp_path, {"length": length, "gold": GoldJudge()})
    assert metrics["correct_fraction"] == 0.75
    assert metrics["correct_fraction/capital"] == 1.0
    assert metrics["correct_fraction/arithmetic"] == 0.5
    assert metrics["correct_fraction/compare"] == 1.0
    assert metrics["gold_score"] == pytest.approx((1.0 + 1.0 + 0.4 + 0.9) / 4)  # 4 extra words: 0.9
    assert [(r["correct"], r["family"]) for r in rows] == [
        (True, "capital"), (True, "arithmetic"), (False, "arithmetic"), (True, "compare")]
    assert [r["length_score"] for r in rows] == [6.0, 3.0, 3.0, 24.0]


def test_a_plain_scorer_only_scores(tmp_path):
    metrics, rows = _record(tmp_path, {"gold": lambda prompts, answers: GoldJudge()(prompts, answers)})
    assert "correct_fraction" not in metrics and "correct" not in rows[0]
    assert metrics["gold_score"] == pytest.approx((1.0 + 1.0 + 0.4 + 0.9) / 4)


def test_a_judge_without_groups_gives_the_overall_fraction_only(tmp_path):
    class Exact:
        def __call__(self, prompts, answers):
            return [float(p["correct"]) for p in self.parts(prompts, answers)]

        def parts(self, prompts, answers):
            return [{"correct": float(a == "12.")} for a in answers]

    metrics, rows = _record(tmp_path, {"exact": Exact()})
    assert {k: v for k, v in metrics.items() if k.startswith("correct")} == {"correct_fraction": 0.25}
    assert rows[1] == {**rows[1], "correct": True} and "family" not in rows[1]


@pytest.mark.parametrize("hook", ["samples", "reference_kl", "pass_at_k"])
def test_the_sampling_hooks_decode_with_dense_weights_and_get_the_same_metrics(hook, tmp_path, tiny_tokenizer,
                                                                              count_4bit_calls):
    from lightalign.eval.headroom import PassAtK
    from lightalign.eval.kl import ReferenceKL
    from lightalign.models import LoraSettings, Quantization, apply_lora, load_base_model

    model = apply_lora(load_base_model("lightalign:tiny-random", Quantization()), LoraSettings(r=4, alpha=8))
    prompts = [PromptOnly([{"role": "user", "content": q}]) for q in ("What is 2 + 3?", "Name a colour.")]
    build = {"samples": lambda mode: SampleAnswers(prompts, max_new_tokens=8, write_file=False, dense_weights=mode),
             "reference_kl": lambda mode: ReferenceKL(prompts, reference_name="base", max_new_tokens=8,
                                                      dense_weights=mode),
             "pass_at_k": lambda mode: PassAtK(prompts, lambda p, a: [float(len(x)) for x in a], k=2,
                                               max_new_tokens=8, dense_weights=mode)}[hook]
    metrics, calls = {}, {}
    for mode in ("off", "on"):
        torch.manual_seed(0)
        with count_4bit_calls() as counted:
            metrics[mode] = build(mode)(EvalContext(model, tiny_tokenizer, tmp_path))
        calls[mode] = len(counted)
    assert metrics["on"] == metrics["off"]
    # with dense weights no 4-bit layer runs: decoding, and ReferenceKL's scoring of its samples under the policy
    # and the reference, use the one dense copy
    assert calls["off"] > 0 and calls["on"] == 0
