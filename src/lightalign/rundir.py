"""The run directory layout every stage writes (``hydra.run.dir=DIR`` puts it all in DIR).

::

    DIR/adapter/          PEFT adapter (+ tokenizer), loadable with PeftModel.from_pretrained
    DIR/config.yaml       the resolved config
    DIR/metrics.json      final evaluation: a flat JSON object of numbers
    DIR/samples.jsonl     {"prompt", "response", ...} per line (base_samples.jsonl: the base model)
    DIR/logs/metrics.jsonl every logged training metric
    DIR/checkpoints/      resumable checkpoints
    DIR/manifest.json     what the stage produced, for the next stage; written last (= stage complete)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

ADAPTER = "adapter"
METRICS = "metrics.json"
SAMPLES = "samples.jsonl"
MANIFEST = "manifest.json"
CONFIG = "config.yaml"
LOG = Path("logs") / "metrics.jsonl"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_metrics(output_dir: Path, metrics: dict[str, float]) -> Path:
    """``metrics.json``: numbers only; a non-finite value is written as null rather than breaking JSON."""
    clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}
    path = output_dir / METRICS
    write_json_atomic(path, clean)
    return path


def write_manifest(output_dir: Path, stage: str, artefacts: dict[str, str], config_hash: str) -> Path:
    """Mark the stage complete and say what it produced (paths relative to ``output_dir``)."""
    path = output_dir / MANIFEST
    write_json_atomic(path, {"stage": stage, "artefacts": artefacts, "config_hash": config_hash})
    return path


def read_manifest(output_dir: Path) -> dict | None:
    path = output_dir / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or ``None`` if the file does not exist."""
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
