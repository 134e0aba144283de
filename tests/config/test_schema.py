"""Stage schemas check their values when ``OmegaConf.to_object`` builds them, i.e. at compose time."""

from __future__ import annotations

import pytest

from lightalign.config.schema import PPOOptions
from lightalign.errors import ConfigError


def test_ppo_options_check_value_init_and_the_inherited_ppo_settings():
    assert PPOOptions(value_init="fresh").value_init == "fresh"
    with pytest.raises(ConfigError, match=r"ppo.value_init='bogus' is not one of auto, reward, fresh"):
        PPOOptions(value_init="bogus")
    with pytest.raises(ConfigError, match="ppo.kl_estimator='k9'"):  # PPOSettings' own check still runs
        PPOOptions(kl_estimator="k9")
