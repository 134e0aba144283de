"""``ppo.*`` values are checked when the typed config is built, before any model loads."""

from __future__ import annotations

import pytest

from lightalign.errors import ConfigError
from lightalign.ppo.settings import PPOSettings


def test_an_unknown_kl_estimator_names_the_valid_ones():
    assert PPOSettings(kl_estimator="k3").kl_estimator == "k3"
    with pytest.raises(ConfigError, match=r"ppo.kl_estimator='k9' is not one of k1, k3"):
        PPOSettings(kl_estimator="k9")
