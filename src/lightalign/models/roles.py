"""Adapter roles on ONE shared (possibly 4-bit) base: names, switching, and what trains. DPO, PPO, GRPO and the
eval hooks all go through this module.

A stage that trains a policy against a reference wraps the base once with PEFT and gives each role a LoRA
adapter of its own, so the base weights exist once in memory:

=========  ===============================  =========  ====================================================
role       adapter                          trainable  what it is
=========  ===============================  =========  ====================================================
policy     :data:`POLICY` (``"default"``)   yes        the model being trained: a fresh adapter, or the SFT
                                                       adapter trained further
reference  :data:`REFERENCE` (``"ref"``)    no         a frozen copy of the SFT adapter, or no adapter at
                                                       all: the base with adapters disabled (see below)
value      :data:`VALUE` (``"value"``)      yes        PPO's critic (its head: :mod:`lightalign.ppo.roles`)
reward     :data:`REWARD` (``"reward"``)    no         PPO's reward model (its ``score`` head likewise)
=========  ===============================  =========  ====================================================

**The reference is where training started** (:func:`reference_kind`, :func:`set_up_reference`):

- the policy started from an SFT stage's adapter → the reference is the SFT model: a frozen copy of that adapter
  (the KL/DPO anchor must be the SFT model, not the bare base, or DPO reports loss 0 and accuracy 1.0 at step 0,
  and PPO's KL penalty pulls towards the untuned base);
- the policy started from a fresh adapter → the reference is the base with adapters disabled (a fresh LoRA
  adapter adds exactly zero, so this too is where training started).

:func:`load_policy_and_reference` builds both on a base in one call; :func:`use_reference` runs a model as its
reference. TRL's ``DPOTrainer`` follows the same rule with the same names (it copies the ``"default"`` adapter of a
``PeftModel`` into ``"ref"`` and uses that if present, else disables adapters), which is why these are the names.

**Trainability** (:func:`apply_trainability`): the policy and value adapters train, every other adapter is
frozen. PEFT's ``set_adapter`` and ``disable_adapter`` rewrite ``requires_grad`` (the adapter they activate becomes
trainable, the others frozen); every switch here re-applies the rule afterwards, so a switch never changes what
an optimiser trains.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import ModulesToSaveWrapper, get_peft_model_state_dict, set_peft_model_state_dict
from torch import Tensor, nn
from transformers import PreTrainedModel

from lightalign.config.schema import LoraSettings
from lightalign.models.adapters import apply_lora, load_adapter_model, prepare_for_training

POLICY = "default"  # TRL's DPOTrainer trains "default"; PEFT saves "default" at the top of a folder
REFERENCE = "ref"  # TRL's DPOTrainer's name for the frozen copy of "default"
VALUE = "value"
REWARD = "reward"
TRAINABLE = frozenset({POLICY, VALUE})

ReferenceKind = Literal["sft", "base"]


# ------------------------------------------------------------------------------------------------- building


def load_policy(
    base: PreTrainedModel,
    lora: LoraSettings,
    *,
    sft_adapter: str | Path | None = None,
    gradient_checkpointing: bool = False,
) -> tuple[PeftModel, ReferenceKind]:
    """The trainable policy (adapter :data:`POLICY`) on ``base`` and the kind of reference it implies.

    With ``sft_adapter`` (an adapter folder: :attr:`lightalign.rundir.StageRun.adapter_dir`) the SFT adapter itself
    is trained further (``lora`` is then unused: the adapter keeps the shape it was trained with); without, a fresh
    LoRA adapter of ``lora``'s shape. A 4-bit base is prepared for training first.

    Use this when a trainer wraps the model before training (TRL's ``DPOTrainer`` adds its own ``"ref"`` copy):
    call :func:`set_up_reference` with the returned kind once the model is final. Otherwise
    :func:`load_policy_and_reference` does both.
    """
    if sft_adapter is None:
        return apply_lora(base, lora, gradient_checkpointing=gradient_checkpointing, adapter_name=POLICY), "base"
    base = prepare_for_training(base, gradient_checkpointing=gradient_checkpointing)
    return load_adapter_model(base, sft_adapter, trainable=True, adapter_name=POLICY), "sft"


def load_policy_and_reference(
    base: PreTrainedModel,
    lora: LoraSettings,
    *,
    sft_adapter: str | Path | None = None,
    reference: ReferenceKind | None = None,
    gradient_checkpointing: bool = False,
) -> PeftModel:
    """A trainable policy and its frozen reference on one shared base, ready for a training loop.

    Example (GRPO, PPO: the policy trains, :func:`use_reference` gives the KL anchor)::

        model = load_policy_and_reference(load_base_model(name, Quantization()), LoraSettings(),
                                          sft_adapter=StageRun.open(sft_dir).adapter_dir)
        policy_logits = model(input_ids).logits
        with use_reference(model), torch.no_grad():
            reference_logits = model(input_ids).logits

    Args:
        base: the causal LM, plain or 4-bit (prepared for training here).
        lora: the shape of a fresh policy adapter (unused with ``sft_adapter``).
        sft_adapter: the SFT stage's adapter folder: the policy starts from it. None: a fresh adapter.
        reference: ``"sft"`` (a frozen copy of the SFT adapter) or ``"base"`` (adapters disabled); default: where
            the policy starts (``"sft"`` with ``sft_adapter``, else ``"base"``).
        gradient_checkpointing: enable it on the base (non-reentrant).

    Raises:
        ValueError: ``reference="sft"`` without an SFT adapter.
    """
    if reference == "sft" and sft_adapter is None:
        raise ValueError("reference='sft' needs an SFT adapter to copy")
    model, kind = load_policy(base, lora, sft_adapter=sft_adapter, gradient_checkpointing=gradient_checkpointing)
    set_up_reference(model, reference or kind)
    return model


def set_up_reference(model: PeftModel, kind: ReferenceKind) -> None:
    """Make ``model`` carry the reference of ``kind`` (see the module docstring), before training starts.

    ``sft``: make :data:`REFERENCE` a frozen copy of the policy adapter as it is now (TRL's DPOTrainer already adds
    a ``"ref"`` adapter when given a ``PeftModel``; it is overwritten). ``base``: remove a ``"ref"`` adapter if a
    trainer made one, so that :func:`use_reference` disables adapters instead.
    """
    has_reference = REFERENCE in model.peft_config
    if kind == "base":
        if has_reference:
            model.delete_adapter(REFERENCE)
            activate(model, POLICY)  # deleting may leave no adapter active
        return
    if not has_reference:
        model.add_adapter(REFERENCE, model.peft_config[POLICY])
    for name, param in model.named_parameters():
        if f".{POLICY}." in name:
            reference = model.get_parameter(name.replace(f".{POLICY}.", f".{REFERENCE}."))
            # Copy the dtype too: the trainable adapter is kept in fp32 (upcast_trainable) while PEFT creates new
            # adapters in the compute dtype; the same weights in another dtype would make policy and reference
            # differ at step 0.
            reference.data = param.data.detach().clone()
    apply_trainability(model)


def reference_kind(model: PeftModel) -> ReferenceKind:
    """``"sft"`` if ``model`` carries a frozen reference adapter, else ``"base"``."""
    return "sft" if REFERENCE in model.peft_config else "base"


# ------------------------------------------------------------------------------------------------ switching


def apply_trainability(model: PeftModel) -> None:
    """The one trainability rule: the policy and value adapters train, every other adapter is frozen.

    The base's own weights are not touched (PEFT froze them when it wrapped the base).
    """
    adapters = set(model.peft_config)
    model.set_requires_grad(sorted(adapters - TRAINABLE), requires_grad=False)
    model.set_requires_grad(sorted(adapters & TRAINABLE), requires_grad=True)


def activate(model: PeftModel, adapter: str) -> None:
    """Make ``adapter`` the active one (its role runs on the next forward pass); trainability is kept."""
    model.set_adapter(adapter)
    apply_trainability(model)


def adapters_disabled(model: PeftModel) -> bool:
    """Whether ``model`` runs as its bare base right now (inside ``model.disable_adapter()``).

    Read from the adapter layers' public ``disable_adapters`` flag: PEFT's ``PeftModel`` keeps its own flag private.
    """
    return any(module.disable_adapters for module in model.modules() if isinstance(module, BaseTunerLayer))


@contextmanager
def use_adapter(model: PeftModel, adapter: str) -> Iterator[PeftModel]:
    """Run ``model`` with ``adapter`` alone inside the block, then put back what was active.

    Works inside ``model.disable_adapter()`` too (e.g. the reward role scoring the answers of the bare base): the
    adapter layers are switched on for the block and off again after it.
    """
    previous = model.active_adapter
    disabled = adapters_disabled(model)
    if disabled:
        model.base_model.enable_adapter_layers()
    model.set_adapter(adapter)
    try:
        yield model
    finally:
        model.set_adapter(previous)
        if disabled:
            model.base_model.disable_adapter_layers()
        apply_trainability(model)


@contextmanager
def use_reference(model: PeftModel) -> Iterator[PeftModel]:
    """Run ``model`` as its reference inside the block: the :data:`REFERENCE` adapter if present, else no adapter."""
    if REFERENCE in model.peft_config:
        with use_adapter(model, REFERENCE):
            yield model
        return
    try:
        with model.disable_adapter():
            yield model
    finally:
        apply_trainability(model)


# ---------------------------------------------------------------------------------------------- parameters


def parameters_by_adapter(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Every adapter-owned parameter of ``model`` grouped by adapter name, found the way PEFT finds them."""
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


def adapter_weights(model: PeftModel, adapter: str) -> dict[str, Tensor]:
    """A copy of one adapter's weights (PEFT's keys, without the adapter name): what a resumable checkpoint keeps."""
    weights = get_peft_model_state_dict(model, adapter_name=adapter)
    return {key: value.detach().clone() for key, value in weights.items()}


def load_adapter_weights(model: PeftModel, adapter: str, weights: dict[str, Tensor]) -> None:
    """Put back what :func:`adapter_weights` copied, strictly.

    Raises:
        KeyError: ``weights`` is empty or lacks some of the adapter's weights (a checkpoint of another adapter).
    """
    result = set_peft_model_state_dict(model, weights, adapter_name=adapter)
    missing = [key for key in result.missing_keys if f".{adapter}." in key]
    if not weights or missing:
        raise KeyError(f"the checkpoint lacks weights of adapter {adapter!r}: {missing[:3]}")


def save_policy(model: PeftModel, folder: str | Path) -> Path:
    """Save the policy adapter alone (not the frozen reference, value or reward adapters) as a standard PEFT folder:
    ``PeftModel.from_pretrained(base, folder)`` loads it, e.g. as the next stage's starting point."""
    model.save_pretrained(folder, selected_adapters=[POLICY])
    return Path(folder)
