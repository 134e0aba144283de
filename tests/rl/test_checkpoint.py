"""Checkpoints of the stages with their own loop (PPO, GRPO): complete or absent, pruned, every RNG restored."""

from __future__ import annotations

import random

import numpy as np
import torch

from lightalign.rl.checkpoint import capture_rng_state, load_loop_checkpoint, restore_rng_state, save_loop_checkpoint
from lightalign.rl.prompts import PromptSampler
from lightalign.training import find_resume_checkpoint


def _parts():
    layer = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    layer(torch.ones(2, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    scheduler.step()
    return layer, optimizer, scheduler


def test_round_trip_prune_and_torn_checkpoints(tmp_path):
    layer, optimizer, scheduler = _parts()
    root = tmp_path / "checkpoints"
    torn = root / ".checkpoint-9.tmp-abc"  # what a run killed while saving leaves behind
    torn.mkdir(parents=True)
    (root / "checkpoint-7").mkdir()  # no trainer_state.json: incomplete, never resumed from
    for step in (1, 2, 3):
        trainable = {"value_head/weight": layer.weight.detach() * step}
        sampler = PromptSampler(num_prompts=5, batch_size=step, seed=0)
        sampler.next_batch()
        save_loop_checkpoint(tmp_path, step, trainable=trainable, optimizer=optimizer, scheduler=scheduler,
                             sampler=sampler, state={"kl_controller": {"value": step}}, keep=2)
    assert not torn.exists()
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-2", "checkpoint-3", "checkpoint-7"]
    newest = find_resume_checkpoint(tmp_path)
    assert newest == str(root / "checkpoint-3")

    loaded = load_loop_checkpoint(newest)
    assert loaded.step == 3 and loaded.state["sampler"]["position"] == 3 and loaded.state["kl_controller"]["value"] == 3
    torch.testing.assert_close(loaded.trainable["value_head/weight"], layer.weight.detach() * 3)
    fresh_layer, fresh_optimizer, fresh_scheduler = _parts()
    fresh_sampler = PromptSampler(num_prompts=5, batch_size=3, seed=0)
    loaded.restore(fresh_optimizer, fresh_scheduler, fresh_sampler)
    assert (fresh_sampler.epoch, fresh_sampler.position) == (0, 3)
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr()
    exp_avg = fresh_optimizer.state_dict()["state"][0]["exp_avg"]
    torch.testing.assert_close(exp_avg, optimizer.state_dict()["state"][0]["exp_avg"])


def test_rng_state_round_trip(tmp_path):
    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(3)  # move on
    torch.save(state, tmp_path / "rng.pt")
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert again[:2] == expected[:2]
    assert torch.equal(again[2], expected[2])
