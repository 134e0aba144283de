"""Experiment trackers for ``trainer.report_to``: none, tensorboard, wandb or mlflow.

``DIR/logs/metrics.jsonl`` is always written (the report reads it); a tracker is an extra copy of the same
numbers. Trackers are optional packages: a choice is checked when the config is read (before any model
loads) without importing the package, and only the chosen one is ever imported, by transformers'
integration when training starts.
"""

from __future__ import annotations

import importlib.util

from lightalign.errors import ConfigError

# choice -> the package it needs (tensorboard is written through torch.utils.tensorboard)
REPORT_TO: dict[str, str | None] = {"none": None, "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_report_to(choice: str) -> None:
    """Raise :class:`ConfigError` unless ``choice`` is a known tracker whose package is installed.

    Example:
        >>> check_report_to("none")
        >>> check_report_to("comet")
        Traceback (most recent call last):
        ...
        lightalign.errors.ConfigError: trainer.report_to='comet' is not supported; valid: none, tensorboard, ...
    """
    if choice not in REPORT_TO:
        raise ConfigError(f"trainer.report_to={choice!r} is not supported; valid: {', '.join(REPORT_TO)}")
    package = REPORT_TO[choice]
    if package is not None and importlib.util.find_spec(package) is None:
        raise ConfigError(f"trainer.report_to={choice} needs the {package} package: pip install {package}")


def trl_report_to(choice: str) -> list[str]:
    """The ``report_to`` list transformers expects (``[]`` = no integration, never ``"all"``)."""
    check_report_to(choice)
    return [] if choice == "none" else [choice]
