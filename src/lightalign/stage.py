"""Small steps every recipe takes: find its run directory, save its config, hash it for resume."""

from __future__ import annotations

import hashlib
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lightalign.distributed import is_main_process
from lightalign.rundir import CONFIG

# Keys that change how a run executes but not what it produces: they do not invalidate a finished stage.
_VOLATILE_KEYS = ("trainer.resume", "trainer.report_to", "eval.batch_size")


def run_directory() -> Path:
    """The Hydra run directory (``hydra.run.dir``), created."""
    path = Path(HydraConfig.get().runtime.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_hash(cfg: DictConfig) -> str:
    """A short hash of what a config produces (the pipeline compares it to skip finished stages)."""
    stable = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if "hydra" in stable:
        del stable["hydra"]
    for key in _VOLATILE_KEYS:
        if OmegaConf.select(stable, key) is not None:
            OmegaConf.update(stable, key, None)
    return hashlib.sha256(OmegaConf.to_yaml(stable, sort_keys=True).encode()).hexdigest()[:16]


def save_config(cfg: DictConfig, output_dir: Path) -> str:
    """Write the resolved config to ``DIR/config.yaml`` (rank 0 only) and return its :func:`config_hash`."""
    if is_main_process():
        (output_dir / CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    return config_hash(cfg)
