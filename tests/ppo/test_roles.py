"""One shared base model playing policy, reference, value and reward, on a tiny random Llama.

Fixtures (``tiny_ppo_dirs``, ``batch``) are in this folder's conftest.py.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import BitsAndBytesConfig, LlamaForCausalLM, LlamaForSequenceClassification

from lightalign.errors import ConfigError
from lightalign.generation import sample_responses
from lightalign.models.loading import keep_4bit_layers_differentiable
from lightalign.models.logprobs import logprobs_from_logits
from lightalign.models.roles import POLICY, REFERENCE, REWARD, VALUE, activate, save_policy
from lightalign.ppo.losses import policy_loss, value_loss
from lightalign.ppo.roles import SharedBaseRoles, load_shared_base_roles
from lightalign.reward_model import load_score_head

PAD_ID, EOS_ID = 0, 2


def build_roles(dirs: dict[str, Path], quantized: bool = False, **kwargs) -> SharedBaseRoles:
    quantization = None
    if quantized:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    base = LlamaForCausalLM.from_pretrained(dirs["base"], quantization_config=quantization)
    keep_4bit_layers_differentiable(base)  # as load_base_model does: the same kernel on every CPU
    return load_shared_base_roles(base, dirs["sft"], dirs["rm"], **kwargs)


def adapter_of(name: str) -> str | None:
    """'...q_proj.lora_A.default.weight' -> 'default'; None for a base weight."""
    parts = name.split(".")
    for marker in ("lora_A", "lora_B"):
        if marker in parts:
            return parts[parts.index(marker) + 1]
    return None


def grad_flags(roles: SharedBaseRoles) -> dict[str | None, set[bool]]:
    flags: dict[str | None, set[bool]] = {}
    for name, param in roles.model.named_parameters():
        flags.setdefault(adapter_of(name), set()).add(param.requires_grad)
    return flags


def snapshot(roles: SharedBaseRoles) -> dict[str, torch.Tensor]:
    state = {name: p.detach().clone() for name, p in roles.model.named_parameters()}
    state.update({f"value_head.{k}": v.clone() for k, v in roles.value_head.state_dict().items()})
    state.update({f"reward_head.{k}": v.clone() for k, v in roles.reward_head.state_dict().items()})
    return state


def one_ppo_step(roles: SharedBaseRoles, batch) -> None:
    """Rollout quantities, then one optimiser step on the policy and value losses (policy backward first)."""
    input_ids, attention_mask, start = batch
    mask = attention_mask[:, start:]
    with torch.no_grad():
        old_logprobs = roles.policy_logprobs(input_ids, attention_mask, start, temperature=1.0)
        old_values = roles.values(input_ids, attention_mask, start)
    roles.ref_logprobs(input_ids, attention_mask, start, temperature=1.0)
    roles.reward_scores(input_ids, attention_mask)
    optimizer = torch.optim.AdamW(roles.trainable_parameters(), lr=1e-2)
    advantages = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.5, -0.5, 1.0, -1.0]])
    new_logprobs = roles.policy_logprobs(input_ids, attention_mask, start, temperature=1.0)
    loss, _ = policy_loss(new_logprobs, old_logprobs, advantages, mask, 0.2)
    loss.backward()
    v_loss, _ = value_loss(roles.values(input_ids, attention_mask, start), old_values, advantages, mask, 0.2)
    v_loss.backward()
    optimizer.step()


def changed_parts(before: dict[str, torch.Tensor], roles: SharedBaseRoles) -> set[str]:
    """Which parts moved: adapter names, 'value_head'/'reward_head', or None for a base weight."""
    changed = set()
    for name, value in snapshot(roles).items():
        if not torch.equal(before[name], value):
            changed.add(name.split(".")[0] if name.startswith(("value_head.", "reward_head.")) else adapter_of(name))
    return changed


def test_policy_and_reference_agree_at_init_and_only_policy_value_train(tiny_ppo_dirs, batch):
    roles = build_roles(tiny_ppo_dirs)
    input_ids, attention_mask, start = batch
    policy = roles.policy_logprobs(input_ids, attention_mask, start, temperature=1.0)
    ref = roles.ref_logprobs(input_ids, attention_mask, start, temperature=1.0)
    assert torch.equal(policy, ref)  # the reference is an exact copy of the policy at the start
    assert policy.requires_grad and not ref.requires_grad
    # The adapters really differ from the base: disabling them changes the log-probs.
    positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
    with roles.model.disable_adapter(), torch.no_grad():
        bare = roles.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits
    assert not torch.allclose(policy, logprobs_from_logits(bare[:, start - 1 : -1], input_ids[:, start:]))
    # Whatever role ran last, PEFT's set_adapter/disable_adapter must not have unfrozen ref/reward.
    roles.values(input_ids, attention_mask, start)
    roles.reward_scores(input_ids, attention_mask)
    assert grad_flags(roles) == {None: {False}, POLICY: {True}, REFERENCE: {False}, VALUE: {True}, REWARD: {False}}
    trainable = {id(p) for p in roles.trainable_parameters()}
    expected = {id(p) for n, p in roles.model.named_parameters() if p.requires_grad}
    assert trainable == expected | {id(p) for p in roles.value_head.parameters()}
    assert not any(p.requires_grad for p in roles.reward_head.parameters())


def test_reference_base_means_adapters_disabled(tiny_ppo_dirs, batch):
    roles = build_roles(tiny_ppo_dirs, reference="base", value_init="fresh")
    input_ids, attention_mask, start = batch
    plain = LlamaForCausalLM.from_pretrained(tiny_ppo_dirs["base"])
    positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = plain(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits
    expected = logprobs_from_logits(logits[:, start - 1 : -1], input_ids[:, start:])
    torch.testing.assert_close(roles.ref_logprobs(input_ids, attention_mask, start, temperature=1.0), expected)
    # disable_adapter() re-enables adapters on exit by making the active one trainable: check the fix-up.
    assert grad_flags(roles) == {None: {False}, POLICY: {True}, VALUE: {True}, REWARD: {False}}


def test_optimizer_step_changes_only_policy_and_value(tiny_ppo_dirs, batch):
    roles = build_roles(tiny_ppo_dirs)  # value initialised from the reward model: heads must not alias
    before = snapshot(roles)
    one_ppo_step(roles, batch)
    assert changed_parts(before, roles) == {POLICY, VALUE, "value_head"}


def test_left_padding_does_not_change_any_role(tiny_ppo_dirs, batch):
    roles = build_roles(tiny_ppo_dirs)
    input_ids, attention_mask, start = batch
    # Row 0 has two pad columns on the left; run it again alone without them.
    alone_ids, alone_mask = input_ids[:1, 2:], attention_mask[:1, 2:]
    with torch.no_grad():
        for fn in (partial(roles.policy_logprobs, temperature=0.7), partial(roles.ref_logprobs, temperature=0.7),
                   roles.values):
            torch.testing.assert_close(fn(input_ids, attention_mask, start)[:1], fn(alone_ids, alone_mask, start - 2))
        torch.testing.assert_close(
            roles.reward_scores(input_ids, attention_mask)[:1], roles.reward_scores(alone_ids, alone_mask)
        )


def test_logprobs_match_generate_at_the_sampling_temperature(tiny_ppo_dirs):
    roles = build_roles(tiny_ppo_dirs)
    prompts = torch.tensor([[PAD_ID, PAD_ID, 5, 6, 7], [9, 10, 11, 12, 13]])
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    roles.model.set_adapter(POLICY)
    out = roles.model.generate(
        input_ids=prompts,
        attention_mask=prompt_mask,
        do_sample=False,
        max_new_tokens=4,
        min_new_tokens=4,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        output_logits=True,
        return_dict_in_generate=True,
    )
    input_ids = out.sequences
    attention_mask = torch.cat([prompt_mask, torch.ones(2, 4, dtype=torch.long)], 1)
    raw_logits = torch.stack(out.logits, dim=1)  # [B, T, V], before any temperature
    with torch.no_grad():
        logits = roles.policy_logits(input_ids, attention_mask, response_start=5, temperature=0.7)
    torch.testing.assert_close(logits, raw_logits / 0.7, atol=1e-4, rtol=1e-4)


def test_the_policy_role_samples_with_a_clean_config_and_truncates(tiny_ppo_dirs):
    roles = build_roles(tiny_ppo_dirs)
    activate(roles.model, POLICY)
    base_config = roles.model.get_base_model().generation_config
    # Checkpoint defaults that would make sampling greedy: generate() must not pick them up. min_p is one
    # that generate() below does not set explicitly, so only the clean config keeps it out.
    base_config.top_k = 1
    base_config.min_p = 1.0
    prompts = torch.tensor([[PAD_ID, 5, 6], [9, 10, 11]])
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    samples = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        samples.append(sample_responses(roles.model, prompts, prompt_mask, max_new_tokens=6, eos_token_id=EOS_ID,
                                        pad_token_id=PAD_ID, temperature=1.0))
    assert not torch.equal(samples[0].tokens, samples[1].tokens)
    assert roles.model.get_base_model().generation_config is base_config
    for out in samples:
        assert out.tokens.shape == out.mask.shape == (2, out.tokens.shape[1])
        assert torch.all(out.tokens[out.mask == 0] == PAD_ID)
        # the mask is a prefix: never 0 then 1
        assert torch.all(out.mask[:, 1:] <= out.mask[:, :-1])


def test_reward_scores_match_the_sequence_classification_model(tiny_ppo_dirs):
    roles = build_roles(tiny_ppo_dirs)
    # Right-padded as in reward training; row 1 ends with EOS == nothing special here (pad is 0).
    input_ids = torch.tensor([[5, 6, 7, 8, PAD_ID, PAD_ID], [9, 10, 11, 12, 13, EOS_ID]])
    attention_mask = (input_ids != PAD_ID).long()
    classifier = LlamaForSequenceClassification.from_pretrained(tiny_ppo_dirs["base"], num_labels=1)
    classifier.config.pad_token_id = PAD_ID
    reward_model = PeftModel.from_pretrained(classifier, tiny_ppo_dirs["rm"])
    with torch.no_grad():
        expected = reward_model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1)
    torch.testing.assert_close(roles.reward_scores(input_ids, attention_mask), expected)


def test_value_from_reward_starts_as_a_copy_not_an_alias(tiny_ppo_dirs):
    roles = build_roles(tiny_ppo_dirs, value_init="reward")
    torch.testing.assert_close(roles.value_head.weight, roles.reward_head.weight)
    assert roles.value_head.weight.data_ptr() != roles.reward_head.weight.data_ptr()
    params = dict(roles.model.named_parameters())
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.{}.weight"
    torch.testing.assert_close(params[name.format(VALUE)], params[name.format(REWARD)])


def test_a_reward_adapter_without_score_head_is_refused(tiny_ppo_dirs):
    with pytest.raises(ConfigError, match="modules_to_save"):
        load_score_head(tiny_ppo_dirs["sft"])


def test_checkpoint_round_trip_and_policy_handoff(tiny_ppo_dirs, batch, tmp_path):
    roles = build_roles(tiny_ppo_dirs)
    input_ids, attention_mask, start = batch
    state = roles.trainable_state_dict()
    with torch.no_grad():
        logprobs = roles.policy_logprobs(input_ids, attention_mask, start, temperature=1.0)
        values = roles.values(input_ids, attention_mask, start)
    one_ppo_step(roles, batch)
    roles.load_trainable_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(roles.policy_logprobs(input_ids, attention_mask, start, temperature=1.0), logprobs)
        torch.testing.assert_close(roles.values(input_ids, attention_mask, start), values)

    # The saved policy is a plain adapter folder that the next stage can load.
    folder = save_policy(roles.model, tmp_path / "policy")
    assert (folder / "adapter_config.json").is_file()
    reloaded = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_ppo_dirs["base"]), folder)
    positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = reloaded(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits
    torch.testing.assert_close(logprobs_from_logits(logits[:, start - 1 : -1], input_ids[:, start:]), logprobs)


def test_4bit_shared_base_one_copy_and_frozen_roles(tiny_ppo_dirs, batch):
    import bitsandbytes as bnb

    roles = build_roles(tiny_ppo_dirs, quantized=True)
    input_ids, attention_mask, start = batch
    # One copy of the base: 2 layers x 7 linear layers, each a Linear4bit holding one 4-bit weight, and
    # every adapter sits on those same layers.
    linear4bit = [m for m in roles.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4bit) == 14
    packed = [p for p in roles.model.parameters() if isinstance(p, bnb.nn.Params4bit)]
    assert len(packed) == 14 and len({p.data_ptr() for p in packed}) == 14
    assert sum(isinstance(m, torch.nn.Embedding) for m in roles.model.modules()) == 1

    policy = roles.policy_logprobs(input_ids, attention_mask, start, temperature=1.0)
    assert torch.equal(policy, roles.ref_logprobs(input_ids, attention_mask, start, temperature=1.0))
    assert torch.isfinite(roles.values(input_ids, attention_mask, start)).all()
    assert torch.isfinite(roles.reward_scores(input_ids, attention_mask)).all()

    before = snapshot(roles)
    one_ppo_step(roles, batch)
    assert changed_parts(before, roles) == {POLICY, VALUE, "value_head"}
    assert grad_flags(roles) == {None: {False}, POLICY: {True}, REFERENCE: {False}, VALUE: {True}, REWARD: {False}}


def policy_and_value_grads(dirs: dict[str, Path], checkpointing: bool, joint: bool) -> dict[str, torch.Tensor]:
    base = LlamaForCausalLM.from_pretrained(dirs["base"])
    if checkpointing:
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    roles = load_shared_base_roles(base, dirs["sft"], dirs["rm"])
    roles.model.train()  # checkpointing only runs in training mode
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    attention_mask = torch.ones_like(input_ids)
    policy_term = roles.policy_logprobs(input_ids, attention_mask, 4, temperature=1.0).sum()
    if not joint:
        policy_term.backward()
    value_term = roles.values(input_ids, attention_mask, 4).sum()
    (policy_term + value_term if joint else value_term).backward()
    return {n: p.grad for n, p in roles.model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_needs_one_backward_per_role(tiny_ppo_dirs):
    # Checkpointing recomputes the forward during backward under the adapter active *then*: a joint
    # backward after switching to the value adapter silently gives the policy wrong gradients.
    exact = policy_and_value_grads(tiny_ppo_dirs, checkpointing=False, joint=True)
    per_role = policy_and_value_grads(tiny_ppo_dirs, checkpointing=True, joint=False)
    joint = policy_and_value_grads(tiny_ppo_dirs, checkpointing=True, joint=True)
    assert set(per_role) == set(exact)
    for name, grad in exact.items():
        torch.testing.assert_close(per_role[name], grad)
    assert any(not torch.allclose(joint[name], grad) for name, grad in exact.items() if f".{POLICY}." in name)


def test_attention_dropout_is_off_in_training_mode(tiny_ppo_dirs, batch):
    # Llama applies attention dropout functionally (no nn.Dropout) whenever the module is training, and
    # ppo_update trains in training mode: with it on, the first PPO ratio would not be 1.
    base = LlamaForCausalLM.from_pretrained(tiny_ppo_dirs["base"], attention_dropout=0.5)
    roles = load_shared_base_roles(base, tiny_ppo_dirs["sft"], tiny_ppo_dirs["rm"])
    input_ids, attention_mask, start = batch
    with torch.no_grad():
        rollout = roles.policy_logprobs(input_ids, attention_mask, start, temperature=1.0)  # eval mode
        values = roles.values(input_ids, attention_mask, start)
        roles.model.train()
        for _ in range(2):
            torch.testing.assert_close(roles.policy_logprobs(input_ids, attention_mask, start, temperature=1.0),
                                       rollout, atol=0, rtol=0)
            torch.testing.assert_close(roles.values(input_ids, attention_mask, start), values, atol=0, rtol=0)


def test_reference_logprobs_use_the_temperature_they_are_given(tiny_ppo_dirs, batch):
    roles = build_roles(tiny_ppo_dirs)
    input_ids, attention_mask, start = batch
    roles.model.set_adapter(REFERENCE)
    positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        raw = roles.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits
    expected = logprobs_from_logits(raw[:, start - 1 : -1] / 0.7, input_ids[:, start:])
    torch.testing.assert_close(roles.ref_logprobs(input_ids, attention_mask, start, temperature=0.7), expected)
    assert not torch.allclose(roles.ref_logprobs(input_ids, attention_mask, start, temperature=1.0), expected)
