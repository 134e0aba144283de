"""What the benchmarks share: run one variant per child process, time training steps, read peak memory.

Every benchmark runs each variant in a fresh child process (so peak memory is that variant's alone) and
alternates the variants across rounds (so slow drift of a shared machine hits all of them alike), then
prints medians and ratios. Only ratios measured in the same run are comparable: never compare absolute
numbers across runs on a shared machine.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

RESULT_PREFIX = "BENCH-RESULT "


# ---- peak memory ------------------------------------------------------------------------------------------------


def reset_peak_memory() -> None:
    """Start a new peak-memory window: CUDA's allocator peak, or on CPU the kernel's peak RSS (VmHWM)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        # Linux ≥ 4.0: writing 5 resets VmHWM to the current RSS, so the peak of the phase after it can be read.
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # the peak then covers the whole process (model loading included), which is still an upper bound


def peak_memory_mb() -> float:
    """Peak since :func:`reset_peak_memory`: CUDA memory allocated by torch, or peak resident memory on CPU."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU, {torch.get_num_threads()} torch threads"


# ---- timing training steps --------------------------------------------------------------------------------------


class CountingCollator:
    """Wrap a collator and record, per batch, the real (non-padding) tokens, all positions and loss tokens."""

    def __init__(self, inner: Callable[[list], dict]) -> None:
        self.inner = inner
        self.batches: list[dict[str, int]] = []

    def __call__(self, rows: list) -> dict:
        batch = self.inner(rows)
        ids = batch["input_ids"]
        real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else ids.numel()
        counts = {"tokens": real, "positions": ids.numel()}
        if "labels" in batch:
            counts["loss_tokens"] = int((batch["labels"] != -100).sum())
        self.batches.append(counts)
        return batch


@dataclass
class StepTimer(TrainerCallback):
    """Wall time of the optimizer steps after the first ``warmup`` ones (which pay for lazy initialisation).

    The window runs from the end of step ``warmup`` to the end of the last step, so it holds everything a
    step costs: collating, forward, backward, optimizer, logging. Peak memory is reset when training begins.
    """

    warmup: int = 1
    ends: list[float] = field(default_factory=list)

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201 (transformers API)
        reset_peak_memory()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201 (transformers API)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())

    def timed_steps(self) -> int:
        return len(self.ends) - self.warmup

    def seconds(self) -> float:
        if self.warmup < 1 or self.timed_steps() < 1:
            raise RuntimeError(f"{len(self.ends)} steps ran with warmup={self.warmup}: need 1 <= warmup < steps")
        return self.ends[-1] - self.ends[self.warmup - 1]


def throughput(timer: StepTimer, counter: CountingCollator, accumulation: int = 1) -> dict[str, float]:
    """Tokens/second over the timed steps, counting the batches those steps consumed (in collation order)."""
    batches = counter.batches[timer.warmup * accumulation : len(timer.ends) * accumulation]
    seconds = timer.seconds()
    tokens = sum(b["tokens"] for b in batches)
    positions = sum(b["positions"] for b in batches)
    return {
        "steps": timer.timed_steps(),
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_second": tokens / seconds,
        "padding_fraction": 1 - tokens / max(positions, 1),
        "loss_tokens": sum(b.get("loss_tokens", 0) for b in batches),
    }


# ---- child processes --------------------------------------------------------------------------------------------


def emit_result(result: dict[str, Any]) -> None:
    """Print a child's result where the parent finds it (one line of JSON after a fixed prefix)."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_child(script: Path, args: Sequence[str], *, python: str | Path = sys.executable,
              result_prefix: str = RESULT_PREFIX) -> dict[str, Any]:
    """Run ``python script args`` and return the JSON result it printed last; its output is shown only on failure.

    ``result_prefix=""`` reads a child that prints its result as a bare JSON line (``bench/ppo_memory.py``).
    """
    started = time.perf_counter()
    proc = subprocess.run([str(python), str(script), *args], capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    marker = result_prefix or "{"
    lines = [line for line in proc.stdout.splitlines() if line.startswith(marker)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise RuntimeError(f"benchmark child {script.name} {' '.join(args)} failed (exit {proc.returncode})")
    result = json.loads(lines[-1][len(result_prefix):])
    result["process_seconds"] = time.perf_counter() - started
    return result


def alternating(variants: Sequence[str], rounds: int) -> list[str]:
    """Run order: A B C, then C B A, ...: each variant sees early and late slots alike."""
    order: list[str] = []
    for index in range(rounds):
        order += list(variants) if index % 2 == 0 else list(reversed(variants))
    return order


def run_variants(script: Path, variants: Sequence[str], rounds: int, passthrough: Sequence[str],
                 describe: Callable[[str, dict[str, Any]], str]) -> dict[str, list[dict[str, Any]]]:
    """Run ``script --child=VARIANT`` for each variant, :func:`alternating` over ``rounds``, printing
    ``describe(variant, result)`` as each finishes; the results by variant, in run order."""
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for variant in alternating(variants, rounds):
        result = run_child(script, [*passthrough, f"--child={variant}"])
        results[variant].append(result)
        print(describe(variant, result), flush=True)
    return results


def median_of(results: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in results)


def child_arguments(argv: list[str] | None) -> list[str]:
    """The parent's command line minus ``--child``: what each child process is started with (plus its own)."""
    return [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--child")]


def print_load_warning() -> None:
    """Print :func:`load_warning`'s warning, if there is one."""
    warning = load_warning()
    if warning:
        print(warning)


def load_warning(max_load: float = 1.5) -> str | None:
    """A warning when other processes share the CPUs (numbers are then noisy; ratios suffer less)."""
    load = os.getloadavg()[0]
    if load > max_load:
        return f"WARNING: load average {load:.2f} > {max_load}: other processes share the CPUs; numbers are noisy"
    return None


def target_verdict(speed: float, memory: float, target_speed: float, target_memory: float) -> str:
    """``"1.60x, 0.77x -> missed"``: lightalign's speed and memory ratios against a >= speed, <= memory target."""
    met = speed >= target_speed and memory <= target_memory
    return f"{speed:.2f}x, {memory:.2f}x -> {'met' if met else 'missed'}"


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A Markdown table (pasted as is into BENCHMARKS.md)."""
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row) + " |")
