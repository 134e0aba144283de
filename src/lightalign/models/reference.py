"""What the reference model is, decided in one place, for DPO and PPO.

The policy is the 4-bit base plus a trainable adapter named ``default``; its reference lives in the same
model, so there is one copy of the base in memory:

- the policy started from an SFT stage's adapter → the reference is the SFT model: a frozen copy of that
  adapter named ``"ref"`` (the KL/DPO anchor must be where training started, not the bare base, or DPO
  reports loss 0 and accuracy 1.0 at step 0, and PPO's KL penalty pulls towards the untuned base);
- the policy started from a fresh adapter → the reference is the base with adapters disabled (a fresh
  LoRA adapter adds exactly zero, so this is also where training started).

:func:`set_up_reference` enforces that choice on a model, :func:`use_reference` runs a model as its
reference. TRL's ``DPOTrainer`` follows the same rule internally (an adapter named ``"ref"`` if there is
one, else adapters disabled).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from peft import PeftModel
from transformers import PreTrainedModel

from lightalign.errors import ConfigError
from lightalign.models.adapters import LoraSettings, apply_lora, load_adapter_model
from lightalign.rundir import ADAPTER, read_manifest

REFERENCE_ADAPTER = "ref"
POLICY_ADAPTER = "default"
ReferenceKind = Literal["sft", "base"]


def resolve_adapter_dir(path: str | Path, *, expected_base: str | None = None) -> Path:
    """The adapter folder named by ``path``: an ``adapter/`` folder itself, or a stage's run directory.

    Raises:
        ConfigError: if there is no adapter there, or the stage's manifest names another base model than
            ``expected_base`` (an adapter only fits the base it was trained on).
    """
    path = Path(path).expanduser()
    for candidate in (path, path / ADAPTER):
        if (candidate / "adapter_config.json").is_file():
            break
    else:
        raise ConfigError(f"{path} holds no PEFT adapter (no adapter_config.json in it or in {path / ADAPTER})")
    manifest = read_manifest(candidate.parent) or {}
    trained_on = manifest.get("artefacts", {}).get("base_model")
    if expected_base and trained_on and trained_on != expected_base:
        raise ConfigError(f"the adapter in {candidate} was trained on {trained_on!r}, not model.name_or_path="
                          f"{expected_base!r}; pass the same model")
    return candidate


def load_policy(
    base: PreTrainedModel,
    lora: LoraSettings,
    *,
    sft_adapter: str | Path | None = None,
    gradient_checkpointing: bool = False,
) -> tuple[PeftModel, ReferenceKind]:
    """The trainable policy and the kind of reference it implies.

    With ``sft_adapter`` (an SFT run directory or its ``adapter/``) the SFT adapter itself is trained further
    (``lora`` is then unused: the adapter keeps the shape it was trained with); without, a fresh LoRA adapter.
    Call :func:`set_up_reference` with the returned kind once the model is final (after a TRL trainer has
    wrapped it), before training starts.
    """
    if sft_adapter is None:
        return apply_lora(base, lora, gradient_checkpointing=gradient_checkpointing), "base"
    if gradient_checkpointing:
        base.gradient_checkpointing_enable()
    adapter_dir = resolve_adapter_dir(sft_adapter)
    return load_adapter_model(base, adapter_dir, trainable=True, adapter_name=POLICY_ADAPTER), "sft"


def set_up_reference(model: PeftModel, kind: ReferenceKind) -> None:
    """Make ``model`` carry the reference of ``kind`` (see the module docstring).

    ``sft``: make ``"ref"`` a frozen copy of the policy adapter as it is now (TRL's DPOTrainer already adds a
    ``"ref"`` adapter when given a ``PeftModel``; it is overwritten). Call it before training starts.
    ``base``: remove a ``"ref"`` adapter if a trainer made one, so that :func:`use_reference` disables
    adapters instead.
    """
    has_reference = REFERENCE_ADAPTER in model.peft_config
    if kind == "base":
        if has_reference:
            model.delete_adapter(REFERENCE_ADAPTER)
        return
    if not has_reference:
        model.add_adapter(REFERENCE_ADAPTER, model.peft_config[POLICY_ADAPTER])
    for name, param in model.named_parameters():
        if f".{POLICY_ADAPTER}." in name:
            reference = model.get_parameter(name.replace(f".{POLICY_ADAPTER}.", f".{REFERENCE_ADAPTER}."))
            # Copy the dtype too: TRL casts the trainable adapter to bf16 on a 4-bit base after making its "ref"
            # copy; the same weights in another dtype would make policy and reference differ at step 0.
            reference.data = param.data.detach().clone()
            reference.requires_grad_(False)


def reference_kind(model: PeftModel) -> ReferenceKind:
    """``"sft"`` if ``model`` carries a frozen reference adapter, else ``"base"``."""
    return "sft" if REFERENCE_ADAPTER in model.peft_config else "base"


@contextmanager
def use_reference(model: PeftModel) -> Iterator[PeftModel]:
    """Run ``model`` as its reference inside the block: the ``"ref"`` adapter if present, else no adapter."""
    if REFERENCE_ADAPTER not in model.peft_config:
        with model.disable_adapter():
            yield model
        return
    previous = model.active_adapter
    # set_adapter marks the adapter it activates as trainable and the others frozen: restore the flags as found.
    trainable = {name: param.requires_grad for name, param in model.named_parameters()}
    model.set_adapter(REFERENCE_ADAPTER)
    try:
        yield model
    finally:
        model.set_adapter(previous)
        for name, param in model.named_parameters():
            param.requires_grad_(trainable[name])
