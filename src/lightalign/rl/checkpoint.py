"""Resumable checkpoints of the stages that run their own loop (PPO, GRPO), written atomically: a checkpoint
folder exists complete or not at all.

``DIR/checkpoints/checkpoint-<step>/`` holds:

- ``trainable.safetensors``: whatever the stage trains, as one flat dict of tensors (PPO: the policy and value
  adapters and the value head, :meth:`~lightalign.ppo.roles.SharedBaseRoles.trainable_state_dict`; GRPO: the
  policy adapter);
- ``optimizer.pt``, ``scheduler.pt``: their ``state_dict()``;
- ``rng.pt``: the Python, NumPy and torch (CPU and CUDA) generator states;
- ``trainer_state.json``: the step number, the prompt sampler's position, PPO's KL controller (β) and any
  other JSON state the recipe adds. Its presence marks the folder complete, as for the TRL-based stages,
  so :func:`lightalign.training.find_resume_checkpoint` finds the newest one of these too.

Everything is written into a hidden staging folder next to the final one and renamed into place
(:func:`lightalign.atomic.build_folder_atomically`): a run killed while saving leaves the previous checkpoint
as the newest complete one.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from lightalign.atomic import build_folder_atomically, remove_leftovers
from lightalign.rl.prompts import PromptSampler
from lightalign.training import CHECKPOINT_PREFIX, CHECKPOINTS, TRAINER_STATE, complete_checkpoints


def capture_rng_state() -> dict[str, Any]:
    """Every random generator a training step draws from (sampling, mini-batch shuffling)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # as plain types: torch.load(weights_only=True) refuses NumPy arrays
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`capture_rng_state` saved."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class LoopCheckpoint:
    """A loaded checkpoint; apply each part to the object it came from."""

    path: Path
    trainable: dict[str, Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def restore(self, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                sampler: PromptSampler) -> None:
        """Put the optimiser, the schedule, the prompt order and every random generator back as they were; what
        is trained (``trainable``) and the rest of ``state`` are the caller's to restore."""
        optimizer.load_state_dict(self.optimizer)
        scheduler.load_state_dict(self.scheduler)
        sampler.load_state_dict(self.state["sampler"])
        restore_rng_state(self.rng)


def save_loop_checkpoint(
    output_dir: Path,
    step: int,
    *,
    trainable: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    sampler: PromptSampler,
    state: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write ``DIR/checkpoints/checkpoint-<step>`` atomically and keep only the newest ``keep`` (0: all).

    Args:
        output_dir: the run directory.
        step: the number of steps (PPO updates, GRPO steps) done.
        trainable: tensors to restore what is trained from.
        optimizer, scheduler, sampler: saved through ``state_dict()``.
        state: any other JSON-serialisable state (PPO's KL controller); ``step`` and ``sampler`` are added.
        keep: ``trainer.save_total_limit``.

    Returns:
        The checkpoint folder.
    """
    root = output_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    remove_leftovers(root, f"{CHECKPOINT_PREFIX}*")  # of a run killed while saving (one writer per run directory)

    def write(staging: Path) -> None:
        save_file({k: v.contiguous() for k, v in trainable.items()}, staging / "trainable.safetensors")
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(scheduler.state_dict(), staging / "scheduler.pt")
        torch.save(capture_rng_state(), staging / "rng.pt")
        # Written last: its presence is what marks a checkpoint complete.
        everything = {**(state or {}), "sampler": sampler.state_dict(), "step": step}
        (staging / TRAINER_STATE).write_text(json.dumps(everything, indent=2), encoding="utf-8")

    # replace=True: a rerun reaching the same update again replaces the old checkpoint with the new state
    final = build_folder_atomically(root / f"{CHECKPOINT_PREFIX}{step}", write, replace=True)
    if keep > 0:
        for old in complete_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_loop_checkpoint(path: str | Path) -> LoopCheckpoint:
    """Read a folder written by :func:`save_loop_checkpoint` (tensors on CPU)."""
    path = Path(path)
    return LoopCheckpoint(
        path=path,
        trainable=load_file(path / "trainable.safetensors"),
        optimizer=torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
        scheduler=torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True),
        rng=torch.load(path / "rng.pt", map_location="cpu", weights_only=True),
        state=json.loads((path / TRAINER_STATE).read_text(encoding="utf-8")),
    )
