"""Preference eval hooks: pairwise accuracy, DPO's implicit reward, win rate against the reference."""

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import PretrainedConfig

from lightalign.data.preference import to_preference_pairs
from lightalign.data.tokenize import tokenize_preference_pairs
from lightalign.data.types import PreferencePair, PromptOnly
from lightalign.eval import (
    EvalContext,
    ImplicitRewardAccuracy,
    PairwiseAccuracy,
    ReferenceWinRate,
    SampleAnswers,
)
from lightalign.eval import hooks as hooks_module
from lightalign.eval.preference import completion_logprobs
from lightalign.generation import generate_answers
from lightalign.models import LoraSettings, Quantization, apply_lora, load_base_model
from lightalign.models.roles import load_policy, set_up_reference

PROMPT = [{"role": "user", "content": "Q?"}]
LORA = LoraSettings(r=4, alpha=8, dropout=0.0)


class LengthScorer(torch.nn.Module):
    """A fake reward model whose score is the number of tokens, counting its inputs."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = PretrainedConfig(pad_token_id=0)  # the pad id its (imaginary) score head pools with
        self.rows_scored = 0

    def forward(self, input_ids, attention_mask, use_cache=False):
        self.rows_scored += len(input_ids)
        return SimpleNamespace(logits=attention_mask.sum(-1, keepdim=True).float())


def test_pairwise_accuracy_and_margin(tiny_tokenizer, tmp_path):
    pairs = [PreferencePair(PROMPT, "long answer", "no", "p:1"), PreferencePair(PROMPT, "ok", "much longer", "p:2")]
    model = LengthScorer()
    metrics = PairwiseAccuracy(pairs)(EvalContext(model, tiny_tokenizer, tmp_path))
    assert metrics["pairwise_accuracy"] == 0.5
    assert metrics["mean_margin"] == pytest.approx(((11 - 2) + (2 - 11)) / 2)  # byte-level: one token per byte


def test_pairwise_accuracy_scores_each_answer_of_a_ranking_once(tiny_tokenizer, tmp_path):
    row = {"prompt": "Q?", "responses": ["aaaa", "bbb", "cc", "d"], "ranking": [0, 1, 2, 3]}
    pairs = to_preference_pairs(row, "r:1")[0]
    model = LengthScorer()
    metrics = PairwiseAccuracy(pairs, batch_size=3)(EvalContext(model, tiny_tokenizer, tmp_path))
    assert metrics["pairwise_accuracy"] == 1.0 and model.rows_scored == 4  # not 12


@pytest.fixture(scope="module")
def sft_policy(tiny_model_dir, tmp_path_factory):
    """A policy started from a non-trivial SFT adapter, with its reference set up as in DPO."""
    folder = tmp_path_factory.mktemp("sft") / "adapter"
    sft = apply_lora(load_base_model(str(tiny_model_dir), Quantization()), LORA)
    with torch.no_grad():
        for name, param in sft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    sft.save_pretrained(folder)
    model, kind = load_policy(load_base_model(str(tiny_model_dir), Quantization()), LORA, sft_adapter=folder)
    set_up_reference(model, kind)
    return model


def _rows(tokenizer):
    pairs = [PreferencePair(PROMPT, "Yes.", "No.", "p:1"), PreferencePair(PROMPT, "Maybe so.", "x", "p:2")]
    return tokenize_preference_pairs(tokenizer, pairs, max_length=128)[0]


def test_completion_logprobs_count_answer_tokens_only(sft_policy, tiny_tokenizer):
    rows = _rows(tiny_tokenizer)
    chosen, rejected = completion_logprobs(sft_policy, rows, tiny_tokenizer.pad_token_id, batch_size=2)
    row = rows[1]  # by hand, unbatched: log p(answer token | everything before it)
    with torch.no_grad():
        logps = torch.log_softmax(sft_policy(input_ids=torch.tensor([row["prompt_ids"] + row["rejected_ids"]]))
                                  .logits[0].float(), -1)
    start = len(row["prompt_ids"])
    expected = sum(logps[start + i - 1, t].item() for i, t in enumerate(row["rejected_ids"]))
    assert rejected[1] == pytest.approx(expected, abs=1e-3)
    assert len(chosen) == 2 and all(c < 0 for c in chosen)


def test_completion_logprobs_score_each_distinct_answer_once(sft_policy, tiny_tokenizer):
    # a ranking of 3 answers expands to 3 pairs over 3 distinct answers: 3 sequences scored, not 6
    answers = ["Yes.", "Maybe so.", "x"]
    pairs = [PreferencePair(PROMPT, answers[i], answers[j], "p:1") for i in range(3) for j in range(i + 1, 3)]
    rows = tokenize_preference_pairs(tiny_tokenizer, pairs, max_length=128)[0]
    seen = []
    hook = sft_policy.register_forward_pre_hook(lambda _m, args, kwargs: seen.append(len(kwargs["input_ids"])),
                                                with_kwargs=True)
    try:
        chosen, rejected = completion_logprobs(sft_policy, rows, tiny_tokenizer.pad_token_id, batch_size=8)
    finally:
        hook.remove()
    assert seen == [3]
    assert chosen[0] == chosen[1]  # "Yes." is the chosen answer of the first two pairs: one score
    assert rejected[1] == rejected[2] and chosen[2] == rejected[0]


def test_implicit_rewards_are_zero_at_step_zero_then_move(sft_policy, tiny_tokenizer, tmp_path):
    hook = ImplicitRewardAccuracy(_rows(tiny_tokenizer), beta=0.1, pad_token_id=tiny_tokenizer.pad_token_id)
    ctx = EvalContext(sft_policy, tiny_tokenizer, tmp_path)
    start = hook(ctx)
    assert start["implicit_reward_chosen"] == 0.0 and start["implicit_reward_margin"] == 0.0
    assert start["implicit_reward_accuracy"] == 0.0  # a tie is not a win
    saved = {n: p.detach().clone() for n, p in sft_policy.named_parameters() if ".default." in n}
    try:
        with torch.no_grad():
            for name, param in sft_policy.named_parameters():
                if "lora_B.default" in name:
                    param.add_(torch.randn_like(param))
        moved = hook(ctx)
    finally:
        with torch.no_grad():
            for name, param in sft_policy.named_parameters():
                if name in saved:
                    param.copy_(saved[name])
    assert moved["implicit_reward_chosen"] != 0.0 and moved["implicit_reward_margin"] != 0.0


def test_reference_win_rate_compares_with_the_reference_answers(tiny_model_dir, tiny_tokenizer, tmp_path,
                                                                monkeypatch):
    model = apply_lora(load_base_model(str(tiny_model_dir), Quantization()), LORA)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 1.0)
    prompts = [PromptOnly([{"role": "user", "content": f"Q{i}?"}]) for i in range(3)]
    with model.disable_adapter():  # a fresh policy's reference is the base
        expected = [a.text for a in generate_answers(model, tiny_tokenizer, [p.prompt for p in prompts],
                                                     max_new_tokens=6)]
    calls = []
    real_generate = hooks_module.generate_answers
    monkeypatch.setattr(hooks_module, "generate_answers", lambda *a, **k: calls.append(1) or real_generate(*a, **k))
    samples = SampleAnswers(prompts, {"length": lambda prompts, answers: [len(a) for a in answers]}, max_new_tokens=6)
    hook = ReferenceWinRate(samples, reference_name="base")
    metrics = hook(EvalContext(model, tiny_tokenizer, tmp_path, prefix="x_"))

    def read(path):
        return [json.loads(line) for line in path.read_text().splitlines()]

    policy, reference = read(tmp_path / "x_samples.jsonl"), read(tmp_path / "x_base_samples.jsonl")
    assert [r["response"] for r in reference] == expected and [r["response"] for r in policy] != expected
    assert metrics["base_length_score"] == pytest.approx(sum(len(a) for a in expected) / 3)
    assert metrics["length_score"] == pytest.approx(sum(len(r["response"]) for r in policy) / 3)
    wins = [1.0 if len(a["response"]) > len(b["response"]) else 0.5 if len(a["response"]) == len(b["response"])
            else 0.0 for a, b in zip(policy, reference, strict=True)]
    assert metrics["win_rate_length"] == pytest.approx(sum(wins) / 3)

    later = tmp_path / "later"
    assert hook(EvalContext(model, tiny_tokenizer, later, prefix="x_")) == metrics
    assert len(calls) == 3  # policy, reference, then the policy again: the reference answers are cached
    assert read(later / "x_base_samples.jsonl") == reference  # and written with every evaluation


def test_reference_win_rate_reuses_the_reference_stage_answers(tiny_model_dir, tiny_tokenizer, tmp_path, monkeypatch):
    model = apply_lora(load_base_model(str(tiny_model_dir), Quantization()), LORA)
    prompts = [PromptOnly([{"role": "user", "content": f"Q{i}?"}]) for i in range(3)]
    length = {"length": lambda prompts, answers: [len(a) for a in answers]}
    stage = tmp_path / "sft"
    with model.disable_adapter():  # what the reference's own stage wrote: its answers at max_new_tokens=6
        written = SampleAnswers(prompts, {}, max_new_tokens=6)(EvalContext(model, tiny_tokenizer, stage))
    calls = []
    real_generate = hooks_module.generate_answers
    monkeypatch.setattr(hooks_module, "generate_answers", lambda *a, **k: calls.append(1) or real_generate(*a, **k))

    reused = ReferenceWinRate(SampleAnswers(prompts, length, max_new_tokens=6), reference_name="base",
                              reference_samples=stage / "samples.jsonl")
    metrics = reused(EvalContext(model, tiny_tokenizer, tmp_path / "a"))
    assert len(calls) == 1  # the policy's answers only: the reference's were read back
    generated = ReferenceWinRate(SampleAnswers(prompts, length, max_new_tokens=6), reference_name="base")
    assert generated(EvalContext(model, tiny_tokenizer, tmp_path / "b")) == metrics  # same as generating them
    assert metrics["base_answer_tokens"] == written["answer_tokens"]
    assert metrics["base_eos_fraction"] == written["eos_fraction"]

    calls.clear()  # other settings than the file's: generated again
    other = ReferenceWinRate(SampleAnswers(prompts, length, max_new_tokens=5), reference_name="base",
                             reference_samples=stage / "samples.jsonl")
    other(EvalContext(model, tiny_tokenizer, tmp_path / "c"))
    assert len(calls) == 2
