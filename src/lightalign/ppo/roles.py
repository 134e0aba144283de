"""PPO's four models as four roles of ONE shared (possibly 4-bit) base model.

Classic RLHF-PPO holds a policy, a reference, a reward model and a value model: four copies of the
network. Here the base weights exist once, wrapped by PEFT with one LoRA adapter per role:

============  ==================================  =========  ==========================================
role          adapter                             trainable  head
============  ==================================  =========  ==========================================
policy        ``"policy"`` (from the SFT adapter,  yes        the LM head
              or fresh when there is no SFT)
reference     ``"ref"`` (frozen SFT copy), or      no         the LM head
              no adapter (base, adapters disabled)
value         ``"value"`` (fresh, or reward copy)  yes        ``value_head``: Linear(hidden, 1)
reward        ``"reward"`` (the reward model), or  no         ``reward_head``: its saved ``score`` layer
              none (a programmatic reward)
============  ==================================  =========  ==========================================

Only one adapter is active at a time; each method below activates its own role first. PEFT's
``set_adapter`` and ``disable_adapter`` rewrite ``requires_grad`` (the active adapter becomes trainable,
the others frozen), so after every switch :class:`SharedBaseRoles` re-applies its own rule: policy and
value adapters (and the value head) train, everything else stays frozen.

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
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import (
    ModulesToSaveWrapper,
    get_peft_model_state_dict,
    load_peft_weights,
    set_peft_model_state_dict,
)
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

from lightalign.errors import ConfigError, ModelNotFoundError
from lightalign.generation import (
    GeneratedResponses,
    logprobs_from_logits,
    position_ids_from_mask,
    response_logits,
    sample_responses,
)
from lightalign.models.adapters import upcast_trainable
from lightalign.models.score_position import score_pad_token_id, scored_positions

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
    ``PeftModel`` that already holds the adapters. Without a reward adapter (a programmatic reward
    scores the answers instead) pass ``reward_head=None, reward_adapter=None``.

    Args:
        model: the PEFT model holding the adapters named below.
        value_head: trainable ``Linear(hidden, 1)`` on the last hidden states under the value adapter.
        reward_head: frozen ``Linear(hidden, 1)`` of the reward model, or None.
        pad_token_id: the pad id the reward head pools with (:func:`~lightalign.models.score_position.
            score_pad_token_id`); needed with a reward head.
        policy_adapter, value_adapter, reward_adapter: adapter names.
        ref_adapter: the frozen reference adapter, or None for "base model with adapters disabled".
    """

    def __init__(
        self,
        model: PeftModel,
        value_head: nn.Linear,
        reward_head: nn.Linear | None,
        *,
        pad_token_id: int | None = None,
        policy_adapter: str = "policy",
        ref_adapter: str | None = "ref",
        value_adapter: str = "value",
        reward_adapter: str | None = "reward",
    ) -> None:
        if reward_head is not None and pad_token_id is None:
            raise ValueError("a reward head needs pad_token_id, the pad id it pools with (score_pad_token_id)")
        needed = [name for name in (policy_adapter, value_adapter, reward_adapter, ref_adapter) if name]
        missing = [name for name in needed if name not in model.peft_config]
        if missing:
            raise ValueError(f"adapters {missing} not found; the model holds {sorted(model.peft_config)}")
        self.model = model
        self.value_head = value_head
        self.reward_head = reward_head
        self.pad_token_id = pad_token_id
        self.policy_adapter = policy_adapter
        self.ref_adapter = ref_adapter
        self.value_adapter = value_adapter
        self.reward_adapter = reward_adapter
        self._adapter_params = _parameters_by_adapter(model)
        disable_dropout(model)
        if self.reward_head is not None:
            self.reward_head.requires_grad_(False)
        self.value_head.requires_grad_(True)
        self._activate(policy_adapter)

    # ----------------------------------------------------------------------------------------- adapters

    def trainable_parameters(self, role: Literal["policy", "value"] | None = None) -> list[nn.Parameter]:
        """Parameters the optimiser should update: the policy adapter, the value adapter and value head.

        Args:
            role: ``"policy"`` or ``"value"`` for one role's parameters (e.g. for separate learning
                rates), None for both.
        """
        params: list[nn.Parameter] = []
        if role in (None, "policy"):
            params += self._adapter_params.get(self.policy_adapter, [])
        if role in (None, "value"):
            params += self._adapter_params.get(self.value_adapter, []) + list(self.value_head.parameters())
        return params

    def _apply_trainability(self) -> None:
        """Undo PEFT's requires_grad rewrites: only the policy and value adapters train."""
        trainable = {self.policy_adapter, self.value_adapter}
        for name, params in self._adapter_params.items():
            for param in params:
                param.requires_grad_(name in trainable)

    def _activate(self, adapter: str) -> None:
        self.model.set_adapter(adapter)
        self._apply_trainability()

    @contextmanager
    def _reference(self) -> Iterator[None]:
        """The one place that decides what the reference model is: frozen SFT adapter, or the bare base."""
        if self.ref_adapter is not None:
            self._activate(self.ref_adapter)
            yield
            return
        try:
            with self.model.disable_adapter():
                yield
        finally:
            self._apply_trainability()

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
        self._activate(self.policy_adapter)
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
        with self._reference():
            logits = self._response_logits(input_ids, attention_mask, response_start, temperature)
        return logprobs_from_logits(logits, input_ids[:, response_start:])

    def values(self, input_ids: Tensor, attention_mask: Tensor, response_start: int) -> Tensor:
        """Value of the state before each response token ``[B, T]`` (with grad; wrap in no_grad at rollout)."""
        self._activate(self.value_adapter)
        hidden = self._hidden_states(input_ids, attention_mask)[:, response_start - 1 : -1]
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)

    @torch.no_grad()
    def reward_scores(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Reward model score of each full sequence ``[B]`` (no grad), read where the reward model was trained
        to read it (:func:`~lightalign.models.score_position.scored_positions`, with ``self.pad_token_id``).

        Unlike the other roles this one puts the model back as it found it (active adapter, adapters
        disabled or not), so it can score answers in the middle of an evaluation of another role.
        """
        if self.reward_adapter is None or self.reward_head is None:
            raise ConfigError("no reward adapter was loaded: score with the reward callable instead")
        with self._scoring():
            hidden = self._hidden_states(input_ids, attention_mask)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        last = hidden[rows, scored_positions(input_ids, attention_mask, self.pad_token_id)]
        return self.reward_head(last.to(self.reward_head.weight.dtype)).squeeze(-1)

    @contextmanager
    def _scoring(self) -> Iterator[None]:
        previous = self.model.active_adapter
        # Inside `disable_adapter()` (an evaluation of the bare base) the reward adapter would silently not
        # apply: switch the adapter layers back on for the scoring, and off again after.
        was_disabled = bool(getattr(self.model, "_adapters_disabled", False))
        if was_disabled:
            self.model.base_model.enable_adapter_layers()
        try:
            self._activate(self.reward_adapter)
            yield
        finally:
            self._activate(previous)
            if was_disabled:
                self.model.base_model.disable_adapter_layers()
                self._apply_trainability()

    def activate_policy(self) -> PeftModel:
        """Make the policy the active adapter (e.g. before evaluating ``self.model``) and return the model."""
        self._activate(self.policy_adapter)
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
        self._activate(self.policy_adapter)
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
        """Everything PPO trains, as one flat dict (safetensors-compatible) for a resumable checkpoint."""
        state: dict[str, Tensor] = {}
        for adapter in (self.policy_adapter, self.value_adapter):
            for key, value in get_peft_model_state_dict(self.model, adapter_name=adapter).items():
                state[f"{adapter}/{key}"] = value.detach().clone()
        for key, value in self.value_head.state_dict().items():
            state[f"value_head/{key}"] = value.detach().clone()
        return state

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`trainable_state_dict` saved (strict: a missing key raises)."""
        for adapter in (self.policy_adapter, self.value_adapter):
            prefix = f"{adapter}/"
            weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            result = set_peft_model_state_dict(self.model, weights, adapter_name=adapter)
            missing = [k for k in result.missing_keys if f".{adapter}." in k]
            if not weights or missing:
                raise KeyError(f"checkpoint lacks weights of adapter {adapter!r}: {missing[:3]}")
        head = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith("value_head/")}
        self.value_head.load_state_dict(head)
        self._apply_trainability()

    def save_adapter(self, adapter: str, folder: str | Path) -> Path:
        """Save one adapter as a standard PEFT folder (``PeftModel.from_pretrained(base, folder)`` loads it).

        PEFT's own ``save_pretrained`` puts any adapter not named ``"default"`` in a subfolder named after
        it; this writes the files straight into ``folder``, e.g. the policy for the next stage.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
            self.model.save_pretrained(tmp, selected_adapters=[adapter])
            for item in (Path(tmp) / adapter).iterdir():
                target = folder / item.name
                if target.exists():
                    target.unlink()
                shutil.move(str(item), target)
        return folder


def _parameters_by_adapter(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """All adapter-owned parameters grouped by adapter name, found the way PEFT finds them."""
    groups: dict[str, list[nn.Parameter]] = {}
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            containers = [getattr(module, name) for name in module.adapter_layer_names]
        elif isinstance(module, ModulesToSaveWrapper):
            containers = [module.modules_to_save]
        else:
            continue
        for container in containers:
            for adapter, item in container.items():
                params = [item] if isinstance(item, nn.Parameter) else list(item.parameters())
                groups.setdefault(adapter, []).extend(params)
    return groups


def _check_adapter_dir(folder: str | Path) -> Path:
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise ModelNotFoundError(f"{folder} is not a PEFT adapter folder (no adapter_config.json)")
    return folder


def load_shared_base_roles(
    base: PreTrainedModel,
    sft_adapter_dir: str | Path | None,
    reward_adapter_dir: str | Path | None,
    *,
    reference: Literal["sft_adapter", "base"] | None = None,
    value_init: Literal["reward", "fresh"] | None = None,
    policy_lora_config: LoraConfig | None = None,
    value_lora_config: LoraConfig | None = None,
    pad_token_id: int | None = None,
) -> SharedBaseRoles:
    """Wrap ``base`` once and load every PPO role onto it as an adapter.

    The reward adapter must have been trained on the same base weights (same model, same quantisation),
    since it now runs on this base. Trainable adapters are kept in fp32 (see ``upcast_trainable``).

    Args:
        base: the causal LM, plain or 4-bit (call ``prepare_model_for_kbit_training`` before, if wanted).
        sft_adapter_dir: the SFT stage's adapter; it becomes the trainable policy (and the reference).
            None: the policy is a fresh adapter (``policy_lora_config``) and the reference the bare base.
        reward_adapter_dir: the reward stage's SEQ_CLS adapter, with its ``score`` head saved; None when a
            programmatic reward scores the answers (no reward role is loaded).
        reference: ``"sft_adapter"``: a frozen second copy of the SFT adapter (the reference must be the
            SFT model); ``"base"``: the base with adapters disabled (when the SFT model is the base).
            Default: ``"sft_adapter"`` if there is one, else ``"base"``.
        value_init: ``"reward"`` copies the reward adapter and head into the value role (InstructGPT);
            ``"fresh"`` starts a new adapter (``value_lora_config``, default: the policy adapter's settings)
            and a new head. Default: ``"reward"`` if there is a reward adapter, else ``"fresh"``.
        policy_lora_config: the fresh policy adapter's settings when there is no SFT adapter.
        pad_token_id: the pad id the reward model pooled with in training; default
            :func:`~lightalign.models.score_position.score_pad_token_id` of ``base.config`` (the same
            checkpoint's config gives the same id as the reward stage's sequence-classification model).

    Returns:
        The roles, with the policy adapter active.
    """
    reference = reference or ("sft_adapter" if sft_adapter_dir is not None else "base")
    value_init = value_init or ("reward" if reward_adapter_dir is not None else "fresh")
    if reference not in ("sft_adapter", "base"):
        raise ValueError(f"reference must be 'sft_adapter' or 'base', got {reference!r}")
    if value_init not in ("reward", "fresh"):
        raise ValueError(f"value_init must be 'reward' or 'fresh', got {value_init!r}")
    if reference == "sft_adapter" and sft_adapter_dir is None:
        raise ConfigError("reference='sft_adapter' needs an SFT adapter")
    if value_init == "reward" and reward_adapter_dir is None:
        raise ConfigError("value_init='reward' needs a reward adapter")

    if sft_adapter_dir is not None:
        sft_adapter_dir = _check_adapter_dir(sft_adapter_dir)
        model = PeftModel.from_pretrained(base, str(sft_adapter_dir), adapter_name="policy", is_trainable=True)
    elif policy_lora_config is not None:
        # A fresh LoRA adapter adds exactly zero, so the policy starts as the base: the reference.
        model = get_peft_model(base, copy.deepcopy(policy_lora_config), adapter_name="policy")
    else:
        raise ValueError("without an SFT adapter, pass policy_lora_config for a fresh policy adapter")
    ref_adapter: str | None = None
    if reference == "sft_adapter":
        model.load_adapter(str(sft_adapter_dir), adapter_name="ref", is_trainable=False)
        ref_adapter = "ref"

    reward_head: nn.Linear | None = None
    if reward_adapter_dir is not None:
        reward_adapter_dir = _check_adapter_dir(reward_adapter_dir)
        reward_head = load_score_head(reward_adapter_dir)
        _load_trunk_adapter(model, reward_adapter_dir, "reward", trainable=False)
    if value_init == "reward":
        _load_trunk_adapter(model, reward_adapter_dir, "value", trainable=True)
        value_head = copy.deepcopy(reward_head)
    else:
        config = copy.deepcopy(value_lora_config or model.peft_config["policy"])
        config.inference_mode = False
        config.modules_to_save = None
        model.add_adapter("value", config)
        value_head = new_value_head(base.config.get_text_config().hidden_size)

    device = base.get_input_embeddings().weight.device
    if pad_token_id is None and reward_head is not None:
        pad_token_id = score_pad_token_id(base.config)
    roles = SharedBaseRoles(
        model,
        value_head.to(device=device, dtype=torch.float32),
        reward_head.to(device=device, dtype=torch.float32) if reward_head is not None else None,
        pad_token_id=pad_token_id,
        ref_adapter=ref_adapter,
        reward_adapter="reward" if reward_head is not None else None,
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
