"""Reading a stage's output: StageRun finds its adapter, config and manifest once and checks them once."""

from __future__ import annotations

import json

import pytest

from lightalign.errors import ConfigError
from lightalign.rundir import StageRun

TINY = "lightalign:tiny"


def _stage_run(root, stage="sft", *, manifest=True, config=True, samples=False):
    """A run directory as a stage writes it: adapter/, config.yaml, manifest.json (written last)."""
    (root / "adapter").mkdir(parents=True)
    (root / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/resolved/tiny",
                                                                      "task_type": "CAUSAL_LM"}))
    if config:
        (root / "config.yaml").write_text(f"stage: {stage}\nmodel:\n  name_or_path: {TINY}\ndata:\n  max_length: 96\n"
                                          "quant:\n  load_in_4bit: true\n")
    if manifest:
        (root / "manifest.json").write_text(json.dumps({"stage": stage, "artefacts": {"base_model": TINY}}))
    if samples:
        (root / "samples.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
    return root


def test_a_run_directory_and_its_adapter_folder_open_the_same_run(tmp_path):
    root = _stage_run(tmp_path / "sft", samples=True)
    for path in (root, root / "adapter"):
        run = StageRun.open(path, expected_base=TINY, stage="sft")
        assert run.adapter_dir == root / "adapter" and run.run_dir == root
        assert run.stage == "sft" and run.base_model == TINY and run.manifest["stage"] == "sft"
        assert run.adapter_config["task_type"] == "CAUSAL_LM"
        assert run.samples == root / "samples.jsonl"
        assert run.setting("data.max_length") == 96 and run.setting("trainer.precision", "auto") == "auto"
        assert run.setting("quant") == {"load_in_4bit": True}  # a group as a plain dict


def test_a_bare_adapter_folder_has_no_run_around_it(tmp_path):
    root = _stage_run(tmp_path / "bare", config=False, manifest=False)
    run = StageRun.open(root / "adapter", expected_base="any/model")  # nothing recorded to check against
    assert run.run_dir is None and run.config is None and run.manifest is None and run.samples is None
    assert run.base_model is None and run.stage is None and run.setting("data.max_length", 512) == 512


def test_an_unfinished_run_has_no_samples_but_its_config_names_the_base(tmp_path):
    root = _stage_run(tmp_path / "sft", manifest=False, samples=True)
    run = StageRun.open(root)
    assert run.samples is None  # no manifest yet: its samples.jsonl may be half written
    with pytest.raises(ConfigError, match="trained on 'lightalign:tiny', not model.name_or_path='other'"):
        StageRun.open(root, expected_base="other")


@pytest.mark.parametrize("make, kwargs, message", [
    (lambda root: root, {}, "holds no PEFT adapter .* pass a stage's run directory or its adapter/ folder"),
    (lambda root: _stage_run(root), {"expected_base": "lightalign:smollm2-135m-instruct"},
     "the adapter in .* was trained on 'lightalign:tiny', not model.name_or_path='lightalign:smollm2-135m-instruct'"),
    (lambda root: _stage_run(root, config=False, manifest=False), {"stage": "reward"},
     "has no config.yaml beside its adapter: pass the run directory of a reward stage"),
    (lambda root: _stage_run(root), {"stage": "reward"}, "is the output of a 'sft' stage, not of a reward stage"),
], ids=["no-adapter", "wrong-base", "bare-adapter-for-a-stage", "wrong-stage"])
def test_what_cannot_be_used_is_one_config_error_line(tmp_path, make, kwargs, message):
    root = make(tmp_path / "run")
    root.mkdir(parents=True, exist_ok=True)
    with pytest.raises(ConfigError, match=message) as caught:
        StageRun.open(root, **kwargs)
    assert "\n" not in str(caught.value)


def _holder(path):
    """Another process holding ``path`` (as a run writing it would); it prints ``held`` once it does."""
    import subprocess
    import sys

    code = ("import sys, time\nfrom lightalign.rundir import hold_run_directory\n"
            "hold_run_directory(sys.argv[1]); print('held', flush=True); time.sleep(120)")
    process = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_run_directory_is_written_by_one_process_at_a_time(tmp_path):
    from lightalign.rundir import RunDirectoryBusy, hold_run_directory

    holder = _holder(tmp_path)
    try:
        with pytest.raises(RunDirectoryBusy, match=f"{tmp_path} is in use by pid {holder.pid}: .*hydra.run.dir"):
            hold_run_directory(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    hold_run_directory(tmp_path)  # the lock went with the killed process: nothing stale is left behind
    hold_run_directory(tmp_path)  # this process holds it already: a recipe run twice in one process is fine
    assert (tmp_path / ".lightalign.lock").read_text() == f"pid {__import__('os').getpid()}\n"


def test_a_stage_into_a_directory_another_run_writes_is_a_one_line_error(tmp_path, capsys):
    from lightalign.cli import main as cli

    holder = _holder(tmp_path)
    try:
        assert cli(["run", "sft", "model=tiny-random", f"hydra.run.dir={tmp_path}"]) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"is in use by pid {holder.pid}" in err[0]
    assert not (tmp_path / "config.yaml").exists()  # it stopped before writing anything
