"""Reading a stage's run directory: where its adapter is and what base it was trained on."""

from __future__ import annotations

import json

import pytest

from lightalign.errors import ConfigError
from lightalign.rundir import resolve_adapter_dir


def test_resolve_adapter_dir_accepts_a_run_dir_or_its_adapter(tmp_path):
    run = tmp_path / "sft"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "manifest.json").write_text(json.dumps({"stage": "sft", "artefacts": {"base_model": "lightalign:tiny"}}))
    assert resolve_adapter_dir(run) == run / "adapter"
    assert resolve_adapter_dir(run / "adapter", expected_base="lightalign:tiny") == run / "adapter"
    with pytest.raises(ConfigError, match="holds no PEFT adapter"):
        resolve_adapter_dir(tmp_path)
    with pytest.raises(ConfigError, match="was trained on 'lightalign:tiny', not"):
        resolve_adapter_dir(run, expected_base="lightalign:smollm2-135m-instruct")
