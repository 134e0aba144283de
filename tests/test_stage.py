"""A recipe's last step: metrics.json, then manifest.json (the stage is complete), both printed."""

from __future__ import annotations

import json

from lightalign.rundir import StageRun
from lightalign.stage import finish_stage


def test_finish_stage_writes_metrics_and_the_manifest_the_next_stage_reads(tmp_path, capsys):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    finish_stage(tmp_path, "sft", {"gold_score": 0.5, "eval_loss": float("nan")},
                 artefacts={"adapter": "adapter", "base_model": "lightalign:tiny-random"}, config_hash="abc")
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"gold_score": 0.5, "eval_loss": None}
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest == {"stage": "sft", "artefacts": {"adapter": "adapter", "base_model": "lightalign:tiny-random"},
                        "config_hash": "abc"}
    run = StageRun.open(tmp_path, expected_base="lightalign:tiny-random")
    assert run.stage == "sft" and run.base_model == "lightalign:tiny-random"
    assert capsys.readouterr().out.endswith(f"lightalign: sft finished: {tmp_path}\n")
