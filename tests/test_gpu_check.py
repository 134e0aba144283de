"""bench/gpu_check.sh, as far as a machine without a GPU can check it: syntax, plan, budget, refusals, the table."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightalign.cli import main as cli

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.sh"
PARTS = ["env", "prepare", "tests", "main-job", "sft", "generation", "ppo"]


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **env}, timeout=120)


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_the_dry_run_plans_every_part_within_eight_minutes():
    done = _run("--dry-run", PYTHON=sys.executable)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    budget = re.search(r"budget (\d+) s of 480 s", lines[0])
    assert budget and int(budget.group(1)) <= 480
    rows = [line.split() for line in lines[1:]]
    assert [row[0] for row in rows] == PARTS
    assert sum(int(row[1]) for row in rows) == int(budget.group(1))
    scripts = set(re.findall(r"bench/\w+\.py", done.stdout))
    assert {"bench/sft_throughput.py", "bench/generation.py", "bench/ppo_memory.py"} <= scripts
    for script in scripts:  # every script it calls is in this checkout
        assert (REPO / script).is_file(), script


def test_the_main_job_settings_compose():
    plan = _run("--dry-run", PYTHON=sys.executable).stdout
    overrides = shlex.split(re.search(r"main_job\.py .*? -- (.*)", plan).group(1))
    assert cli(["validate", "full", "model=smollm2-135m", *overrides]) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_refuses_to_run():
    done = _run(PYTHON=sys.executable)
    assert done.returncode == 2 and "no CUDA device" in done.stderr


def test_bad_usage_and_a_python_without_torch_are_refused(tmp_path):
    assert _run("--frobnicate").returncode == 2
    bare = tmp_path / "python"
    bare.write_text("#!/usr/bin/env bash\nexit 1\n")
    bare.chmod(0o755)
    done = _run("--allow-cpu", PYTHON=str(bare))
    assert done.returncode == 2 and "cannot import torch" in done.stderr


def test_every_part_reports_one_row_and_a_failure_sets_the_exit_code(tmp_path):
    # a stand-in python: the SFT benchmark meets its target, the PPO one crashes, everything else succeeds
    fake = tmp_path / "python"
    fake.write_text("#!/usr/bin/env bash\n"
                    'case "$*" in\n'
                    '  *bench/sft_throughput.py*) echo "target >= 1.5x TRL tokens/s: lightalign 2.10x -> met" ;;\n'
                    '  *bench/ppo_memory.py*) echo "out of memory" >&2; exit 3 ;;\n'
                    '  *) echo "ran with $#" ;;\n'
                    "esac\n")
    fake.chmod(0o755)
    done = _run("--allow-cpu", "--out", str(tmp_path / "logs"), PYTHON=str(fake))
    assert done.returncode == 1, done.stdout + done.stderr
    table = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:5]]
             for line in done.stdout.splitlines() if line.startswith("| ") and not line.startswith("| part")}
    assert list(table) == PARTS
    assert table["sft"][0] == "ok" and table["sft"][2].endswith("-> met")
    assert table["ppo"][0] == "failed (3)" and table["ppo"][2] == "out of memory"
    assert all(table[name][0] == "ok" for name in ("env", "prepare", "tests", "main-job", "generation"))
    assert (tmp_path / "logs" / "ppo.log").read_text() == "out of memory\n"
