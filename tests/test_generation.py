"""Sampling and token log-probs (lightalign.generation), on lightalign:tiny-random through the real 4-bit path."""

from __future__ import annotations

import pytest
import torch

from lightalign.data.collators import pad_prompts
from lightalign.data.tokenize import encode_prompt
from lightalign.generation import (
    decode_answers,
    logprobs_from_logits,
    position_ids_from_mask,
    sample_and_score,
    sample_responses,
    stop_token_ids,
    truncate_after_eos,
)
from lightalign.models import LoraSettings, Quantization, apply_lora, load_base_model

TINY = "lightalign:tiny-random"
PAD_ID, EOS_ID = 0, 2
QUESTIONS = ["What is the capital of Japan?", "Is 7 larger than 3?", "Name a colour."]


@pytest.fixture(scope="module")
def policy():
    """A 4-bit tiny model with a LoRA adapter far from zero (non-zero B), in eval mode."""
    model = apply_lora(load_base_model(TINY, Quantization()), LoraSettings(r=4, alpha=8, dropout=0.0))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer) -> dict[str, torch.Tensor]:
    encoded = [encode_prompt(tiny_tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]
    return pad_prompts(encoded, tiny_tokenizer.pad_token_id)


def test_truncate_after_eos():
    tokens = torch.tensor([[5, EOS_ID, 7, EOS_ID], [5, 6, 7, 8], [EOS_ID, 3, 3, 3]])
    out = truncate_after_eos(tokens, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    assert out.tokens.tolist() == [[5, EOS_ID, 0, 0], [5, 6, 7, 8], [EOS_ID, 0, 0, 0]]
    assert out.mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert out.ended_with_eos.tolist() == [True, False, True]


def test_truncate_after_any_of_several_stop_tokens():
    # EOS and the chat template's end-of-turn token may differ (Llama 3): either one ends the answer.
    tokens = torch.tensor([[5, 9, 7, EOS_ID], [5, 6, EOS_ID, 9], [5, 6, 7, 8]])
    out = truncate_after_eos(tokens, eos_token_id=[EOS_ID, 9], pad_token_id=PAD_ID)
    assert out.tokens.tolist() == [[5, 9, 0, 0], [5, 6, EOS_ID, 0], [5, 6, 7, 8]]
    assert out.ended_with_eos.tolist() == [True, True, False]


def raw_logprobs(model, input_ids, attention_mask, start, temperature):
    """Log-probs of the response tokens from one plain forward over everything: independent of response_logits."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=position_ids_from_mask(attention_mask)).logits
    return logprobs_from_logits(logits[:, start - 1 : -1].float() / temperature, input_ids[:, start:])


def test_sample_and_score_samples_as_sample_responses_and_scores_policy_then_reference(policy, prompts,
                                                                                       tiny_tokenizer):
    settings = {"max_new_tokens": 8, "eos_token_id": stop_token_ids(tiny_tokenizer),
                "pad_token_id": tiny_tokenizer.pad_token_id, "temperature": 0.7}
    torch.manual_seed(0)
    expected = sample_responses(policy, prompts["input_ids"], prompts["attention_mask"], **settings)
    entered = []

    def reference():
        entered.append(policy.active_adapter)
        return policy.disable_adapter()

    torch.manual_seed(0)
    scored = sample_and_score(policy, prompts["input_ids"], prompts["attention_mask"], reference=reference,
                              forward_batch_size=2, **settings)
    assert torch.equal(scored.responses.tokens, expected.tokens) and len(entered) == 1
    start = prompts["input_ids"].shape[1]
    assert scored.response_start == start
    assert torch.equal(scored.input_ids, torch.cat([prompts["input_ids"], expected.tokens], 1))
    assert torch.equal(scored.attention_mask, torch.cat([prompts["attention_mask"], expected.mask], 1))
    mask = expected.mask.bool()
    policy_logprobs = raw_logprobs(policy, scored.input_ids, scored.attention_mask, start, 0.7)
    with policy.disable_adapter():
        base_logprobs = raw_logprobs(policy, scored.input_ids, scored.attention_mask, start, 0.7)
    torch.testing.assert_close(scored.logprobs[mask], policy_logprobs[mask], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(scored.ref_logprobs[mask], base_logprobs[mask], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(scored.logprobs[mask], scored.ref_logprobs[mask])  # the adapter matters


def test_scoring_needs_a_temperature(policy, prompts, tiny_tokenizer):
    with pytest.raises(ValueError, match="temperature > 0"):
        sample_and_score(policy, prompts["input_ids"], prompts["attention_mask"], reference=policy.disable_adapter,
                         max_new_tokens=2, eos_token_id=2, pad_token_id=tiny_tokenizer.pad_token_id, temperature=0.0)


def test_decode_answers_drops_the_stop_token_and_padding(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    hi = tiny_tokenizer("Hi", add_special_tokens=False)["input_ids"]
    tokens = torch.tensor([hi + [eos, eos], hi + hi])
    mask = torch.tensor([[1] * len(hi) + [1, 0], [1] * (2 * len(hi))])
    assert decode_answers(tiny_tokenizer, tokens, mask) == ["Hi", "HiHi"]
