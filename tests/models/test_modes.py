"""``eval_mode``: eval mode inside the block, the previous mode back after it, even when the block raises."""

import pytest
from torch import nn

from lightalign.models.modes import eval_mode


@pytest.mark.parametrize("training", [True, False])
def test_the_previous_mode_comes_back(training):
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train(training)
    with eval_mode(model) as inside:
        assert inside is model and not model.training and not model[1].training
    assert model.training == training and model[1].training == training


def test_the_mode_comes_back_after_an_error():
    model = nn.Dropout().train()
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("a failed evaluation")
    assert model.training
