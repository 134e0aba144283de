"""What a model source names: a run directory, its adapter folder, a bare adapter, or a base model."""

from __future__ import annotations

import json

import pytest

from lightalign.errors import ConfigError
from lightalign.models.trained import resolve_model_source

RUN_CONFIG = """stage: dpo
model: {name_or_path: lightalign:tiny-random, revision: null, trust_remote_code: false}
quant: {load_in_4bit: true, quant_type: nf4, double_quant: true}
trainer: {precision: fp32}
"""


def _run_dir(tmp_path, config=RUN_CONFIG):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/elsewhere"}))
    (tmp_path / "config.yaml").write_text(config)
    return tmp_path


def test_a_run_directory_and_its_adapter_folder_name_the_same_model(tmp_path):
    run = _run_dir(tmp_path)
    for source in (run, run / "adapter"):
        resolved = resolve_model_source(source)
        assert resolved.base == "lightalign:tiny-random"  # from config.yaml, not the adapter's recorded path
        assert resolved.adapter == run / "adapter" and resolved.stage == "dpo" and resolved.head == "causal-lm"
        assert resolved.quantization.load_in_4bit and resolved.precision == "fp32"


def test_full_precision_runs_and_reward_runs(tmp_path):
    run = _run_dir(tmp_path, RUN_CONFIG.replace("load_in_4bit: true", "load_in_4bit: false").replace("dpo", "reward"))
    resolved = resolve_model_source(run)
    assert resolved.quantization is None and resolved.head == "score"


def test_a_bare_adapter_uses_the_base_peft_recorded(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base",
                                                              "task_type": "SEQ_CLS"}))
    resolved = resolve_model_source(tmp_path)
    assert resolved.base == "org/base" and resolved.adapter == tmp_path and resolved.head == "score"


def test_model_names_pass_through_and_empty_folders_fail(tmp_path):
    assert resolve_model_source("lightalign:tiny-random").adapter is None
    with pytest.raises(ConfigError, match="holds no PEFT adapter"):
        resolve_model_source(tmp_path)


def test_a_config_names_its_base_as_the_stage_that_trained_on_it_does(tmp_path):
    from lightalign.config.schema import ModelSettings, Quantization
    from lightalign.models.trained import ModelSource

    own = ModelSource.of_settings(ModelSettings(name_or_path="lightalign:tiny-random"), Quantization(), "fp32")
    assert own.base == "lightalign:tiny-random" and own.adapter is None and own.quantization.load_in_4bit
    full_precision = ModelSource.of_settings(ModelSettings(name_or_path="m"), Quantization(load_in_4bit=False))
    assert full_precision.quantization is None and full_precision.precision == "auto"
    trained = resolve_model_source(_run_dir(tmp_path))
    assert (trained.base, trained.quantization, trained.precision, trained.attn_implementation) == (
        own.base, own.quantization, own.precision, own.attn_implementation)
