"""KL controllers: the Ziegler et al. update rule by hand, and checkpoint round trips."""

from __future__ import annotations

import pytest

from lightalign.ppo.kl_control import AdaptiveKLController, FixedKLController


def test_fixed_controller_never_moves():
    ctl = FixedKLController(0.05)
    ctl.update(current_kl=100.0, n_steps=64)
    assert ctl.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05


def test_adaptive_controller_update_by_hand():
    ctl = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10_000)
    # KL 12 -> error 12/6 - 1 = 1, clipped to 0.2 -> beta * (1 + 0.2 * 100/10000) = 0.1 * 1.002
    ctl.update(current_kl=12.0, n_steps=100)
    assert ctl.value == pytest.approx(0.1002)
    # KL 6.6 -> error 0.1 (inside the clip) -> * (1 + 0.1 * 1000/10000) = * 1.01
    ctl.update(current_kl=6.6, n_steps=1000)
    assert ctl.value == pytest.approx(0.1002 * 1.01)
    # KL 3 -> error -0.5, clipped to -0.2 -> * (1 - 0.2 * 500/10000) = * 0.99
    ctl.update(current_kl=3.0, n_steps=500)
    assert ctl.value == pytest.approx(0.1002 * 1.01 * 0.99)
    # on target: no change
    before = ctl.value
    ctl.update(current_kl=6.0, n_steps=500)
    assert ctl.value == pytest.approx(before)


def test_adaptive_controller_resumes_exactly():
    continuous = AdaptiveKLController(0.2, target=4.0, horizon=1000)
    for kl in (8.0, 5.0):
        continuous.update(kl, n_steps=16)
    resumed = AdaptiveKLController(0.2, target=4.0, horizon=1000)
    resumed.load_state_dict(continuous.state_dict())
    for ctl in (continuous, resumed):
        ctl.update(1.0, n_steps=16)
    assert resumed.value == continuous.value
    assert continuous.state_dict() == {"value": continuous.value, "target": 4.0, "horizon": 1000.0}


def test_adaptive_controller_rejects_bad_settings():
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, target=0.0, horizon=100)
