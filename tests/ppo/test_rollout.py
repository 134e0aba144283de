"""Rollouts on lightalign:tiny-random through the real 4-bit path: sampling, rewards, advantages, prompt order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from torch import Tensor

from lightalign.config.schema import PPOSettings
from lightalign.data import load_prompt_examples
from lightalign.data.formats import prompt_text
from lightalign.data.tokenize import encode_exchange, tokenize_prompts
from lightalign.errors import ConfigError, NonFiniteLossError
from lightalign.generation import position_ids_from_mask
from lightalign.models import LoraSettings, Quantization, load_base_model, resolve_precision
from lightalign.models.logprobs import logprobs_from_logits
from lightalign.models.roles import POLICY, REFERENCE, adapters_disabled, reference_kind
from lightalign.ppo.advantages import gae_advantages
from lightalign.ppo.rewards import score_answers
from lightalign.ppo.roles import SharedBaseRoles, load_shared_base_roles
from lightalign.ppo.rollout import Rollout, collect_rollout
from lightalign.reward_model import SharedBaseRewardModel, score_sequences
from lightalign.rl.masked import masked_mean, masked_var, masked_whiten
from lightalign.rundir import StageRun

TINY = "lightalign:tiny-random"
COMPUTE = resolve_precision("auto").compute_dtype  # bf16 is emulated (slow) on CPUs without AVX-512


def tiny_roles(stages: dict[str, Path] | None, *, compute: torch.dtype = COMPUTE) -> SharedBaseRoles:
    """Roles on the 4-bit tiny model; ``stages=None``: fresh policy, no reward model."""
    return load_shared_base_roles(
        load_base_model(TINY, Quantization(), compute_dtype=compute),
        stages["sft"] if stages else None,
        stages["reward"] / "adapter" if stages else None,
        lora=LoraSettings(r=4, alpha=8),
    )


def move_policy_away(roles: SharedBaseRoles) -> None:
    """Negate the policy adapter's B matrices: policy = base - delta, reference = base + delta."""
    with torch.no_grad():
        for name, param in roles.model.named_parameters():
            if f".lora_B.{POLICY}." in name:
                param.neg_()


def logprobs_under(roles: SharedBaseRoles, adapter: str, rollout: Rollout, temperature: float) -> Tensor:
    """Log-probs of the rollout's answers under ``adapter``, from the raw logits: independent of the roles' code."""
    roles.model.set_adapter(adapter)
    ids, mask, start = rollout.input_ids, rollout.attention_mask, rollout.response_start
    with torch.no_grad():
        logits = roles.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    roles.activate_policy()
    logprobs = logprobs_from_logits(logits[:, start - 1 : -1].float() / temperature, ids[:, start:])
    return torch.where(rollout.mask.bool(), logprobs, torch.zeros_like(logprobs))


def letter_count(texts: list[str], answers: list[str]) -> list[float]:
    return [float(sum(c.isalpha() for c in a)) for a in answers]


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer):
    kept, ids, _ = tokenize_prompts(tiny_tokenizer, load_prompt_examples("demo:sft", limit=4), max_length=200)
    return kept, ids


def test_rollout_starts_with_policy_equal_to_reference(tiny_random_stages, tiny_tokenizer, prompts):
    roles = tiny_roles(tiny_random_stages)
    reward = SharedBaseRewardModel(roles, tiny_tokenizer, max_length=256)
    settings = PPOSettings(batch_size=4, max_new_tokens=6, temperature=1.0, gamma=1.0, lam=0.95)
    torch.manual_seed(0)
    rollout = collect_rollout(roles, tiny_tokenizer, prompts[0], prompts[1], reward, settings, kl_coef=0.2,
                              forward_batch_size=3)  # 3 does not divide 4: chunking must still cover every row
    mask = rollout.mask
    assert rollout.input_ids.shape == (4, rollout.response_start + mask.shape[1])
    assert torch.all(mask[:, 1:] <= mask[:, :-1])  # a prefix
    assert torch.equal(rollout.attention_mask[:, rollout.response_start :], mask)
    # The policy starts as the SFT adapter and the reference is a frozen copy of it: KL 0, ratio 1.
    torch.testing.assert_close(rollout.logprobs, rollout.ref_logprobs)
    assert rollout.kl.abs().max() == 0
    # With no KL, each answer's only reward is its score, paid at its last real token.
    last = mask.sum(1) - 1
    torch.testing.assert_close(rollout.rewards[torch.arange(4), last], rollout.scores)
    torch.testing.assert_close(rollout.rewards.sum(1), rollout.scores)
    # Advantages whitened over real tokens; padding is 0 everywhere.
    assert abs(masked_mean(rollout.advantages, mask).item()) < 1e-5
    assert masked_var(rollout.advantages, mask).item() == pytest.approx(1.0, abs=1e-4)
    for tensor in (rollout.advantages, rollout.returns, rollout.values, rollout.logprobs):
        assert torch.all(tensor[mask == 0] == 0)
    # Only the last real token's return, with gamma=1: the score itself (the episode ends there).
    torch.testing.assert_close(rollout.returns[torch.arange(4), last], rollout.scores)
    stats = rollout.stats()
    assert stats["kl"] == 0 and stats["total_reward"] == pytest.approx(stats["score"])
    assert stats["answer_tokens"] == pytest.approx(mask.sum(1).float().mean().item())

    part = rollout.select(torch.tensor([2, 0]))
    assert isinstance(part, Rollout) and part.size == 2 and part.answers == [rollout.answers[2], rollout.answers[0]]
    assert part.mask.shape[1] == int(mask[[2, 0]].sum(1).max())


def test_shared_base_reward_scores_like_the_reward_stage_model(tiny_random_stages, tiny_tokenizer, prompts):
    """Scores read through the ``reward`` role equal the reward stage's own sequence-classification model."""
    roles = tiny_roles(tiny_random_stages)
    reward_run = StageRun.open(tiny_random_stages["reward"], expected_base=TINY, stage="reward")
    reward = SharedBaseRewardModel(roles, tiny_tokenizer, max_length=reward_run.setting("data.max_length"),
                                   batch_size=3)
    texts = [prompt_text(p.prompt) for p in prompts[0]]
    answers = ["Paris.", "", "The answer is 12", "ok"]
    classifier = load_base_model(TINY, Quantization(), head="score", compute_dtype=COMPUTE)
    classifier = PeftModel.from_pretrained(classifier, reward_run.adapter_dir)
    sequences = [encode_exchange(tiny_tokenizer, p.prompt, a) for p, a in zip(prompts[0], answers, strict=True)]
    expected = score_sequences(classifier, sequences)
    assert reward(texts, answers) == pytest.approx(expected, abs=1e-4)
    # Scoring leaves the policy active, even when it ran inside an evaluation of the bare base.
    assert roles.model.active_adapter == POLICY
    with roles.model.disable_adapter():
        assert reward(texts, answers) == pytest.approx(expected, abs=1e-4)
        assert adapters_disabled(roles.model)


def test_missing_eos_penalty_and_callable_reward(tiny_tokenizer, prompts):
    roles = tiny_roles(None)  # fresh policy, reference = base, no reward model
    assert reference_kind(roles.model) == "base" and roles.reward_head is None
    with pytest.raises(ConfigError, match="reward callable"):
        roles.reward_scores(torch.tensor([[5, 6]]), torch.tensor([[1, 1]]))
    seen = {}

    def length_reward(texts: list[str], answers: list[str]) -> list[float]:
        seen["texts"] = texts
        return [float(len(a)) for a in answers]

    # Clip first, then penalise: the other way round the clip would shrink the penalty of 100 to at most 2.
    settings = PPOSettings(batch_size=4, max_new_tokens=3, missing_eos_penalty=100.0, score_clip=1.0)
    torch.manual_seed(1)
    rollout = collect_rollout(roles, tiny_tokenizer, prompts[0], prompts[1], length_reward, settings, kl_coef=0.0)
    assert seen["texts"] == [prompt_text(p.prompt) for p in prompts[0]]  # callables get the last user turn
    assert not rollout.ended_with_eos.all()  # 3 tokens of a random model: most are cut off
    assert rollout.scores.max() > 1  # answers longer than one character: the clip bites
    clipped = rollout.scores.clamp(-1.0, 1.0)
    expected = torch.where(rollout.ended_with_eos, clipped, clipped - 100.0)
    torch.testing.assert_close(rollout.paid_scores, expected)
    torch.testing.assert_close(rollout.rewards.sum(1), expected)  # kl_coef 0: the paid score is all
    torch.testing.assert_close(rollout.logprobs, rollout.ref_logprobs)  # a fresh adapter adds exactly 0


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_rollout_of_a_policy_that_left_the_reference(tiny_random_stages, tiny_tokenizer, prompts, estimator):
    """Policy != reference and temperature != 1: each log-prob, the KL and the rewards are checked against
    log-probs computed here from each adapter's raw logits (a swap, or a reference at temperature 1, fails)."""
    roles = tiny_roles(tiny_random_stages, compute=torch.float32)
    move_policy_away(roles)
    settings = PPOSettings(batch_size=4, max_new_tokens=6, temperature=0.7, kl_estimator=estimator)
    torch.manual_seed(0)
    rollout = collect_rollout(roles, tiny_tokenizer, prompts[0], prompts[1], letter_count, settings, kl_coef=0.5)
    policy, reference = logprobs_under(roles, POLICY, rollout, 0.7), logprobs_under(roles, REFERENCE, rollout, 0.7)
    assert (policy - reference).abs().max() > 1e-2  # far apart enough to tell a swap
    torch.testing.assert_close(rollout.logprobs, policy)
    torch.testing.assert_close(rollout.ref_logprobs, reference)
    log_ratio = policy - reference
    kl = log_ratio if estimator == "k1" else torch.expm1(-log_ratio) + log_ratio  # k3 = (r - 1) - log r
    torch.testing.assert_close(rollout.kl, kl)
    if estimator == "k3":
        assert torch.all(rollout.kl >= 0) and torch.any(log_ratio < 0)  # k3 >= 0 even where k1 is negative
    torch.testing.assert_close(rollout.non_score_reward, -0.5 * kl)
    last = rollout.mask.sum(1) - 1
    expected = -0.5 * kl
    expected[torch.arange(4), last] += rollout.scores
    torch.testing.assert_close(rollout.rewards, expected)


def test_whiten_rewards_rescales_the_per_token_rewards_keeping_their_mean(tiny_random_stages, tiny_tokenizer,
                                                                          prompts):
    roles = tiny_roles(tiny_random_stages, compute=torch.float32)
    move_policy_away(roles)  # a non-zero KL: rewards at every token, not only at the last
    rollouts = []
    for whiten in (False, True):
        settings = PPOSettings(batch_size=4, max_new_tokens=6, temperature=0.7, whiten_rewards=whiten)
        torch.manual_seed(0)  # the same answers
        rollouts.append(collect_rollout(roles, tiny_tokenizer, prompts[0], prompts[1], letter_count, settings,
                                        kl_coef=0.5))
    plain, whitened = rollouts
    assert torch.equal(plain.input_ids, whitened.input_ids)
    mask = plain.mask
    torch.testing.assert_close(whitened.rewards, masked_whiten(plain.rewards, mask, shift_mean=False))
    assert masked_var(whitened.rewards, mask).item() == pytest.approx(1.0, abs=1e-3)
    assert masked_var(plain.rewards, mask).item() != pytest.approx(1.0, abs=0.1)
    # the advantages come from the whitened rewards
    values = plain.values
    advantages, _ = gae_advantages(whitened.rewards, values, mask, 1.0, 0.95)
    torch.testing.assert_close(whitened.advantages, masked_whiten(advantages, mask))


def test_score_answers_rejects_bad_rewards(prompts):
    with pytest.raises(NonFiniteLossError, match="nan"):
        score_answers(lambda p, a: [float("nan")] * len(a), prompts[0][:2], ["x", "y"])
    with pytest.raises(ConfigError, match="1 scores for 2 answers"):
        score_answers(lambda p, a: [1.0], prompts[0][:2], ["x", "y"])


def test_a_rollout_sampled_with_dense_weights_is_the_same_rollout(tiny_random_stages, tiny_tokenizer, prompts,
                                                                  count_4bit_calls):
    roles = tiny_roles(tiny_random_stages)
    move_policy_away(roles)
    settings = PPOSettings(batch_size=4, max_new_tokens=6, temperature=0.7)
    rollouts, calls = {}, {}
    for mode in ("off", "on"):
        torch.manual_seed(0)
        with count_4bit_calls() as counted:
            rollouts[mode] = collect_rollout(roles, tiny_tokenizer, prompts[0], prompts[1], letter_count, settings,
                                             kl_coef=0.5, dense_weights=mode)
        calls[mode] = len(counted)
    for name, value in vars(rollouts["off"]).items():
        other = getattr(rollouts["on"], name)
        assert torch.equal(value, other) if isinstance(value, Tensor) else value == other, name
    # decoding and scoring (policy, reference, values) all run on the one dense copy: no 4-bit call at all
    assert calls["on"] == 0 < 3 * 14 < calls["off"]
