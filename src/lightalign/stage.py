"""Small steps every recipe takes: start (typed config, run directory, saved config, seed), hash the config for
resume, finish (metrics, manifest)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lightalign.distributed import is_main_process
from lightalign.rundir import CONFIG, hold_run_directory, write_manifest, write_metrics

# Keys that change how a run executes but not what it produces: they do not invalidate a finished stage.
_VOLATILE_KEYS = ("trainer.resume", "trainer.report_to", "eval.batch_size")


def run_directory() -> Path:
    """The Hydra run directory (``hydra.run.dir``), created and held by this run (:func:`hold_run_directory`;
    under a multi-process launcher by rank 0, which writes it)."""
    path = Path(HydraConfig.get().runtime.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        hold_run_directory(path)
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


def start_stage(cfg: DictConfig) -> tuple[Any, Path, str]:
    """A recipe's first step: ``run, out, config_hash = start_stage(cfg)``.

    Returns the typed config (``OmegaConf.to_object``: a typo'd or mistyped key has already failed at compose
    time), the run directory (created, its ``config.yaml`` written) and the config's :func:`config_hash`; the
    seed (``trainer.seed``) is set.
    """
    # imported here: the pipeline imports this module for config_hash and should not pay for transformers
    from transformers import set_seed

    run = OmegaConf.to_object(cfg)
    out = run_directory()
    config_hash = save_config(cfg, out)
    set_seed(run.trainer.seed)
    return run, out, config_hash


def finish_stage(out: Path, stage: str, metrics: dict[str, float], *, artefacts: dict[str, str],
                 config_hash: str) -> None:
    """A recipe's last step: write ``metrics.json``, then ``manifest.json`` (written last: the stage is complete
    and the next one may read it), and print both for the terminal."""
    write_metrics(out, metrics)
    write_manifest(out, stage, artefacts, config_hash)
    print(OmegaConf.to_yaml(OmegaConf.create({"metrics": metrics})))
    print(f"lightalign: {stage} finished: {out}")
