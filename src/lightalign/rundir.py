"""The run directory layout every stage writes (``hydra.run.dir=DIR`` puts it all in DIR).

::

    DIR/adapter/          PEFT adapter (+ tokenizer), loadable with PeftModel.from_pretrained
    DIR/config.yaml       the resolved config
    DIR/metrics.json      final evaluation: a flat JSON object of numbers
    DIR/samples.jsonl     {"prompt", "response", ...} per line (base_samples.jsonl: the base model)
    DIR/logs/metrics.jsonl every logged training metric
    DIR/checkpoints/      resumable checkpoints
    DIR/manifest.json     what the stage produced, for the next stage; written last (= stage complete)
    DIR/.lightalign.lock  held by the run writing DIR (:func:`hold_run_directory`)

A later stage reads an earlier one's output through :class:`StageRun`.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from lightalign.errors import ConfigError

ADAPTER = "adapter"
METRICS = "metrics.json"
SAMPLES = "samples.jsonl"
MANIFEST = "manifest.json"
CONFIG = "config.yaml"
ADAPTER_CONFIG = "adapter_config.json"  # PEFT's: what makes a folder an adapter
LOG = Path("logs") / "metrics.jsonl"
LOCK = ".lightalign.lock"

# run directories this process holds: path -> the open lock file (the lock lives as long as the file is open)
_held: dict[Path, Any] = {}


class RunDirectoryBusy(ConfigError):
    """Another process is writing the run directory (a run started twice, or a stage a killed pipeline left)."""


def hold_run_directory(path: Path | str) -> None:
    """Lock ``path`` for this process's life: a second run into the same directory fails with one line.

    Two processes writing one run directory overwrite each other's checkpoints and logs, and the resumed run
    that follows is silently wrong. The lock is the kernel's (``flock`` on ``DIR/.lightalign.lock``): it goes
    when the process ends, however it ends, so a killed run never leaves a stale lock behind. Holding a
    directory this process already holds is a no-op (a recipe run twice in one process, as the tests do).
    Where ``fcntl`` does not exist (Windows) nothing is locked.

    Raises:
        RunDirectoryBusy: another process holds ``path``; the message names its pid.
    """
    path = Path(path).resolve()
    if path in _held or sys.platform == "win32":
        return
    import fcntl

    handle = (path / LOCK).open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunDirectoryBusy(f"{path} is in use by {holder}: wait for it to finish (or stop it), or give "
                               "another hydra.run.dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    _held[path] = handle


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


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or ``None`` if the file does not exist."""
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class StageRun:
    """A stage's output, opened once: its adapter folder and, around it, its run directory's config and manifest.

    The one way a stage finds another stage's model (DPO, PPO, the reward stage and rankings their SFT adapter,
    PPO its reward model, ``chat``/``export`` theirs). ``StageRun.open`` accepts a run directory, its ``adapter/``
    folder, or a bare PEFT adapter folder (then there is no config or manifest), and checks it once.

    Example::

        sft = StageRun.open("outputs/sft/run", expected_base="lightalign:smollm2-135m-instruct")
        sft.adapter_dir          # outputs/sft/run/adapter
        sft.setting("data.max_length", 512)
    """

    adapter_dir: Path
    run_dir: Path | None  # None: a bare adapter folder, outside a run directory
    config: DictConfig | None  # the stage's config.yaml
    manifest: dict | None  # its manifest.json: None until the stage has finished
    adapter_config: dict  # PEFT's adapter_config.json

    @classmethod
    def open(cls, path: str | Path, *, expected_base: str | None = None, stage: str | None = None) -> StageRun:
        """Open the stage output at ``path`` (a run directory, its ``adapter/``, or a bare adapter folder).

        Args:
            expected_base: the base model the adapter will run on (``model.name_or_path``): an adapter only fits
                the base it was trained on. Checked against what the run directory records; a bare adapter
                records only a resolved local path, so it is not checked.
            stage: the stage that must have written it (``"reward"``): needs the run directory's ``config.yaml``.

        Raises:
            ConfigError: one line: no adapter there, another base model, or not a run of ``stage``.
        """
        path = Path(path).expanduser()
        adapter_dir = next((p for p in (path, path / ADAPTER) if (p / ADAPTER_CONFIG).is_file()), None)
        if adapter_dir is None:
            raise ConfigError(f"{path} holds no PEFT adapter (no {ADAPTER_CONFIG} in it or in {path / ADAPTER}): "
                              f"pass a stage's run directory or its {ADAPTER}/ folder")
        parent = adapter_dir.parent
        inside_run = adapter_dir.name == ADAPTER and ((parent / CONFIG).is_file() or (parent / MANIFEST).is_file())
        run_dir = parent if inside_run else None
        run = cls(
            adapter_dir=adapter_dir,
            run_dir=run_dir,
            config=OmegaConf.load(run_dir / CONFIG) if run_dir and (run_dir / CONFIG).is_file() else None,
            manifest=read_manifest(run_dir) if run_dir else None,
            adapter_config=json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8")),
        )
        trained_on = run.base_model
        if expected_base and trained_on and trained_on != expected_base:
            raise ConfigError(f"the adapter in {adapter_dir} was trained on {trained_on!r}, not model.name_or_path="
                              f"{expected_base!r}; pass the same model")
        if stage is not None and run.config is None:
            raise ConfigError(f"{path} has no {CONFIG} beside its adapter: pass the run directory of a {stage} stage")
        if stage is not None and run.stage != stage:
            raise ConfigError(f"{run.run_dir} is the output of a {run.stage!r} stage, not of a {stage} stage")
        return run

    @property
    def stage(self) -> str | None:
        """The stage that wrote it (``"sft"``, ``"reward"`` ...), if its run directory says."""
        return (self.config or {}).get("stage") or (self.manifest or {}).get("stage")

    @property
    def base_model(self) -> str | None:
        """The ``model.name_or_path`` it was trained on, as its run directory records it; None for a bare adapter."""
        recorded = (self.manifest or {}).get("artefacts", {}).get("base_model")
        return recorded or (OmegaConf.select(self.config, "model.name_or_path") if self.config else None)

    @property
    def samples(self) -> Path | None:
        """The finished stage's ``samples.jsonl``: its adapter's own final answers (None if there is none)."""
        if self.run_dir is None or self.manifest is None or not (self.run_dir / SAMPLES).is_file():
            return None
        return self.run_dir / SAMPLES

    def setting(self, key: str, default: Any = None) -> Any:
        """A value of the stage's config by dotted key (``"data.max_length"``; a group as a plain dict), or
        ``default``."""
        value = OmegaConf.select(self.config, key, default=default) if self.config is not None else default
        return OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value


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


def means_at_both_ends(rows: list[dict], key: str, window: int = 5) -> tuple[float, float]:
    """The mean of ``key`` over the first ``window`` rows and over the last ones, never overlapping (a short run
    compares its halves): how a logged number moved over a run.

    Example:
        >>> means_at_both_ends([{"score": s} for s in (1, 2, 3, 4, 5, 6, 7)], "score", window=2)
        (1.5, 6.5)
    """
    width = max(1, min(window, len(rows) // 2))
    first, last = rows[:width], rows[-width:]
    return sum(r[key] for r in first) / len(first), sum(r[key] for r in last) / len(last)


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
