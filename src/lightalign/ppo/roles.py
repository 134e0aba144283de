"""PPO's four models as four roles of ONE shared (possibly 4-bit) base model.

Classic RLHF-PPO holds a policy, a reference, a reward model and a value model: four copies of the
network. Here the base weights exist once, wrapped by PEFT with one LoRA adapter per role; the adapter names,
the switching between them and what trains are :mod:`lightalign.models.roles`' (the policy starts from the SFT
adapter or fresh; the reference is a frozen copy of the SFT adapter or the base with adapters disabled; the
value adapter is fresh or a copy of the reward adapter; the reward adapter is the reward model's, or absent when
a programmatic reward scores the answers). This module adds PPO's two scalar heads on the last hidden states:
``value_head`` (trainable ``Linear(hidden, 1)``) and ``reward_head`` (the reward model's saved ``score`` layer,
frozen), and the forward passes each role runs. Only one adapter is active at a time; each method below
activates its own role first.

Token alignment: for a sequence ``prompt ++ response`` whose response starts at column
``response_start``, position ``t`` of every ``[B, T]`` output belongs to response token ``t``: its
log-probability comes from the logits at column ``response_start + t - 1``, and its value is the value
of the state *before* that token (same column).

Pitfalls this module handles, and one it cannot:

* Log-probabilities are computed from ``logits / temperature`` with the same temperature used for
  sampling (every call takes it; ``PPOSettings.temperature`` is its one source), and sampling uses no
  top-k/top-p/repetition penalty from the checkpoint's ``generation_config`` (transformers' default
  ``top_k=50`` would otherwise sample from a different distribution than the one PPO's ratio assumes).
* Dropout (LoRA's and attention dropout too) is switched off: with it the PPO ratio is not 1 on the first
  mini-batch.
* Left-padded prompts get ``position_ids`` from the attention mask, as ``generate`` does.
* NOT handled: with gradient checkpointing the forward pass is recomputed during ``backward`` under
  whatever adapter is active *then*. Call ``backward`` on the policy loss before computing values (two
  backward passes; the adapters are disjoint, so the gradients are the same as for the summed loss).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Literal

import torch
from peft import PeftModel
from torch import Tensor, nn
from transformers import PreTrainedModel

from lightalign.config.schema import LoraSettings
from lightalign.errors import ConfigError
from lightalign.generation import (
    last_hidden_states,
    response_logits,
    response_token_scores,
)
from lightalign.models.adapters import build_lora_config, upcast_trainable
from lightalign.models.logprobs import LabelLogprobs
from lightalign.models.modes import disable_dropout
from lightalign.models.roles import (
    POLICY,
    REWARD,
    VALUE,
    ReferenceKind,
    activate,
    adapter_weights,
    load_adapter_weights,
    load_policy_and_reference,
    parameters_by_adapter,
    use_reference,
)
from lightalign.models.score_position import score_pad_token_id
from lightalign.reward_model import RewardRole, load_score_head, load_trunk_adapter
from lightalign.score_mix import ScoreMix, load_score_mix

# Checkpoint key prefix (the role) -> adapter name.
_CHECKPOINTED = {"policy": POLICY, "value": VALUE}


def new_value_head(hidden_size: int) -> nn.Linear:
    """A fresh scalar head with std ``1/sqrt(hidden + 1)`` and zero bias (Huang et al., RLHF details)."""
    layer = nn.Linear(hidden_size, 1)
    nn.init.normal_(layer.weight, std=1.0 / math.sqrt(hidden_size + 1))
    nn.init.zeros_(layer.bias)
    return layer


class SharedBaseRoles:
    """Run one PEFT-wrapped base model as policy, reference, value and reward model.

    Build it with :func:`load_shared_base_roles` from saved SFT and reward adapters, or directly from a
    ``PeftModel`` that already holds the adapters (named as in :mod:`lightalign.models.roles`). Without a reward
    adapter (a programmatic reward scores the answers instead) pass ``reward_head=None``.

    Args:
        model: the PEFT model holding the policy and value adapters, the reward adapter with a reward head, and
            a reference adapter unless the reference is the base with adapters disabled.
        value_head: trainable ``Linear(hidden, 1)`` on the last hidden states under the value adapter.
        reward_head: frozen ``Linear(hidden, 1)`` of the reward model, or None.
        pad_token_id: the pad id the reward head pools with (:func:`~lightalign.models.score_position.
            score_pad_token_id`); needed with a reward head.
        reward_mix: how the reward model mixes its head with the answers' likelihood (:mod:`lightalign.score_mix`;
            default: the head alone).
    """

    def __init__(
        self,
        model: PeftModel,
        value_head: nn.Linear,
        reward_head: nn.Linear | None,
        *,
        pad_token_id: int | None = None,
        reward_mix: ScoreMix | None = None,
    ) -> None:
        if reward_head is not None and pad_token_id is None:
            raise ValueError("a reward head needs pad_token_id, the pad id it pools with (score_pad_token_id)")
        needed = [POLICY, VALUE] + ([REWARD] if reward_head is not None else [])
        missing = [name for name in needed if name not in model.peft_config]
        if missing:
            raise ValueError(f"adapters {missing} not found; the model holds {sorted(model.peft_config)}")
        self.model = model
        self.value_head = value_head
        self.reward_head = reward_head
        self.pad_token_id = pad_token_id
        self.reward = RewardRole(model, reward_head, pad_token_id, reward_mix) if reward_head is not None else None
        adapter_params = parameters_by_adapter(model)
        self._trainable = adapter_params[POLICY] + adapter_params[VALUE] + list(value_head.parameters())
        disable_dropout(model)
        self.value_head.requires_grad_(True)
        activate(model, POLICY)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser should update: the policy adapter, the value adapter and value head."""
        return list(self._trainable)

    # ------------------------------------------------------------------------------------------ forward

    def _response_logits(
        self, input_ids: Tensor, attention_mask: Tensor, response_start: int, temperature: float
    ) -> Tensor:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        return response_logits(self.model, input_ids, attention_mask, response_start, temperature)

    def policy_logits(
        self, input_ids: Tensor, attention_mask: Tensor, response_start: int, *, temperature: float
    ) -> Tensor:
        """Logits of the policy at the response positions divided by ``temperature`` ``[B, T, V]`` (with grad).

        Only for an entropy bonus, which needs the entropy's gradient; otherwise :meth:`policy_scores`, which
        keeps no full-vocabulary logits.
        """
        activate(self.model, POLICY)
        return self._response_logits(input_ids, attention_mask, response_start, temperature)

    def policy_scores(
        self, input_ids: Tensor, attention_mask: Tensor, response_start: int, *, temperature: float
    ) -> LabelLogprobs:
        """Log-probabilities of the response tokens under the policy at ``temperature`` (with grad) and their
        next-token entropies (a diagnostic, no grad), each ``[B, T]``.

        Args:
            input_ids: ``[B, P + T]`` left-padded prompts followed by right-padded responses.
            attention_mask: ``[B, P + T]`` prompt mask followed by the response mask. Build it from the
                masks, never from ``input_ids != pad``: when ``pad == eos`` that would hide the EOS.
            response_start: ``P``, the column where responses start.
            temperature: the one the responses were sampled at.

        Values at padding positions are meaningless and must be masked by the caller.
        """
        activate(self.model, POLICY)
        return response_token_scores(self.model, input_ids, attention_mask, response_start, temperature)

    def policy_logprobs(
        self, input_ids: Tensor, attention_mask: Tensor, response_start: int, *, temperature: float
    ) -> Tensor:
        """``[B, T]`` log-probabilities of the response tokens under the policy (:meth:`policy_scores`)."""
        return self.policy_scores(input_ids, attention_mask, response_start, temperature=temperature).log_probs

    @torch.no_grad()
    def ref_logprobs(
        self, input_ids: Tensor, attention_mask: Tensor, response_start: int, *, temperature: float
    ) -> Tensor:
        """Log-probabilities of the response tokens under the frozen reference at ``temperature`` ``[B, T]``
        (no grad): the policy's temperature, so that the KL compares the same distributions."""
        with use_reference(self.model):
            return response_token_scores(self.model, input_ids, attention_mask, response_start,
                                         temperature).log_probs

    def values(self, input_ids: Tensor, attention_mask: Tensor, response_start: int) -> Tensor:
        """Value of the state before each response token ``[B, T]`` (with grad; wrap in no_grad at rollout)."""
        activate(self.model, VALUE)
        hidden = last_hidden_states(self.model, input_ids, attention_mask)[:, response_start - 1 : -1]
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)

    def reward_scores(self, input_ids: Tensor, attention_mask: Tensor, answer_starts: Tensor | None = None) -> Tensor:
        """Reward model score of each full sequence ``[B]`` (:meth:`lightalign.reward_model.RewardRole.reward_scores`:
        no grad, the model put back as it was found; ``answer_starts`` for a reward model that reads likelihoods)."""
        if self.reward is None:
            raise ConfigError("no reward adapter was loaded: score with the reward callable instead")
        return self.reward.reward_scores(input_ids, attention_mask, answer_starts)

    def activate_policy(self) -> PeftModel:
        """Make the policy the active adapter (e.g. before evaluating ``self.model``) and return the model."""
        activate(self.model, POLICY)
        return self.model

    # -------------------------------------------------------------------------------------- checkpoints

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Everything PPO trains, as one flat dict (safetensors-compatible) for a resumable checkpoint.

        Keys: ``policy/...`` and ``value/...`` (the role, whatever its adapter's name), ``value_head/...``.
        """
        state: dict[str, Tensor] = {}
        for role, adapter in _CHECKPOINTED.items():
            state.update({f"{role}/{key}": value for key, value in adapter_weights(self.model, adapter).items()})
        for key, value in self.value_head.state_dict().items():
            state[f"value_head/{key}"] = value.detach().clone()
        return state

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`trainable_state_dict` saved (strict: a missing key raises)."""
        for role, adapter in _CHECKPOINTED.items():
            prefix = f"{role}/"
            load_adapter_weights(self.model, adapter, {k[len(prefix) :]: v for k, v in state.items()
                                                       if k.startswith(prefix)})
        head = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith("value_head/")}
        self.value_head.load_state_dict(head)


def load_shared_base_roles(
    base: PreTrainedModel,
    sft_adapter_dir: str | Path | None,
    reward_adapter_dir: str | Path | None,
    *,
    reference: ReferenceKind | None = None,
    value_init: Literal["reward", "fresh"] | None = None,
    lora: LoraSettings | None = None,
    pad_token_id: int | None = None,
    gradient_checkpointing: bool = False,
) -> SharedBaseRoles:
    """Wrap ``base`` once and load every PPO role onto it as an adapter.

    The reward adapter must have been trained on the same base weights (same model, same quantisation),
    since it now runs on this base. Trainable adapters are kept in fp32 (see ``upcast_trainable``).

    Args:
        base: the causal LM, plain or 4-bit (prepared for training here).
        sft_adapter_dir: the SFT stage's adapter folder; it becomes the trainable policy (and the reference).
            None: the policy is a fresh adapter (``lora``) and the reference the bare base.
        reward_adapter_dir: the reward stage's SEQ_CLS adapter folder, with its ``score`` head saved; None when a
            programmatic reward scores the answers (no reward role is loaded).
        reference: ``"sft"``: a frozen second copy of the SFT adapter (the reference must be the SFT model);
            ``"base"``: the base with adapters disabled (when the SFT model is the base). Default: where the
            policy starts (:func:`lightalign.models.roles.load_policy_and_reference`).
        value_init: ``"reward"`` copies the reward adapter and head into the value role (InstructGPT);
            ``"fresh"`` starts a new adapter (of ``lora``'s shape; without ``lora``, the policy adapter's) and a
            new head. Default: ``"reward"`` if there is a reward adapter, else ``"fresh"``.
        lora: the shape of fresh adapters: the policy's when there is no SFT adapter, the value's.
        pad_token_id: the pad id the reward model pooled with in training; default
            :func:`~lightalign.models.score_position.score_pad_token_id` of ``base.config`` (the same
            checkpoint's config gives the same id as the reward stage's sequence-classification model).
        gradient_checkpointing: enable it on the base (non-reentrant; see the module docstring's pitfall).

    Returns:
        The roles, with the policy adapter active.
    """
    value_init = value_init or ("reward" if reward_adapter_dir is not None else "fresh")
    if value_init not in ("reward", "fresh"):
        raise ValueError(f"value_init must be 'reward' or 'fresh', got {value_init!r}")
    if value_init == "reward" and reward_adapter_dir is None:
        raise ConfigError("value_init='reward' needs a reward adapter")
    if sft_adapter_dir is None and lora is None:
        raise ValueError("without an SFT adapter, pass lora for a fresh policy adapter")

    model = load_policy_and_reference(base, lora or LoraSettings(), sft_adapter=sft_adapter_dir, reference=reference,
                                      gradient_checkpointing=gradient_checkpointing)
    reward_head: nn.Linear | None = None
    if reward_adapter_dir is not None:
        reward_head = load_score_head(reward_adapter_dir)
        load_trunk_adapter(model, Path(reward_adapter_dir), REWARD, trainable=False)
    if value_init == "reward":
        load_trunk_adapter(model, Path(reward_adapter_dir), VALUE, trainable=True)
        value_head = copy.deepcopy(reward_head)
    else:
        config = build_lora_config(lora) if lora is not None else copy.deepcopy(model.peft_config[POLICY])
        config.inference_mode = False
        config.modules_to_save = None
        model.add_adapter(VALUE, config)
        value_head = new_value_head(base.config.get_text_config().hidden_size)

    device = base.get_input_embeddings().weight.device
    if pad_token_id is None and reward_head is not None:
        pad_token_id = score_pad_token_id(base.config)
    roles = SharedBaseRoles(
        model,
        value_head.to(device=device, dtype=torch.float32),
        reward_head.to(device=device, dtype=torch.float32) if reward_head is not None else None,
        pad_token_id=pad_token_id,
        reward_mix=load_score_mix(reward_adapter_dir) if reward_adapter_dir is not None else None,
    )
    # PEFT creates adapters in the compute dtype on a 4-bit base; AdamW on bf16 weights rounds small
    # steps away and a resumed run would diverge from an uninterrupted one.
    upcast_trainable(roles.model)
    return roles
