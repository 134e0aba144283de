"""Pipelines: override routing, hand-off by stage name, stage-level resume, and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightalign import pipeline as pipeline_module
from lightalign.cli import main as cli
from lightalign.errors import ConfigError
from lightalign.pipeline import (
    StageFailed,
    default_run_dir,
    load_stages,
    pipeline_names,
    plan,
    route_overrides,
    run_pipeline,
)
from lightalign.report import COLUMNS, build_report

KEYS = {
    "sft": {"model", "trainer", "data", "sft", "eval"},
    "reward": {"model", "trainer", "data", "reward", "eval"},
    "ppo": {"model", "trainer", "data", "ppo", "eval"},
}


def test_overrides_reach_one_stage_or_all():
    routed = route_overrides(
        ["model=tiny-random", "trainer.max_steps=2", "ppo.trainer.max_steps=50", "ppo.kl_coef=0.1", "sft.data.limit=8"],
        ["sft", "reward", "ppo"],
        KEYS,
    )
    assert routed["sft"] == ["model=tiny-random", "trainer.max_steps=2", "data.limit=8"]
    assert routed["reward"] == ["model=tiny-random", "trainer.max_steps=2"]
    assert routed["ppo"] == ["model=tiny-random", "trainer.max_steps=2", "trainer.max_steps=50", "ppo.kl_coef=0.1"]


def test_unknown_keys_and_pipelines_fail_early():
    with pytest.raises(ConfigError, match="matches no stage"):
        route_overrides(["trainr.max_steps=2"], ["sft"], KEYS)
    with pytest.raises(ConfigError, match="valid: dpo, full, grpo, rlhf"):
        load_stages("nope")
    with pytest.raises(ConfigError, match=r"^stage sft: .*'max_step'.*; did you mean trainer.max_steps\?$"):
        plan(["sft", "dpo"], ["trainer.max_step=2"], Path("outputs/RUN"))  # composed as a stage's own run is
    assert {"rlhf", "dpo", "full", "grpo"} <= set(pipeline_names())
    assert load_stages("full") == ["sft", "rankings", "reward", "ppo", "dpo"]
    assert load_stages("rlhf") == ["sft", "rankings", "reward", "ppo"]
    # the dpo pipeline's runs do not land among the dpo stage's own (outputs/dpo/...)
    assert default_run_dir("dpo").parts[:2] == ("outputs", "pipeline-dpo")
    assert default_run_dir("full").parts[:2] == ("outputs", "full")


def test_the_grpo_pipeline_hands_grpo_the_sft_adapter_and_no_reward_model(tmp_path):
    assert load_stages("grpo") == ["sft", "grpo"]
    sft, grpo = plan(load_stages("grpo"), ["model=tiny-random", "trainer.max_steps=2"], tmp_path)
    assert f"grpo.sft_adapter={tmp_path / 'sft'}" in grpo.overrides and grpo.upstream == ["sft"]
    assert not any(o.startswith("grpo.reward_model=") for o in grpo.overrides)  # no reward stage in this pipeline
    assert "trainer.max_steps=2" in sft.overrides and "trainer.max_steps=2" in grpo.overrides


def _state(run_dir):
    return json.loads((run_dir / "pipeline.json").read_text())["stages"]


@pytest.mark.slow
def test_full_pipeline_hands_off_resumes_and_reports(full_smoke_run, capsys):
    run_dir, overrides = full_smoke_run.run_dir, list(full_smoke_run.overrides)
    # as if killed after its second stage: only sft and rankings finished
    first = full_smoke_run.after_two_stages
    assert set(first) == {"sft", "rankings"}

    second = full_smoke_run.after_all  # the same command again
    assert second["sft"] == first["sft"] and second["rankings"] == first["rankings"]  # not re-run
    assert {s["status"] for s in second.values()} == {"done"}
    assert set(second) == {"sft", "rankings", "reward", "ppo", "dpo"}
    # hand-off by stage name: the SFT model's answers are ranked, the reward model starts from SFT and learns
    # those rankings, DPO learns their pairs
    rankings, reward, dpo = ((run_dir / s / "config.yaml").read_text() for s in ("rankings", "reward", "dpo"))
    assert f"sft_adapter: {run_dir / 'sft'}" in rankings
    assert f"init_adapter: {run_dir / 'sft'}" in reward
    assert f"train: {run_dir / 'rankings' / 'rankings.jsonl'}" in reward
    assert f"train: {run_dir / 'rankings' / 'pairs.jsonl'}" in dpo and str(run_dir / "sft") in dpo
    assert str(run_dir / "reward") in (run_dir / "ppo" / "config.yaml").read_text()

    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["rows"]) == {"base", "sft", "ppo", "dpo"}
    assert all(set(row) == {key for key, _ in COLUMNS} for row in report["rows"].values())
    text = (run_dir / "report.md").read_text()
    assert all(title in text for _, title in COLUMNS) and "![curves_sft](curves_sft.png)" in text

    capsys.readouterr()
    assert cli(["run", "full", *overrides]) == 0  # unchanged: trains nothing
    assert _state(run_dir) == second
    assert capsys.readouterr().out.count("skipped") == 5

    # only DPO's config changed: DPO alone runs again (the shared run stays finished, as the fixture asks)
    assert cli(["run", "full", *overrides, "dpo.dpo.beta=0.2"]) == 0
    third = _state(run_dir)
    assert third["dpo"]["identity"] != second["dpo"]["identity"]
    kept = ("sft", "rankings", "reward", "ppo")
    assert {k: third[k] for k in kept} == {k: second[k] for k in kept}


def test_report_rebuilds_from_a_run_directory(tmp_path):
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "metrics.json").write_text(json.dumps({"gold_score": 0.7, "base_gold_score": 0.3}))
    (tmp_path / "dpo").mkdir()
    (tmp_path / "dpo" / "metrics.json").write_text(json.dumps({"gold_score": 0.8, "sft_rm_score": 1.5}))
    (tmp_path / "sft" / "samples.jsonl").write_text(json.dumps({"prompt": "Q?", "response": "A."}) + "\n")
    report = build_report(tmp_path)
    assert report.rows["base"]["gold_score"] == 0.3 and report.rows["dpo"]["gold_score"] == 0.8
    assert report.rows["sft"]["rm_score"] == 1.5  # filled in from the DPO stage's view of SFT
    assert "| base | — | 0.300 |" in report.path.read_text()  # no correct fraction: no judge said
    assert cli(["report", str(tmp_path)]) == 0


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failed_stage_is_recorded_as_failed(tmp_path, monkeypatch, jobs):
    # Stand-in recipes, so no stage trains: the pipeline only sees processes and their exit codes.
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "sft.py").write_text("import sys\nsys.exit(0)\n")
    (recipes / "reward.py").write_text("import sys\nprint('reward: no data')\nsys.exit(3)\n")
    monkeypatch.setattr(pipeline_module, "recipes_dir", lambda: recipes)
    run_dir = tmp_path / "run"
    # jobs=2: sft and reward side by side, each writing to its own log; jobs=1: one after the other
    with pytest.raises(StageFailed, match="stage reward failed \\(exit 3\\)"):
        run_pipeline("full", ["stages=[sft,reward]", f"jobs={jobs}", "reward.reward.init_adapter=null"], run_dir)
    state = _state(run_dir)
    assert state["sft"]["status"] == "done"
    reward = state["reward"]
    assert reward["status"] == "failed" and reward["exit_code"] == 3 and reward["seconds"] >= 0
    if jobs == 2:
        assert reward["log"] == str(run_dir / "reward" / "output.log")
        assert "reward: no data" in (run_dir / "reward" / "output.log").read_text()
    else:  # alone, the stage wrote to the terminal: there is no log file to point at
        assert reward["log"] is None


def test_a_run_without_its_directory_named_says_which_to_resume(tmp_path, monkeypatch):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "sft.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.setattr(pipeline_module, "recipes_dir", lambda: recipes)
    monkeypatch.chdir(tmp_path)
    # no hydra.run.dir: the same command again would start a new timestamped run, so the error names this one
    with pytest.raises(StageFailed, match=r"fix it and re-run it with hydra.run.dir=\S+/outputs/full/\S+ to resume$"):
        run_pipeline("full", ["stages=[sft]"])


@pytest.mark.slow
def test_side_by_side_stages_keep_their_own_output_and_a_failure_loses_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pipeline_module, "_cpu_count", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    run_dir = tmp_path / "run"
    quick = ["model=tiny-random", "trainer.max_steps=2", "eval.num_prompts=2", "eval.max_new_tokens=8",
             f"hydra.run.dir={run_dir}", "stages=[sft,reward]", "jobs=2",
             "reward.reward.init_adapter=null"]  # the reward model from a fresh adapter: it needs nothing of SFT's
    # sft and reward need nothing from each other: they run at once; the reward stage fails on its data
    assert cli(["run", "full", *quick, f"reward.data.train={tmp_path / 'missing.jsonl'}"]) != 0
    out, err = capsys.readouterr()
    for stage in ("sft", "reward"):  # started together: half of the 4 cores each
        assert f"running {stage} -> {run_dir / stage} (OMP_NUM_THREADS=2;" in out
    assert "reward failed; the end of" in err and "missing.jsonl" in err  # the stage's own error, shown
    state = _state(run_dir)
    assert state["sft"]["status"] == "done" and state["reward"]["status"] == "failed"
    assert (run_dir / "sft" / "output.log").is_file() and (run_dir / "reward" / "output.log").is_file()

    assert cli(["run", "full", *quick]) == 0  # fixed: the finished SFT stage is kept
    assert _state(run_dir)["sft"] == state["sft"] and _state(run_dir)["reward"]["status"] == "done"
    assert "sft: finished with the same config, skipped" in capsys.readouterr().out

    with pytest.raises(ConfigError, match="jobs=0"):
        run_pipeline("full", ["model=tiny-random", "jobs=0"], tmp_path / "other")


def test_a_pipeline_gives_its_stages_its_own_overrides_before_the_users(tmp_path, capsys):
    from lightalign.pipeline import pipeline_overrides

    # the shipped pipelines train SFT without checkpointing (the demo's size); dropped where sft does not run
    for name in pipeline_names():
        assert pipeline_overrides(name, load_stages(name))[0] == "sft.trainer.gradient_checkpointing=false", name
    # full's DPO trains on the pairs that differ in correctness, with the chosen answer's NLL (docs/dpo.md)
    assert pipeline_overrides("full", load_stages("full"))[1:] == ["rankings.rankings.pair_margin=0.45",
                                                                   "dpo.dpo.sft_weight=4.0"]
    assert pipeline_overrides("full", ["dpo"]) == ["dpo.dpo.sft_weight=4.0"]
    full = {stage.name: stage for stage in pipeline_module.plan_pipeline("full", ["model=tiny-random"], tmp_path)}
    assert pipeline_module._compose("rankings", full["rankings"].overrides).rankings.pair_margin == 0.45
    assert pipeline_module._compose("dpo", full["dpo"].overrides).dpo.sft_weight == 4.0
    assert pipeline_module._compose("dpo", full["dpo"].overrides + ["dpo.sft_weight=0"]).dpo.sft_weight == 0

    def sft_checkpointing(user: list[str]) -> bool:
        stages = load_stages("dpo")
        sft, _ = plan(stages, [*pipeline_overrides("dpo", stages), "model=tiny-random", *user], tmp_path)
        return pipeline_module._compose("sft", sft.overrides).trainer.gradient_checkpointing

    assert sft_checkpointing([]) is False  # the SFT stage's own default is True (conf/trainer/sft.yaml)
    assert sft_checkpointing(["sft.trainer.gradient_checkpointing=true"]) is True  # the user's wins
    assert pipeline_module._compose("sft", ["model=tiny-random"]).trainer.gradient_checkpointing is True
    # `lightalign validate` shows what `run` will do
    assert cli(["validate", "pipeline/dpo", "model=tiny-random"]) == 0
    sft_config = capsys.readouterr().out.split("# ---- ")[1]
    assert "gradient_checkpointing: false" in sft_config


# A stand-in stage: records its pid in its run directory, then works (sleeps) until stopped; with
# STAND_IN_WORK unset it finishes at once, as a resumed stage would.
_SLEEPING_STAGE = """import os, sys, time
from pathlib import Path
out = Path(next(a for a in sys.argv if a.startswith("hydra.run.dir=")).split("=", 1)[1])
out.mkdir(parents=True, exist_ok=True)
if os.environ.get("STAND_IN_WORK"):
    (out / "pid").write_text(str(os.getpid()))
    time.sleep(120)
"""

_PIPELINE = """import sys
from pathlib import Path
import lightalign.pipeline as pipeline
pipeline.recipes_dir = lambda: Path(sys.argv[1])
from lightalign.cli import main
sys.exit(main(["run", "full", *sys.argv[2:]]))
"""


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(("jobs", "signum"), [(1, "SIGTERM"), (2, "SIGINT")])
def test_a_stopped_pipeline_stops_its_stages_and_resumes(tmp_path, jobs, signum, monkeypatch):
    import os
    import signal
    import subprocess
    import sys
    import time

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    for stage in ("sft", "reward"):
        (recipes / f"{stage}.py").write_text(_SLEEPING_STAGE)
    run_dir = tmp_path / "run"
    # jobs=2: sft and reward side by side (the reward model from a fresh adapter needs nothing of SFT's)
    args = [sys.executable, "-c", _PIPELINE, str(recipes), f"hydra.run.dir={run_dir}", "stages=[sft,reward]",
            f"jobs={jobs}", "reward.reward.init_adapter=null"]
    started = ["sft", "reward"][:jobs]
    pipeline = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "STAND_IN_WORK": "1"})
    deadline = time.time() + 120
    while not all((run_dir / s / "pid").exists() for s in started):
        assert pipeline.poll() is None and time.time() < deadline, pipeline.communicate()
        time.sleep(0.2)
    pids = {s: int((run_dir / s / "pid").read_text()) for s in started}
    pipeline.send_signal(getattr(signal, signum))
    _, err = pipeline.communicate(timeout=60)
    assert pipeline.returncode == 128 + getattr(signal, signum)
    assert f"full stopped by {signum}; stopped {', '.join(started)} (recorded as interrupted" in err
    assert not any(_alive(pid) for pid in pids.values())  # no stage left running, writing into the run
    state = _state(run_dir)
    assert all(state[s]["status"] == "interrupted" for s in started) and set(state) == set(started)

    monkeypatch.delenv("STAND_IN_WORK", raising=False)
    again = subprocess.run(args, capture_output=True, text=True, timeout=120)  # the same command resumes
    assert again.returncode == 0, again.stderr
    assert all(record["status"] == "done" for record in _state(run_dir).values())
