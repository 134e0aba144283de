"""Typed config schemas (Hydra ConfigStore) and the helpers recipes use to read them."""

from lightalign.config.schema import (
    DataSettings,
    EvalSettings,
    ModelSettings,
    StageConfig,
    register_configs,
)

__all__ = ["DataSettings", "EvalSettings", "ModelSettings", "StageConfig", "register_configs"]
