"""Sampling and token log-probs (lightalign.generation), on lightalign:tiny-random through the real 4-bit path."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from lightalign import generation
from lightalign.data.collators import pad_prompts
from lightalign.data.tokenize import encode_prompt
from lightalign.generation import (
    GeneratedResponses,
    InverseCdfSampler,
    decode_answers,
    dense_decoding,
    dense_weights_bytes,
    generate_answers,
    generate_tokens,
    position_ids_from_mask,
    sample_and_score,
    sample_responses,
    sampling_processors,
    shared_prompt_logprobs,
    stop_token_ids,
    truncate_after_eos,
    uses_dense_weights,
)
from lightalign.models import LoraSettings, Quantization, apply_lora, load_base_model
from lightalign.models.logprobs import logprobs_from_logits

TINY = "lightalign:tiny-random"
PAD_ID, EOS_ID = 0, 2
QUESTIONS = ["What is the capital of Japan?", "Is 7 larger than 3?", "Name a colour."]


def lora_policy(*more_adapters: str, seed: int = 0):
    """A 4-bit tiny model with LoRA adapters far from zero (non-zero B): ``default`` and ``more_adapters``."""
    model = apply_lora(load_base_model(TINY, Quantization()), LoraSettings(r=4, alpha=8, dropout=0.0))
    for name in more_adapters:
        model.add_adapter(name, model.peft_config["default"])
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def policy():
    return lora_policy()


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


def prompts_with_responses(prompts, vocab_size: int, width: int = 5):
    """Prompts followed by random responses, the last one right-padded after 2 tokens."""
    responses = torch.randint(3, vocab_size, (prompts["input_ids"].shape[0], width),
                              generator=torch.Generator().manual_seed(1))
    response_mask = torch.ones_like(responses)
    response_mask[-1, 2:] = 0
    return (torch.cat([prompts["input_ids"], responses], 1), torch.cat([prompts["attention_mask"], response_mask], 1))


def scores_and_lora_gradients(model, input_ids, attention_mask, start, through_logits: bool):
    """Response log-probs and entropies at temperature 0.7, and the gradient of their masked sum on LoRA."""
    if through_logits:
        logits = generation.response_logits(model, input_ids, attention_mask, start, 0.7)
        log_probs = logprobs_from_logits(logits, input_ids[:, start:])
        probs = torch.softmax(logits, -1)
        entropy = -(probs * torch.log_softmax(logits, -1)).sum(-1).detach()
    else:
        scores = generation.response_token_scores(model, input_ids, attention_mask, start, 0.7)
        log_probs, entropy = scores.log_probs, scores.entropy
    mask = attention_mask[:, start:].bool()
    model.zero_grad(set_to_none=True)
    log_probs[mask].sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return log_probs.detach()[mask], entropy[mask], grads


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["q_proj", "lm_head"]], ids=["body", "lm_head-lora"])
def test_response_token_scores_match_the_full_logits_with_their_gradients(prompts, tiny_tokenizer, targets):
    # chunked through the output layer where it is a plain matrix; an adapter on it takes the full logits
    torch.manual_seed(0)  # LoRA's A matrices come from the global generator, which earlier tests move
    model = apply_lora(load_base_model(TINY, Quantization()), LoraSettings(r=4, alpha=8, dropout=0.0,
                                                                            target_modules=targets))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    input_ids, attention_mask = prompts_with_responses(prompts, tiny_tokenizer.vocab_size)
    start = prompts["input_ids"].shape[1]
    chunked = scores_and_lora_gradients(model, input_ids, attention_mask, start, through_logits=False)
    full = scores_and_lora_gradients(model, input_ids, attention_mask, start, through_logits=True)
    torch.testing.assert_close(chunked[0], full[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked[1], full[1], atol=1e-5, rtol=1e-5)
    assert chunked[2].keys() == full[2].keys() and any("lora_A" in name for name in full[2])
    if "lm_head" in targets:
        assert any("lm_head" in name for name in full[2])
    for name, grad in full[2].items():
        # to the gradient's scale: summed in another order, its near-zero entries differ by up to ~6e-4 of its
        # largest over LoRA initialisations (seeds 0-7); a wrong gradient differs by its own size
        torch.testing.assert_close(chunked[2][name], grad, atol=2e-3 * grad.abs().max().item(), rtol=1e-4)


def test_response_token_scores_need_a_temperature(policy, prompts):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        generation.response_token_scores(policy, prompts["input_ids"], prompts["attention_mask"], 2, 0.0)


def test_decode_answers_drops_the_stop_token_and_padding(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    hi = tiny_tokenizer("Hi", add_special_tokens=False)["input_ids"]
    tokens = torch.tensor([hi + [eos, eos], hi + hi])
    mask = torch.tensor([[1] * len(hi) + [1, 0], [1] * (2 * len(hi))])
    assert decode_answers(tiny_tokenizer, tokens, mask) == ["Hi", "HiHi"]
# ---- dense weights for decoding ------------------------------------------------------------------------------------


def test_dense_decoding_computes_bit_for_bit_as_the_4bit_model_for_the_active_adapter_only(prompts,
                                                                                           count_4bit_calls):
    model = lora_policy("other", seed=1)
    ids, mask = prompts["input_ids"], prompts["attention_mask"]
    layers_before = [type(m) for m in model.modules()]
    weights_before = {name: p.detach().clone() for name, p in model.named_parameters()}
    outputs = {}
    with torch.no_grad():
        for adapter in ("default", "other", None):
            model.set_adapter(adapter or "default")
            with model.disable_adapter() if adapter is None else nullcontext():
                quantized = model(input_ids=ids, attention_mask=mask).logits
                with count_4bit_calls() as calls, dense_decoding(model, "on") as dense:
                    assert dense
                    outputs[adapter] = model(input_ids=ids, attention_mask=mask).logits
                assert not calls  # no 4-bit layer ran: the dense copies stood in for all of them
                assert torch.equal(outputs[adapter], quantized), adapter
    # each adapter (and none) gives other logits: the dense copy followed the switch
    assert not torch.equal(outputs["default"], outputs["other"])
    assert not torch.equal(outputs["default"], outputs[None])
    # afterwards: the same modules and the same weights (the 4-bit ones too, never repacked)
    assert [type(m) for m in model.modules()] == layers_before
    for name, param in model.named_parameters():
        assert torch.equal(param, weights_before[name]), name
    assert not any(getattr(getattr(m.weight, "quant_state", None), "packing_format_for_cpu", False)
                   for m in model.modules() if hasattr(m, "weight"))


def test_greedy_and_seeded_answers_are_token_for_token_those_of_the_4bit_model(policy, prompts, tiny_tokenizer):
    ids, mask = prompts["input_ids"], prompts["attention_mask"]
    stops = stop_token_ids(tiny_tokenizer)
    greedy = {}
    with torch.no_grad():
        for mode in ("off", "on"):
            with dense_decoding(policy, mode):
                greedy[mode] = policy.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=24,
                                               min_new_tokens=24, pad_token_id=tiny_tokenizer.pad_token_id)
    assert torch.equal(greedy["on"], greedy["off"])
    answers = {mode: generate_answers(policy, tiny_tokenizer, [[{"role": "user", "content": q}] for q in QUESTIONS],
                                      max_new_tokens=16, dense_weights=mode) for mode in ("off", "on")}
    assert answers["on"] == answers["off"]
    sampled = {}
    for mode in ("off", "on"):
        torch.manual_seed(3)
        sampled[mode] = sample_responses(policy, ids, mask, max_new_tokens=16, eos_token_id=stops,
                                         pad_token_id=tiny_tokenizer.pad_token_id, dense_weights=mode)
    assert torch.equal(sampled["on"].tokens, sampled["off"].tokens)
    assert len(set(sampled["on"].tokens.tolist()[0])) > 3  # really sampled, not one token repeated


def lora_gradients(model, ids) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_training_after_dense_decoding_gets_the_same_gradients(prompts, tiny_tokenizer):
    model = lora_policy("other", seed=1)
    model.set_adapter("default")
    model.train()
    ids = prompts["input_ids"][:, -12:]
    before = lora_gradients(model, ids)
    assert any(".lora_A.default." in name for name in before)  # the gradient reaches A through the 4-bit base
    generate_answers(model, tiny_tokenizer, [[{"role": "user", "content": "Hi"}]], max_new_tokens=4,
                     dense_weights="on")
    assert model.training
    after = lora_gradients(model, ids)
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_auto_uses_dense_weights_on_a_cpu_when_the_copy_fits(policy, monkeypatch):
    size = dense_weights_bytes(policy)
    # tiny-random: 2 layers x 7 linear layers in the 4-bit compute dtype: lora_policy loads the base with
    # load_base_model's default, bf16, on every CPU (resolve_precision("auto") would say fp32 without native bf16)
    per_element = torch.finfo(torch.bfloat16).bits // 8
    assert size == 2 * (4 * 64 * 64 // 2 + 64 * 64 + 3 * 64 * 128) * per_element  # q,o + k,v (2 KV heads) + mlp
    monkeypatch.setattr(generation, "available_memory_bytes", lambda: 4 * size)
    assert uses_dense_weights(policy, "auto") and uses_dense_weights(policy, "on")
    assert not uses_dense_weights(policy, "off")
    monkeypatch.setattr(generation, "available_memory_bytes", lambda: size)  # fits, but not in half of it
    assert not uses_dense_weights(policy, "auto") and uses_dense_weights(policy, "on")
    with pytest.raises(ValueError, match="dense_weights='fast' is not one of auto, on, off"):
        uses_dense_weights(policy, "fast")


def test_a_model_without_4bit_layers_decodes_as_it_is(tiny_tokenizer):
    model = load_base_model(TINY, None)
    assert dense_weights_bytes(model) == 0
    assert not uses_dense_weights(model, "on")
    with dense_decoding(model, "on") as dense:
        assert not dense


@pytest.mark.gpu
def test_auto_leaves_a_gpu_model_in_4bit():
    model = load_base_model(TINY, Quantization())
    assert next(model.parameters()).device.type == "cuda"
    assert not uses_dense_weights(model, "auto") and uses_dense_weights(model, "on")


def repeated(prompts: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    return {key: value.repeat_interleave(n, dim=0) for key, value in prompts.items()}


@pytest.mark.parametrize("mode", ["off", "on"])
def test_several_answers_per_prompt_run_the_prompt_once_and_decode_as_the_repeated_prompts(policy, prompts,
                                                                                        tiny_tokenizer, mode):
    # Prompts of different lengths (left padding): the shared cache must keep their positions and padding.
    assert (prompts["attention_mask"] == 0).any()
    ids, mask = prompts["input_ids"], prompts["attention_mask"]
    common = {"max_new_tokens": 12, "min_new_tokens": 12, "pad_token_id": tiny_tokenizer.pad_token_id}
    calls = []
    original_forward = policy.forward

    def counting_forward(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape if "input_ids" in kwargs else args[0].shape)
        return original_forward(*args, **kwargs)

    with torch.no_grad(), dense_decoding(policy, mode):
        greedy_repeated = generate_tokens(policy, *repeated(prompts, 3).values(), do_sample=False, **common)
        policy.forward = counting_forward
        try:
            greedy_shared = generate_tokens(policy, ids, mask, num_samples=3, do_sample=False, **common)
        finally:
            del policy.forward
    assert torch.equal(greedy_shared, greedy_repeated)
    assert calls[0] == (3, ids.shape[1] - 1)  # the prompts once, but their last token
    stops = stop_token_ids(tiny_tokenizer)
    sampled = {}
    for n, (prompt_ids, prompt_mask) in {3: (ids, mask), 1: tuple(repeated(prompts, 3).values())}.items():
        torch.manual_seed(5)
        sampled[n] = sample_responses(policy, prompt_ids, prompt_mask, max_new_tokens=12, eos_token_id=stops,
                                      pad_token_id=tiny_tokenizer.pad_token_id, temperature=0.9,
                                      dense_weights=mode, num_samples=n)
    assert torch.equal(sampled[3].tokens, sampled[1].tokens) and torch.equal(sampled[3].mask, sampled[1].mask)
    assert len({tuple(row) for row in sampled[3].tokens.tolist()}) > 3  # the copies of a prompt sample apart


@pytest.mark.parametrize("forward_batch_size", [1, 4])  # a pass of one prompt (2 rows), of two prompts (4 rows)
def test_sample_and_score_with_several_answers_per_prompt_scores_the_repeated_prompts(policy, prompts,
                                                                                      tiny_tokenizer,
                                                                                      forward_batch_size):
    settings = {"max_new_tokens": 6, "eos_token_id": stop_token_ids(tiny_tokenizer),
                "pad_token_id": tiny_tokenizer.pad_token_id, "temperature": 0.7}
    torch.manual_seed(1)
    scored = sample_and_score(policy, prompts["input_ids"], prompts["attention_mask"], num_samples=2,
                              reference=policy.disable_adapter, forward_batch_size=forward_batch_size, **settings)
    start = prompts["input_ids"].shape[1]
    assert torch.equal(scored.input_ids[:, :start], prompts["input_ids"].repeat_interleave(2, dim=0))
    mask = scored.responses.mask.bool()
    expected = raw_logprobs(policy, scored.input_ids, scored.attention_mask, start, 0.7)
    torch.testing.assert_close(scored.logprobs[mask], expected[mask], atol=1e-4, rtol=1e-4)
    with policy.disable_adapter():
        expected_ref = raw_logprobs(policy, scored.input_ids, scored.attention_mask, start, 0.7)
    torch.testing.assert_close(scored.ref_logprobs[mask], expected_ref[mask], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(scored.logprobs[mask], scored.ref_logprobs[mask])


def test_shared_prompt_logprobs_of_answers_that_stopped_early(policy, prompts):
    n, width = 2, 5
    rows = prompts["input_ids"].shape[0] * n
    tokens = torch.randint(3, 50, (rows, width), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([5, 2, 1, 4, 3, 5])  # right padding after each answer's stop
    mask = (torch.arange(width) < lengths[:, None]).long()
    responses = GeneratedResponses(tokens * mask, mask, lengths < width)
    shared = shared_prompt_logprobs(policy, prompts["input_ids"], prompts["attention_mask"], responses, n, 0.9)
    input_ids = torch.cat([prompts["input_ids"].repeat_interleave(n, 0), responses.tokens], 1)
    attention_mask = torch.cat([prompts["attention_mask"].repeat_interleave(n, 0), mask], 1)
    expected = raw_logprobs(policy, input_ids, attention_mask, prompts["input_ids"].shape[1], 0.9)
    torch.testing.assert_close(shared[mask.bool()], expected[mask.bool()], atol=1e-4, rtol=1e-4)


def test_generate_answers_gives_each_prompt_its_sampled_answers_in_order(policy, tiny_tokenizer):
    messages = [[{"role": "user", "content": q}] for q in QUESTIONS]
    torch.manual_seed(2)
    shared = generate_answers(policy, tiny_tokenizer, messages, max_new_tokens=8, temperature=1.0, num_samples=2,
                              batch_size=4)
    torch.manual_seed(2)
    one_by_one = generate_answers(policy, tiny_tokenizer, [m for m in messages[:2] for _ in range(2)],
                                  max_new_tokens=8, temperature=1.0, batch_size=4)
    assert len(shared) == 6 and shared[:4] == one_by_one  # 2 prompts (4 answers) a call, prompt by prompt
    with pytest.raises(ValueError, match="need sampling"):
        generate_answers(policy, tiny_tokenizer, messages, num_samples=2)


def test_decoding_hands_the_freed_heap_back_every_step_and_stops_nothing(policy, prompts, tiny_tokenizer,
                                                                         monkeypatch):
    from transformers import GenerationConfig

    calls = []
    monkeypatch.setattr(generation, "release_freed_memory", lambda: calls.append(1) or True)
    tokens = generate_tokens(policy, prompts["input_ids"], prompts["attention_mask"], do_sample=False,
                             max_new_tokens=6, min_new_tokens=6, pad_token_id=tiny_tokenizer.pad_token_id,
                             generation_config=GenerationConfig())
    assert tokens.shape[1] == 6  # every step ran: the criterion stopped no row
    assert len(calls) >= 5  # once a decoding step (the first token comes from the prompt's forward)


def test_inverse_cdf_sampler_draws_the_softmax_distribution_and_never_a_masked_token():
    torch.manual_seed(0)
    probabilities = torch.tensor([0.5, 0.3, 0.0, 0.15, 0.05])
    scores = probabilities.log().expand(40_000, -1).clone()  # log 0 = -inf: the masked token
    chosen = InverseCdfSampler()(torch.zeros(40_000, 1, dtype=torch.long), scores)
    assert torch.isfinite(chosen).sum(1).eq(1).all()  # one finite score a row, for greedy decoding to take
    frequencies = torch.bincount(chosen.argmax(1), minlength=5).float() / 40_000
    assert frequencies[2] == 0
    assert torch.allclose(frequencies, probabilities, atol=0.01)  # ~4 standard errors at 40,000 draws


def test_inverse_cdf_sampler_refuses_probabilities_that_are_not_finite():
    scores = torch.tensor([[0.0, float("nan"), 1.0]])
    with pytest.raises(ValueError, match="inf or nan"):
        InverseCdfSampler()(torch.zeros(1, 1, dtype=torch.long), scores)


def test_sampling_processors_apply_temperature_top_k_and_top_p_before_the_draw():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]]).expand(20_000, -1).clone()
    drawn = sampling_processors(temperature=0.5, top_k=3, top_p=0.9)(None, logits).argmax(1)
    expected = torch.softmax(logits[0] / 0.5, -1)[:3]
    expected = expected / expected.sum()  # top-3 (0.84, 0.11, 0.04); the 0.9 nucleus drops the last
    keep = expected.cumsum(0) - expected < 0.9
    expected = torch.where(keep, expected, torch.zeros_like(expected))
    expected = expected / expected.sum()
    frequencies = torch.bincount(drawn, minlength=5).float()[:3] / 20_000
    assert torch.bincount(drawn, minlength=5)[3:].sum() == 0
    assert torch.allclose(frequencies, expected, atol=0.015)


@pytest.mark.parametrize("num_samples", [1, 2])
def test_every_scoring_pass_starts_by_handing_the_freed_heap_back(policy, prompts, tiny_tokenizer, monkeypatch,
                                                                   num_samples):
    events = []
    monkeypatch.setattr(generation, "release_freed_memory", lambda: events.append("trim") or True)
    for name in ("shared_prompt_logprobs", "response_logprobs"):
        scorer = getattr(generation, name)
        monkeypatch.setattr(generation, name, lambda *a, _f=scorer, **k: events.append("pass") or _f(*a, **k))
    monkeypatch.setattr(generation, "sample_responses", lambda *a, **k: events.clear() or sample_responses(*a, **k))
    sample_and_score(policy, prompts["input_ids"], prompts["attention_mask"], num_samples=num_samples,
                     reference=policy.disable_adapter, forward_batch_size=2, max_new_tokens=4,
                     eos_token_id=stop_token_ids(tiny_tokenizer), pad_token_id=tiny_tokenizer.pad_token_id,
                     temperature=0.7)
    passes = [i for i, event in enumerate(events) if event == "pass"]
    assert len(passes) >= 4  # policy and reference, two passes or more each
    assert all(events[i - 1] == "trim" for i in passes)
