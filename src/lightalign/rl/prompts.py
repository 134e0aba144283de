"""Which prompts an RL step samples from next (PPO, GRPO): shuffled passes whose position is checkpointed."""

from __future__ import annotations

import torch

from lightalign.errors import ConfigError


class PromptSampler:
    """Shuffled passes over ``num_prompts`` prompts, ``batch_size`` at a time; a batch may span two passes.

    Each pass has its own permutation drawn from ``seed + epoch`` (not from the global RNG), so the order
    depends only on the state ``(epoch, position)``, which :meth:`state_dict` saves.

    Example:
        >>> sampler = PromptSampler(num_prompts=3, batch_size=2, seed=0)
        >>> len(sampler.next_batch()), len(sampler.next_batch()), sampler.epoch
        (2, 2, 1)
    """

    def __init__(self, num_prompts: int, batch_size: int, seed: int = 0) -> None:
        if num_prompts < 1 or batch_size < 1:
            raise ValueError(f"need prompts and a batch size, got {num_prompts} prompts, batch size {batch_size}")
        self.num_prompts = num_prompts
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.position = 0

    def _order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_prompts, generator=generator).tolist()

    def next_batch(self) -> list[int]:
        """Indices of the next ``batch_size`` prompts."""
        indices: list[int] = []
        while len(indices) < self.batch_size:
            order = self._order()
            take = order[self.position : self.position + self.batch_size - len(indices)]
            indices += take
            self.position += len(take)
            if self.position >= self.num_prompts:
                self.epoch, self.position = self.epoch + 1, 0
        return indices

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "num_prompts": self.num_prompts}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue where ``state`` left off.

        Raises:
            ConfigError: the checkpoint sampled from another number of prompts (the data changed), so its
                position would point at other prompts than the ones it had reached.
        """
        if state["num_prompts"] != self.num_prompts:
            raise ConfigError(f"cannot resume: the checkpoint sampled from {state['num_prompts']} prompts, this run "
                              f"has {self.num_prompts}; resume with the same data (data.train, data.limit, "
                              f"data.max_length), or start afresh with a new hydra.run.dir")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
