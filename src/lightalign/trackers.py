"""Experiment trackers for ``trainer.report_to``: none, tensorboard, wandb or mlflow.

``DIR/logs/metrics.jsonl`` is always written (the report reads it); a tracker is an extra copy of the same
numbers. Trackers are optional packages: a choice is checked when the config is read (before any model
loads) without importing the package (:func:`lightalign.config.schema.check_report_to`), and only the
chosen one is ever imported, by transformers' integration when training starts.

TRL stages log through their trainer; a stage with its own loop (PPO) sends its rows through the same
integrations with :class:`TrackerLog`, so every stage's numbers land in the same place under the same names
(TensorBoard: ``DIR/checkpoints/runs/<date>_<host>/``, ``train/loss``, ``eval/...``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import TrainerControl, TrainerState, TrainingArguments

from lightalign.config.schema import check_report_to


def trl_report_to(choice: str) -> list[str]:
    """The ``report_to`` list transformers expects (``[]`` = no integration, never ``"all"``)."""
    check_report_to(choice)
    return [] if choice == "none" else [choice]


class TrackerLog:
    """The trackers of ``args.report_to`` for a loop of our own: transformers' integration callbacks, driven
    as a trainer drives them (train begin, one ``on_log`` per row, train end). ``args=None``: no tracker.

    Example:
        >>> log = TrackerLog(None)
        >>> log.log({"loss": 0.5}, step=1)  # no tracker chosen: nothing happens
        >>> log.close()
    """

    def __init__(self, args: TrainingArguments | None, *, model: Any = None) -> None:
        from transformers.integrations import get_reporting_integration_callbacks  # imports no tracker yet

        self.args = args
        self.state = TrainerState()
        self.control = TrainerControl()
        self.callbacks = [cls() for cls in get_reporting_integration_callbacks(args.report_to if args else None)]
        for callback in self.callbacks:
            callback.on_train_begin(args, self.state, self.control, model=model)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Send one row of numbers at ``step``; keys named ``eval_*`` show as ``eval/*``, the rest as ``train/*``."""
        self.state.global_step = step
        for callback in self.callbacks:
            callback.on_log(self.args, self.state, self.control, logs=dict(metrics))

    def close(self) -> None:
        for callback in self.callbacks:
            callback.on_train_end(self.args, self.state, self.control)
        self.callbacks = []
