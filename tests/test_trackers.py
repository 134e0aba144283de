"""``trainer.report_to``: known choices only, the package checked without importing it."""

from __future__ import annotations

import sys

import pytest
from transformers import TrainingArguments

from lightalign.errors import ConfigError
from lightalign.models import resolve_precision
from lightalign.trackers import check_report_to, trl_report_to
from lightalign.training import TrainerSettings, build_trl_args


def test_unknown_choice_names_the_valid_ones():
    with pytest.raises(ConfigError, match="valid: none, tensorboard, wandb, mlflow"):
        TrainerSettings(report_to="comet")  # checked when a recipe builds its typed config


def test_a_missing_package_gives_the_install_command(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install wandb"):
        check_report_to("wandb")


def test_a_chosen_tracker_is_checked_but_not_imported(tmp_path, monkeypatch):
    fake = tmp_path / "mlflow"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert trl_report_to("mlflow") == ["mlflow"] and "mlflow" not in sys.modules
    args = build_trl_args(TrainingArguments, TrainerSettings(report_to="none"), tmp_path, resolve_precision("auto"))
    assert args.report_to == [] and "mlflow" not in sys.modules
