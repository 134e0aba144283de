"""Chained pipelines: run stages in order, hand each one its inputs by stage name, skip finished ones.

A pipeline (``conf/pipeline/<name>.yaml``) is a list of stages, and optionally ``overrides`` it gives its stages
before the user's (:func:`pipeline_overrides`). ``lightalign run full [overrides]``:

- composes every stage's own config first (a typo fails before anything trains), routing overrides:
  ``trainer.max_steps=2`` reaches every stage that has the key, ``ppo.trainer.max_steps=50`` only the
  ``ppo`` stage, ``dpo.beta=0.2`` the stage(s) with a ``dpo`` node;
- runs each stage in its own process (``python recipes/<stage>.py``) into ``DIR/<stage>/``: memory
  is returned to the system between stages, and a crash in one stage cannot corrupt another; stages that
  do not need each other's output run side by side (``jobs``, :func:`default_jobs`: on a CPU, sft with
  reward, then ppo with dpo);
- hands off by stage name (:data:`HANDOFF`): e.g. DPO gets ``dpo.sft_adapter=DIR/sft``;
- resumes at stage level: a stage whose identity (its config hash + its upstream stages' identities)
  matches a finished run is skipped; an interrupted stage resumes from its own checkpoints; a stage
  whose config, or any upstream stage, changed is re-run from scratch;
- ends by writing ``DIR/report.md`` / ``report.json`` (:mod:`lightalign.report`).

Stopped (Ctrl-C, or SIGTERM from ``kill``, ``timeout`` or a job scheduler), it stops the stages it started,
records them as ``interrupted`` and exits 130 / 143: no stage is left running, writing into a directory the
next run resumes from (a second run into a held directory fails: :func:`~lightalign.rundir.hold_run_directory`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lightalign.errors import ConfigError, LightalignError, resume_hint
from lightalign.paths import conf_dir, recipes_dir
from lightalign.rundir import hold_run_directory, read_json, read_manifest, write_json_atomic

# stage -> (recipe file, primary config)
STAGE_RECIPES: dict[str, tuple[str, str]] = {
    "sft": ("sft.py", "sft"),
    "pretrain": ("sft.py", "pretrain"),
    "reward": ("reward.py", "reward"),
    "dpo": ("dpo.py", "dpo"),
    "ppo": ("ppo.py", "ppo"),
    "rankings": ("rankings.py", "rankings"),
    "grpo": ("grpo.py", "grpo"),
}

# stage -> {config key: what it receives}: an upstream stage's run directory (``"sft"``) or a file in it
# (``"rankings/pairs.jsonl"``). Used when both stages are in the pipeline.
HANDOFF: dict[str, dict[str, str]] = {
    "rankings": {"rankings.sft_adapter": "sft"},
    "reward": {"reward.init_adapter": "sft", "data.train": "rankings/rankings.jsonl"},
    "dpo": {"dpo.sft_adapter": "sft", "dpo.reward_model": "reward", "data.train": "rankings/pairs.jsonl"},
    "ppo": {"ppo.sft_adapter": "sft", "ppo.reward_model": "reward"},
    "grpo": {"grpo.sft_adapter": "sft", "grpo.reward_model": "reward"},
}

STATE_FILE = "pipeline.json"


# how long stopped stages get to exit before they are killed
STOP_GRACE_SECONDS = 30.0


class StageFailed(LightalignError):
    """A stage's process exited non-zero."""


class PipelineInterrupted(LightalignError):
    """The pipeline was stopped by a signal; its stages were stopped and recorded as ``interrupted``."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 130 for Ctrl-C (EXIT_INTERRUPTED), 143 for SIGTERM


class _Stopped(KeyboardInterrupt):
    """Raised in the pipeline's main thread by the signal that stops it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class PlannedStage:
    name: str
    overrides: list[str]
    identity: str
    upstream: list[str]


def pipeline_names() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "pipeline").glob("*.yaml"))


def load_stages(pipeline: str) -> list[str]:
    """The stage list of ``conf/pipeline/<pipeline>.yaml``."""
    path = conf_dir() / "pipeline" / f"{pipeline}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown pipeline {pipeline!r}; valid: {', '.join(pipeline_names())}")
    stages = list(OmegaConf.load(path).stages)
    unknown = [s for s in stages if s not in STAGE_RECIPES]
    if unknown:
        raise ConfigError(f"{path}: unknown stage(s) {unknown}; valid: {', '.join(STAGE_RECIPES)}")
    return stages


def pipeline_overrides(pipeline: str, stages: list[str]) -> list[str]:
    """The ``overrides`` list of ``conf/pipeline/<pipeline>.yaml``: the pipeline's own choices for its stages,
    given before the user's (so a user's override of the same key wins). One that names a stage by prefix
    (``sft.trainer.gradient_checkpointing=false``) is dropped when ``stages`` leaves that stage out."""
    path = conf_dir() / "pipeline" / f"{pipeline}.yaml"
    given = OmegaConf.load(path).get("overrides") or []
    if not all(isinstance(o, str) and "=" in o for o in given):
        raise ConfigError(f"{path}: overrides must be a list of key=value strings, got {list(given)}")
    named = [(o, o.lstrip("+~").split(".", 1)[0]) for o in given]  # a stage prefix, as route_overrides reads it
    return [o for o, first in named if first not in STAGE_RECIPES or first in stages]


def plan_pipeline(pipeline: str, overrides: list[str], run_dir: Path) -> list[PlannedStage]:
    """:func:`plan` for ``conf/pipeline/<pipeline>.yaml``: ``stages=[sft,dpo]`` among ``overrides`` edits its stage
    list (the last one wins), and the pipeline's own overrides come before the user's."""
    stage_list, overrides = _pop_option(overrides, "stages")
    stages = load_stages(pipeline)
    if stage_list:
        stages = [s.strip() for s in stage_list.strip("[]").split(",") if s.strip()]
    return plan(stages, [*pipeline_overrides(pipeline, stages), *overrides], run_dir)


def _compose(stage: str, overrides: list[str]):
    from lightalign.config.compose import ConfigSource, compose_config

    return compose_config(ConfigSource(conf_dir(), STAGE_RECIPES[stage][1], f"stage {stage}"), overrides)


def route_overrides(overrides: list[str], stages: list[str], top_keys: dict[str, set[str]]) -> dict[str, list[str]]:
    """Send each override to the stage(s) it names.

    ``<stage>.<key>...`` with ``<key>`` a top-level key of that stage goes to that stage alone (prefix
    removed); any other override goes to every stage whose config has its first key.
    """
    routed: dict[str, list[str]] = {stage: [] for stage in stages}
    for override in overrides:
        key, _, value = override.partition("=")
        sign = key[: len(key) - len(key.lstrip("+~"))]
        parts = key.lstrip("+~").split(".")
        if parts[0] in routed and len(parts) > 1 and parts[1] in top_keys[parts[0]]:
            routed[parts[0]].append(f"{sign}{'.'.join(parts[1:])}={value}")
            continue
        targets = [stage for stage in stages if parts[0] in top_keys[stage]]
        if not targets:
            raise ConfigError(f"override {override!r} matches no stage of this pipeline ({', '.join(stages)})")
        for stage in targets:
            routed[stage].append(override)
    return routed


def _stage_of(target: str) -> str:
    """The stage a hand-off target comes from: ``"rankings/pairs.jsonl"`` -> ``"rankings"``."""
    return target.split("/", 1)[0]


def plan(stages: list[str], overrides: list[str], run_dir: Path) -> list[PlannedStage]:
    """Compose every stage's config (failing early on typos) and compute its identity."""
    from lightalign.stage import config_hash

    top_keys = {stage: set(_compose(stage, [])) for stage in stages}
    routed = route_overrides(overrides, stages, top_keys)
    planned: list[PlannedStage] = []
    identities: dict[str, str] = {}
    for stage in stages:
        given = {o.split("=", 1)[0].lstrip("+~") for o in routed[stage]}
        handoff = {
            key: target
            for key, target in HANDOFF.get(stage, {}).items()
            if _stage_of(target) in stages[: stages.index(stage)] and key not in given  # an explicit path wins
        }
        stage_overrides = routed[stage] + [f"{key}={run_dir / target}" for key, target in handoff.items()]
        digest = config_hash(_compose(stage, stage_overrides))
        upstream = sorted({_stage_of(target) for target in handoff.values()})
        identity = hashlib.sha256(
            (digest + "".join(identities[up] for up in upstream)).encode()
        ).hexdigest()[:16]
        identities[stage] = identity
        planned.append(PlannedStage(stage, stage_overrides, identity, upstream))
    return planned


def default_run_dir(pipeline: str) -> Path:
    """``outputs/<pipeline>/<time>``; ``outputs/pipeline-dpo/...`` for the ``dpo`` pipeline, whose name
    the ``dpo`` stage's own runs (``outputs/dpo/...``) already use."""
    folder = f"pipeline-{pipeline}" if pipeline in STAGE_RECIPES else pipeline
    return Path("outputs") / folder / time.strftime("%Y-%m-%d_%H-%M-%S")


def default_jobs() -> int:
    """How many independent stages run at once when ``jobs`` is not given.

    With a GPU, one: every stage wants the GPU's memory to itself. On a CPU with two or more cores, two:
    each stage gets half the cores, and the parts of a stage that one core runs anyway (imports, model
    loading, tokenising, generation's per-token overhead) overlap with the other stage's work. Measured on
    the 2-core CPU: SFT and the reward stage side by side took 335 s against 394 s one after the other.
    """
    import torch

    if torch.cuda.is_available():
        return 1
    return 2 if _cpu_count() >= 2 else 1


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _pop_option(overrides: list[str], key: str) -> tuple[str | None, list[str]]:
    """The value of a pipeline-level ``key=value`` (the last one wins) and the overrides without it."""
    given = [o for o in overrides if o.startswith(f"{key}=")]
    rest = [o for o in overrides if not o.startswith(f"{key}=")]
    return (given[-1].split("=", 1)[1] if given else None), rest


def _parse_jobs(value: str | None) -> int:
    if value is None or value == "auto":
        return default_jobs()
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"jobs={value}: give a number of stages to run at once (1, 2 ...) or auto")
    return int(value)


@dataclass
class _Running:
    step: PlannedStage
    process: subprocess.Popen
    started: float
    log: Path | None  # the stage's output, when it shares the terminal with another stage


def run_pipeline(pipeline: str, overrides: list[str], run_dir: Path | None = None) -> Path:
    """Run (or resume) a pipeline into ``run_dir``; returns the directory holding the report.

    Stages start as soon as the stages handed to them have finished, at most ``jobs`` at once
    (:func:`default_jobs`); stages started side by side get an equal share of the CPU cores
    (``OMP_NUM_THREADS``) unless the environment sets it; a stage alone keeps torch's own choice.
    """
    passthrough = [o for o in overrides if not o.startswith("hydra.run.dir=")]
    jobs_value, passthrough = _pop_option(passthrough, "jobs")
    named = run_dir is not None  # else a new timestamped directory: resuming must name this one
    run_dir = (run_dir or default_run_dir(pipeline)).resolve()
    planned = plan_pipeline(pipeline, passthrough, run_dir)
    jobs = _parse_jobs(jobs_value)
    run_dir.mkdir(parents=True, exist_ok=True)
    hold_run_directory(run_dir)  # before reading its state: another run may be writing it
    state_path = run_dir / STATE_FILE
    state = read_json(state_path) or {"pipeline": pipeline, "stages": {}}

    finished: set[str] = set()
    waiting: list[PlannedStage] = []
    for step in planned:
        record = state["stages"].get(step.name)
        same = record is not None and record["identity"] == step.identity
        if same and record["status"] == "done" and read_manifest(run_dir / step.name):
            print(f"lightalign: {step.name}: finished with the same config, skipped")
            finished.add(step.name)
        else:
            waiting.append(step)

    running: dict[str, _Running] = {}
    failures: list[str] = []
    try:
        with _signal_handlers(_raise_stopped):
            _run_stages(pipeline, run_dir, state, state_path, waiting, running, finished, failures, jobs)
    except KeyboardInterrupt as err:
        signum = err.signum if isinstance(err, _Stopped) else signal.SIGINT
        stopped = _stop_stages(running, state, state_path)
        raise PipelineInterrupted(
            f"{pipeline} stopped by {signal.Signals(signum).name}"
            + (f"; stopped {', '.join(stopped)} (recorded as interrupted in {state_path})" if stopped else "")
            + f"; {resume_hint(run_dir, named=named)}", signum) from None
    if failures:
        raise StageFailed("; ".join(failures) + f"; fix it and {resume_hint(run_dir, named=named)}")
    from lightalign.report import build_report

    report = build_report(run_dir)
    print(report.table_markdown)
    print(f"lightalign: {pipeline} finished; report: {report.path}")
    return run_dir


def _run_stages(pipeline: str, run_dir: Path, state: dict, state_path: Path, waiting: list[PlannedStage],
                running: dict[str, _Running], finished: set[str], failures: list[str], jobs: int) -> None:
    """Start the stages whose inputs are ready, at most ``jobs`` at once, until none is left or one failed;
    ``running`` always holds the stages started and not yet ended (what an interruption must stop)."""
    while waiting or running:
        ready = [s for s in waiting if all(up in finished for up in s.upstream)] if not failures else []
        ready = ready[: max(jobs - len(running), 0)]
        together = len(running) + len(ready)  # counted before any starts: each gets the same share
        threads = max(1, _cpu_count() // max(together, 1))
        for step in ready:
            waiting.remove(step)
            running[step.name] = _start_stage(pipeline, step, run_dir, state, state_path,
                                               share_terminal=together > 1, threads=threads)
        if not running:
            break  # what is left waits on a failed stage
        name, code = _wait_any(running)
        job = running.pop(name)
        seconds = round(time.time() - job.started, 1)
        if code != 0:
            # recorded before anything else: pipeline.json must never say "running" for a stage that ended
            # (log: null when the stage wrote to the terminal)
            state["stages"][name].update(status="failed", exit_code=code, seconds=seconds,
                                         log=str(job.log) if job.log is not None else None)
            write_json_atomic(state_path, state)
            failures.append(f"stage {name} failed (exit {code})")
            if job.log is not None:
                print(f"lightalign: {name} failed; the end of {job.log}:\n" + _tail(job.log), file=sys.stderr)
            continue
        state["stages"][name].update(status="done", seconds=seconds)
        write_json_atomic(state_path, state)
        finished.add(name)
        if job.log is not None:
            print(f"lightalign: {pipeline}: {name} finished in {seconds:.0f} s", flush=True)


@contextmanager
def _signal_handlers(handler: Callable[[int, Any], None] | signal.Handlers) -> Iterator[None]:
    """Inside the block SIGINT and SIGTERM go to ``handler``; after it, to the handlers found. Only the main
    thread can set handlers: a pipeline run from another thread keeps the defaults."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, found in previous.items():
            signal.signal(sig, found)


def _raise_stopped(signum: int, frame: Any) -> None:
    """SIGTERM raises in the main thread as Ctrl-C's SIGINT does (:class:`_Stopped`), so that both stop the stages
    rather than leave them running."""
    raise _Stopped(signum)


def _stop_stages(running: dict[str, _Running], state: dict, state_path: Path) -> list[str]:
    """Stop the stages still running (SIGTERM, then SIGKILL after :data:`STOP_GRACE_SECONDS`), wait for each and
    record it; returns the names of those stopped. A stage that had already ended is recorded as it ended.

    Stages resume from their checkpoints, which are written atomically, so stopping one at any point loses at
    most the steps since its last checkpoint. A second Ctrl-C while they stop is ignored: it would leave them
    running.
    """
    with _signal_handlers(signal.SIG_IGN):
        ended = {name: job.process.poll() for name, job in running.items()}
        for name, job in running.items():
            if ended[name] is None:
                job.process.terminate()
        deadline = time.time() + STOP_GRACE_SECONDS
        stopped = []
        for name, job in running.items():
            try:
                code = job.process.wait(timeout=max(deadline - time.time(), 0.0))
            except subprocess.TimeoutExpired:
                job.process.kill()
                code = job.process.wait()
            status = "interrupted" if ended[name] is None else ("done" if code == 0 else "failed")
            if status == "interrupted":
                stopped.append(name)
            state["stages"][name].update(status=status, exit_code=code, seconds=round(time.time() - job.started, 1))
        running.clear()
        write_json_atomic(state_path, state)
        return stopped


def _start_stage(pipeline: str, step: PlannedStage, run_dir: Path, state: dict, state_path: Path, *,
                 share_terminal: bool, threads: int) -> _Running:
    stage_dir = run_dir / step.name
    record = state["stages"].get(step.name)
    if stage_dir.exists() and (record is None or record["identity"] != step.identity):
        # its config or an upstream stage changed: its checkpoints describe another run
        shutil.rmtree(stage_dir)
    state["stages"][step.name] = {"identity": step.identity, "status": "running", "upstream": step.upstream,
                                  "started": round(time.time(), 1)}
    write_json_atomic(state_path, state)
    recipe, config_name = STAGE_RECIPES[step.name]
    command = [sys.executable, str(recipes_dir() / recipe), "--config-name", config_name,
               *step.overrides, f"hydra.run.dir={stage_dir}"]
    env = dict(os.environ)
    log = None
    if share_terminal:
        # a share of the cores each (alone, torch picks its own count: physical cores, not hyper-threads);
        # two progress bars would garble each other: each stage writes to its own file
        env.setdefault("OMP_NUM_THREADS", str(threads))
        stage_dir.mkdir(parents=True, exist_ok=True)
        log = stage_dir / "output.log"
        print(f"lightalign: {pipeline}: running {step.name} -> {stage_dir} (OMP_NUM_THREADS={env['OMP_NUM_THREADS']}; "
              f"output: {log})", flush=True)
        with log.open("ab") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    else:
        print(f"lightalign: {pipeline}: running {step.name} -> {stage_dir}", flush=True)
        process = subprocess.Popen(command, env=env)
    return _Running(step, process, time.time(), log)


def _wait_any(running: dict[str, _Running]) -> tuple[str, int]:
    """Block until one running stage exits; its name and exit code."""
    while True:
        for name, job in running.items():
            code = job.process.poll()
            if code is not None:
                return name, code
        time.sleep(0.5)


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")  # progress bars use \r
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])
