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
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from peft import PeftModel
from peft.utils import get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

from lightalign.config.schema import LoraSettings
from lightalign.errors import ConfigError
from lightalign.generation import (
    GeneratedResponses,
    logprobs_from_logits,
    position_ids_from_mask,
    response_logits,
    sample_responses,
)
from lightalign.models.adapters import build_lora_config, upcast_trainable
from lightalign.models.roles import (
    POLICY,
    REWARD,
    VALUE,
    ReferenceKind,
    activate,
    load_policy_and_reference,
    parameters_by_adapter,
    use_adapter,
    use_reference,
)
from lightalign.models.score_position import score_pad_token_id, scored_positions

# Checkpoint key prefix (the role) -> adapter name.
_CHECKPOINTED = {"policy": POLICY, "value": VALUE}
# Keys of a PEFT SEQ_CLS adapter that hold the classification head (saved via modules_to_save=["score"]).
_HEAD_SUFFIXES = ("score.weight", "score.bias")


def disable_dropout(model: nn.Module) -> None:
    """Switch every dropout off: PPO needs the same log-probs in the update as in the rollout.

    ``nn.Dropout`` modules (LoRA's included) get ``p = 0``; attention dropout, which Llama, Qwen2 and most
    transformers models apply functionally in training mode from a float ``attention_dropout`` attribute
    of each attention layer (copied from ``config.attention_dropout``), is set to 0 there and in the configs.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
        config = getattr(module, "config", None)
        if isinstance(config, PretrainedConfig) and getattr(config, "attention_dropout", None):
            config.attention_dropout = 0.0


def load_score_head(adapter_dir: str | Path) -> nn.Linear:
    """Read the scalar ``score`` head out of a saved PEFT SEQ_CLS adapter (reward model) as a Linear.

    Raises:
        ConfigError: the adapter has no ``score`` weights (trained without ``modules_to_save=["score"]``,
            so its head was random and was not saved) or a head with more than one output.
    """
    weights = load_peft_weights(str(adapter_dir), device="cpu")
    head = {key.rsplit(".", 1)[1]: value for key, value in weights.items() if key.endswith(_HEAD_SUFFIXES)}
    if "weight" not in head:
        raise ConfigError(
            f"{adapter_dir}: the reward adapter holds no 'score' head weights; train the reward model as a "
            "SEQ_CLS LoRA with modules_to_save=['score']"
        )
    out_features, in_features = head["weight"].shape
    if out_features != 1:
        raise ConfigError(f"{adapter_dir}: the reward head has {out_features} outputs, expected 1")
    layer = nn.Linear(in_features, 1, bias="bias" in head)
    layer.load_state_dict(head)
    return layer


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
    """

    def __init__(
        self,
        model: PeftModel,
        value_head: nn.Linear,
        reward_head: nn.Linear | None,
        *,
        pad_token_id: int | None = None,
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
        adapter_params = parameters_by_adapter(model)
        self._trainable = adapter_params[POLICY] + adapter_params[VALUE] + list(value_head.parameters())
        disable_dropout(model)
        if self.reward_head is not None:
            self.reward_head.requires_grad_(False)
        self.value_head.requires_grad_(True)
        activate(model, POLICY)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser should update: the policy adapter, the value adapter and value head."""
        return list(self._trainable)

    # ------------------------------------------------------------------------------------------ forward

    def _decoder(self) -> nn.Module:
        # The transformer body (model.model for Llama/Qwen2): hidden states without the LM head.
        return self.model.get_base_model().get_decoder()

    def _response_logits(
        self, input_ids: Tensor, attention_mask: Tensor, response_start: int, temperature: float
    ) -> Tensor:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        return response_logits(self.model, input_ids, attention_mask, response_start, temperature)

    def _hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        output = self._decoder()(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        )
        return output.last_hidden_state

    def policy_logits(
        self, input_ids: Tensor, attention_mask: Tensor, response_start: int, *, temperature: float
    ) -> Tensor:
        """Logits of the policy at the response positions divided by ``temperature`` ``[B, T, V]`` (with grad).

        Use this when the entropy is wanted too; otherwise :meth:`policy_logprobs`.
        """
        activate(self.model, POLICY)
        return self._response_logits(input_ids, attention_mask, response_start, temperature)

    def policy_logprobs(
        self, input_ids: Tensor, attention_mask: Tensor, response_start: int, *, temperature: float
    ) -> Tensor:
        """Log-probabilities of the response tokens under the policy at ``temperature`` ``[B, T]`` (with grad).

        Args:
            input_ids: ``[B, P + T]`` left-padded prompts followed by right-padded responses.
            attention_mask: ``[B, P + T]`` prompt mask followed by the response mask. Build it from the
                masks, never from ``input_ids != pad``: when ``pad == eos`` that would hide the EOS.
            response_start: ``P``, the column where responses start.
            temperature: the one the responses were sampled at.

        Returns:
            ``[B, T]``; values at padding positions are meaningless and must be masked by the caller.
        """
        logits = self.policy_logits(input_ids, attention_mask, response_start, temperature=temperature)
        return logprobs_from_logits(logits, input_ids[:, response_start:])

    @torch.no_grad()
    def ref_logprobs(
        self, input_ids: Tensor, attention_mask: Tensor, response_start: int, *, temperature: float
    ) -> Tensor:
        """Log-probabilities of the response tokens under the frozen reference at ``temperature`` ``[B, T]``
        (no grad): the policy's temperature, so that the KL compares the same distributions."""
        with use_reference(self.model):
            logits = self._response_logits(input_ids, attention_mask, response_start, temperature)
        return logprobs_from_logits(logits, input_ids[:, response_start:])

    def values(self, input_ids: Tensor, attention_mask: Tensor, response_start: int) -> Tensor:
        """Value of the state before each response token ``[B, T]`` (with grad; wrap in no_grad at rollout)."""
        activate(self.model, VALUE)
        hidden = self._hidden_states(input_ids, attention_mask)[:, response_start - 1 : -1]
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)

    @torch.no_grad()
    def reward_scores(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Reward model score of each full sequence ``[B]`` (no grad), read where the reward model was trained
        to read it (:func:`~lightalign.models.score_position.scored_positions`, with ``self.pad_token_id``).

        Unlike the other roles this one puts the model back as it found it (active adapter, adapters
        disabled or not), so it can score answers in the middle of an evaluation of another role.
        """
        if self.reward_head is None:
            raise ConfigError("no reward adapter was loaded: score with the reward callable instead")
        with use_adapter(self.model, REWARD):
            hidden = self._hidden_states(input_ids, attention_mask)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        last = hidden[rows, scored_positions(input_ids, attention_mask, self.pad_token_id)]
        return self.reward_head(last.to(self.reward_head.weight.dtype)).squeeze(-1)

    def activate_policy(self) -> PeftModel:
        """Make the policy the active adapter (e.g. before evaluating ``self.model``) and return the model."""
        activate(self.model, POLICY)
        return self.model

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        *,
        max_new_tokens: int,
        eos_token_id: int | Sequence[int],
        pad_token_id: int,
        temperature: float,
        top_k: int = 0,
        top_p: float = 1.0,
    ) -> GeneratedResponses:
        """Sample one response per left-padded prompt from the policy at ``temperature``.

        See :func:`~lightalign.generation.sample_responses` (clean sampling config, top-k/p off by default
        so that PPO's first ratio is exactly 1).
        """
        activate(self.model, POLICY)
        return sample_responses(
            self.model,
            prompt_ids,
            prompt_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
        )

    # -------------------------------------------------------------------------------------- checkpoints

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Everything PPO trains, as one flat dict (safetensors-compatible) for a resumable checkpoint.

        Keys: ``policy/...`` and ``value/...`` (the role, whatever its adapter's name), ``value_head/...``.
        """
        state: dict[str, Tensor] = {}
        for role, adapter in _CHECKPOINTED.items():
            for key, value in get_peft_model_state_dict(self.model, adapter_name=adapter).items():
                state[f"{role}/{key}"] = value.detach().clone()
        for key, value in self.value_head.state_dict().items():
            state[f"value_head/{key}"] = value.detach().clone()
        return state

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`trainable_state_dict` saved (strict: a missing key raises)."""
        for role, adapter in _CHECKPOINTED.items():
            prefix = f"{role}/"
            weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            result = set_peft_model_state_dict(self.model, weights, adapter_name=adapter)
            missing = [k for k in result.missing_keys if f".{adapter}." in k]
            if not weights or missing:
                raise KeyError(f"checkpoint lacks weights of the {role} adapter: {missing[:3]}")
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
        _load_trunk_adapter(model, Path(reward_adapter_dir), REWARD, trainable=False)
    if value_init == "reward":
        _load_trunk_adapter(model, Path(reward_adapter_dir), VALUE, trainable=True)
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
    )
    # PEFT creates adapters in the compute dtype on a 4-bit base; AdamW on bf16 weights rounds small
    # steps away and a resumed run would diverge from an uninterrupted one.
    upcast_trainable(roles.model)
    return roles


def _load_trunk_adapter(model: PeftModel, folder: Path, adapter_name: str, *, trainable: bool) -> None:
    """Load a SEQ_CLS adapter's LoRA weights onto the causal LM; its ``score`` head is read separately."""
    result = model.load_adapter(str(folder), adapter_name=adapter_name, is_trainable=trainable)
    # The causal LM has no `score` module, so PEFT reports the head as unexpected; anything else
    # unexpected or missing means the adapter does not fit this base model.
    unexpected = [key for key in result.unexpected_keys if not key.endswith(_HEAD_SUFFIXES)]
    missing = [key for key in result.missing_keys if f".{adapter_name}." in key]
    if unexpected or missing:
        raise ConfigError(
            f"{folder}: adapter does not fit the base model (unexpected {unexpected[:3]}, missing {missing[:3]})"
        )
