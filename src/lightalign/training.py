"""What every TRL-based stage shares: trainer settings → TRL config, callbacks, resume discovery."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import TrainerCallback, TrainingArguments

from lightalign.config.schema import TrainerSettings
from lightalign.errors import NonFiniteLossError
from lightalign.models.precision import Precision
from lightalign.rundir import append_log
from lightalign.trackers import trl_report_to

ArgsT = TypeVar("ArgsT", bound=TrainingArguments)

CHECKPOINTS = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"
# Written last into a checkpoint, by TRL and by lightalign.rl.checkpoint alike: it marks the folder complete.
TRAINER_STATE = "trainer_state.json"


def build_trl_args(
    args_cls: type[ArgsT], settings: TrainerSettings, output_dir: Path, precision: Precision, **stage_args: Any
) -> ArgsT:
    """A TRL/transformers config from our settings. Precision is always explicit (TRL defaults to bf16)."""
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir / CHECKPOINTS),
        max_steps=settings.max_steps,
        num_train_epochs=settings.num_train_epochs,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        warmup_steps=settings.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        lr_scheduler_type=settings.lr_scheduler_type,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        logging_steps=settings.logging_steps,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=precision.bf16,
        fp16=precision.fp16,
        # transformers 5 renamed it (the old name warns on every run); older ones only know the old name
        **{_checkpointing_field(args_cls): settings.gradient_checkpointing},
        report_to=trl_report_to(settings.report_to),
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
        # Without CUDA the base is loaded on the CPU (load_base_model), so the trainer must stay there too:
        # this also makes a multi-process launch on CPU run as DDP over gloo instead of N unrelated runs.
        use_cpu=not torch.cuda.is_available(),
    )
    return args_cls(**{**kwargs, **stage_args})  # a stage may override any of the shared choices


def _checkpointing_field(args_cls: type) -> str:
    names = {f.name for f in dataclasses.fields(args_cls)} if dataclasses.is_dataclass(args_cls) else set()
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def complete_checkpoints(root: Path) -> list[Path]:
    """The complete ``checkpoint-<step>`` folders in ``root``, oldest step first.

    A checkpoint is complete once its ``trainer_state.json`` is written (the last file, for TRL and for
    lightalign.rl.checkpoint alike): a torn one lacks it and is left out.
    """
    complete = [path for path in root.glob(f"{CHECKPOINT_PREFIX}*")
                if checkpoint_step(path) is not None and (path / TRAINER_STATE).is_file()]
    return sorted(complete, key=checkpoint_step)


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``checkpoint-<step>`` folder (``checkpoint-12`` → 12); None for any other name."""
    step = path.name.removeprefix(CHECKPOINT_PREFIX)
    return int(step) if path.name.startswith(CHECKPOINT_PREFIX) and step.isdigit() else None


def find_resume_checkpoint(output_dir: Path) -> str | None:
    """The newest complete checkpoint under ``DIR/checkpoints`` (:func:`complete_checkpoints`), if any."""
    complete = complete_checkpoints(output_dir / CHECKPOINTS)
    return str(complete[-1]) if complete else None


class NonFiniteLossCallback(TrainerCallback):
    """Stop at the first NaN/inf loss, naming the step; checkpoints written before it stay valid.

    Gradients are checked before every optimizer step (a NaN loss gives NaN gradients), so a bad step
    never reaches the weights or a checkpoint, whatever ``logging_steps`` is.
    """

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):  # noqa: ANN001 (transformers API)
        if model is None:
            return control
        for param in model.parameters():
            if param.grad is not None and not torch.isfinite(param.grad).all():
                raise NonFiniteLossError(
                    f"non-finite loss/gradients at step {state.global_step + 1}; the weights were not updated and the "
                    f"last checkpoint in {args.output_dir} is intact. Lower trainer.learning_rate or check the data."
                )
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 (transformers API)
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(
                f"loss became {loss} at step {state.global_step}; the last checkpoint in "
                f"{args.output_dir} is intact. Lower trainer.learning_rate or check the data."
            )
        return control


class JsonlLogCallback(TrainerCallback):
    """Append every logged metric dict to ``DIR/logs/metrics.jsonl`` (the report's source of curves)."""

    def __init__(self, path: Path, stage: str) -> None:
        self.path = path
        self.stage = stage
        path.parent.mkdir(parents=True, exist_ok=True)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 (transformers API)
        if logs and state.is_world_process_zero:
            append_log(self.path, self.stage, state.global_step, logs)
        return control
