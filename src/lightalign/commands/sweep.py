"""Hydra multirun sweeps: ``lightalign run sft -m lora.r=8,16 trainer.learning_rate=1e-4,2e-4``.

Hydra runs the jobs one after another in this process, each into ``<sweep dir>/<job number>/`` (default
``multirun/<stage>/<time>/``). Each job composes its own config, seeds itself (``trainer.seed``) and loads a
fresh model: the recipe holds nothing between calls. :class:`SweepCallback` (added by ``lightalign run -m``)
frees what a finished job leaves behind (Python garbage, the CUDA cache) and, when the sweep ends, prints a
table of every job's final metrics and writes it to ``<sweep dir>/sweep.md``.
``lightalign report <sweep dir>`` prints it again.
"""

from __future__ import annotations

import gc
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lightalign.rundir import METRICS, read_json

CALLBACK_OVERRIDE = "+hydra.callbacks.lightalign_sweep._target_=lightalign.commands.sweep.SweepCallback"
TABLE_FILE = "sweep.md"
# Metrics shown first when a job has them (one name per meaning across stages: docs/pipelines.md, "Metric names").
PREFERRED_METRICS = ("train_loss", "eval_loss", "correct_fraction", "gold_score", "pairwise_accuracy",
                     "implicit_reward_accuracy", "rm_score", "win_rate_gold", "kl_to_sft")
MAX_METRICS = 6


def is_multirun(overrides: list[str]) -> bool:
    return any(arg in ("-m", "--multirun") for arg in overrides)


def sweep_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every job of a sweep: ``{"job", "dir", "overrides": {key: value}, "metrics": {...}}``, by job number."""
    jobs = []
    job_dirs = [p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    for job_dir in sorted(job_dirs, key=lambda p: int(p.name)):
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
        pairs = dict(str(o).split("=", 1) for o in overrides if "=" in str(o))
        jobs.append({"job": int(job_dir.name), "dir": job_dir, "overrides": pairs,
                     "metrics": read_json(job_dir / METRICS) or {}})
    return jobs


def _format(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def format_sweep_table(jobs: list[dict[str, Any]]) -> str:
    """A Markdown table: the overrides that vary between jobs, then their final metrics (``–``: job unfinished)."""
    keys = list(dict.fromkeys(k for job in jobs for k in job["overrides"]))
    varying = [k for k in keys if len({job["overrides"].get(k) for job in jobs}) > 1] or keys
    present = [m for m in PREFERRED_METRICS if any(m in job["metrics"] for job in jobs)]
    if not present:  # a stage with none of the usual names: its first few numbers
        present = list(dict.fromkeys(m for job in jobs for m in job["metrics"]))
    metrics = present[:MAX_METRICS]
    header = ["job", *varying, *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for job in jobs:
        cells = [str(job["job"]), *(job["overrides"].get(k, "") for k in varying),
                 *(_format(job["metrics"].get(m)) for m in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_sweep_table(sweep_dir: Path) -> str:
    """Build the table from ``sweep_dir``, write it to ``sweep_dir/sweep.md`` and return it."""
    table = format_sweep_table(sweep_jobs(sweep_dir))
    (sweep_dir / TABLE_FILE).write_text(table + "\n", encoding="utf-8")
    return table


def release_memory() -> None:
    """Free what a finished job left: its model and trainer are garbage now; CUDA keeps a cache of them."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


class SweepCallback(Callback):
    """Hydra callback: memory released after each job, the table of results printed after the sweep."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        release_memory()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            print(f"\nlightalign: sweep finished: {sweep_dir}\n{write_sweep_table(sweep_dir)}", flush=True)
