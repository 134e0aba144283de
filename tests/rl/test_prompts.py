"""The prompt sampler of the RL stages: every prompt once per pass, resumable, refusing other data."""

from __future__ import annotations

import pytest

from lightalign.errors import ConfigError
from lightalign.rl.prompts import PromptSampler


def test_prompt_sampler_covers_every_prompt_per_pass_and_resumes():
    sampler = PromptSampler(num_prompts=5, batch_size=2, seed=3)
    batches = [sampler.next_batch() for _ in range(5)]  # 10 indices = two passes
    assert sorted(sum(batches, [])[:5]) == list(range(5)) and sorted(sum(batches, [])[5:]) == list(range(5))
    assert sum(batches, [])[:5] != sum(batches, [])[5:]  # each pass has its own order
    state = sampler.state_dict()
    expected = [sampler.next_batch() for _ in range(3)]
    resumed = PromptSampler(num_prompts=5, batch_size=2, seed=3)
    resumed.load_state_dict(state)
    assert [resumed.next_batch() for _ in range(3)] == expected


def test_prompt_sampler_refuses_a_checkpoint_of_other_data_in_one_line():
    state = PromptSampler(num_prompts=5, batch_size=2, seed=3).state_dict()
    with pytest.raises(ConfigError, match="sampled from 5 prompts, this run has 6") as error:
        PromptSampler(num_prompts=6, batch_size=2, seed=3).load_state_dict(state)
    message = str(error.value)
    assert "same data" in message and "hydra.run.dir" in message and "\n" not in message
