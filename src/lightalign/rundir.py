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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightalign.errors import ConfigError

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


def write_jsonl_atomic(path: Path, rows: list[Mapping[str, Any]]) -> None:
    """Write one JSON object per line via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
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


def resolve_adapter_dir(path: str | Path, *, expected_base: str | None = None) -> Path:
    """The adapter folder named by ``path``: an ``adapter/`` folder itself, or a stage's run directory.

    Raises:
        ConfigError: if there is no adapter there, or the stage's manifest names another base model than
            ``expected_base`` (an adapter only fits the base it was trained on).
    """
    path = Path(path).expanduser()
    for candidate in (path, path / ADAPTER):
        if (candidate / "adapter_config.json").is_file():
            break
    else:
        raise ConfigError(f"{path} holds no PEFT adapter (no adapter_config.json in it or in {path / ADAPTER})")
    manifest = read_manifest(candidate.parent) or {}
    trained_on = manifest.get("artefacts", {}).get("base_model")
    if expected_base and trained_on and trained_on != expected_base:
        raise ConfigError(f"the adapter in {candidate} was trained on {trained_on!r}, not model.name_or_path="
                          f"{expected_base!r}; pass the same model")
    return candidate


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or ``None`` if the file does not exist."""
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def stage_samples(adapter_dir: Path) -> Path | None:
    """The ``samples.jsonl`` of the finished stage whose ``adapter/`` is ``adapter_dir``: that adapter's own
    final answers. ``None`` for an adapter folder outside a finished run directory."""
    run_dir = adapter_dir.parent
    if adapter_dir.name != ADAPTER or read_manifest(run_dir) is None or not (run_dir / SAMPLES).is_file():
        return None
    return run_dir / SAMPLES


def append_log(path: Path, stage: str, step: int, metrics: Mapping[str, Any]) -> None:
    """Append ``{"stage", "step", **metrics}`` as one line to a JSONL log (``DIR/logs/metrics.jsonl``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps({"stage": stage, "step": step, **metrics}) + "\n")


def read_log(path: Path) -> list[dict]:
    """The rows of a JSONL log, skipping a last line torn by a kill mid-write."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def trim_log(path: Path, stage: str, last_step: int) -> None:
    """Drop ``stage``'s rows after ``last_step``: a run resumed from that step logs those steps again."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if not _logged_after(line, stage, last_step)]
    if len(kept) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)


def _logged_after(line: str, stage: str, last_step: int) -> bool:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return True  # a line torn by a kill mid-write
    return row.get("stage") == stage and int(row.get("step", 0)) > last_step
