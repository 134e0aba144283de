"""The preference trainers' pieces that are ours: InstructGPT's ranking loss and the DPO loss-type check."""

import math

import pytest
import torch

from lightalign.data.collators import pad_ranked_groups
from lightalign.errors import ConfigError
from lightalign.trainers import check_dpo_loss_type, ranking_loss


def test_ranking_loss_of_one_pair_is_minus_log_sigmoid_of_the_margin():
    loss = ranking_loss(torch.tensor([1.0, 0.0]), torch.tensor([0]), torch.tensor([1]), torch.tensor([1.0]))
    assert loss.item() == pytest.approx(0.313262, abs=1e-6)  # -log σ(1), worked by hand


def test_ranking_loss_averages_each_prompts_pairs_then_the_prompts():
    # prompt A: 3 answers scored 2 > 1 > 0 (pairs with margins 1, 2, 1); prompt B: 2 answers scored equally
    rows = [
        {"input_ids": [[1], [1], [1]], "chosen_index": [0, 0, 1], "rejected_index": [1, 2, 2],
         "pair_weight": [1 / 3] * 3},
        {"input_ids": [[1], [1]], "chosen_index": [0], "rejected_index": [1], "pair_weight": [1.0]},
    ]
    batch = pad_ranked_groups(rows, pad_token_id=0)
    rewards = torch.tensor([2.0, 1.0, 0.0, 0.0, 0.0])
    loss = ranking_loss(rewards, batch["chosen_index"], batch["rejected_index"], batch["pair_weight"])
    # (mean(-log σ(1), -log σ(2), -log σ(1)) + ln 2) / 2, by hand: ((0.313262·2 + 0.126928) / 3 + 0.693147) / 2
    assert loss.item() == pytest.approx(0.472149, abs=1e-5)
    # the plain mean over the 4 pairs would let prompt A's three pairs outweigh prompt B's one
    plain = -torch.nn.functional.logsigmoid(torch.tensor([1.0, 2.0, 1.0, 0.0])).mean().item()
    assert abs(plain - loss.item()) > 0.05 and math.isclose(plain, 0.36165, abs_tol=1e-4)


def test_ranking_loss_has_gradients_towards_the_preference():
    rewards = torch.zeros(2, requires_grad=True)
    ranking_loss(rewards, torch.tensor([0]), torch.tensor([1]), torch.tensor([1.0])).backward()
    assert rewards.grad[0] < 0 < rewards.grad[1]  # descending raises the chosen score, lowers the rejected


def test_dpo_loss_types_are_checked_at_setup():
    assert check_dpo_loss_type("ipo") == "ipo"
    with pytest.raises(ConfigError, match="dpo.loss_type='sigmoïd' is not one of sigmoid, hinge, ipo"):
        check_dpo_loss_type("sigmoïd")
