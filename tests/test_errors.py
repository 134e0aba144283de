"""User-facing errors: one line, and how to resume."""

from __future__ import annotations

import pytest

from lightalign.errors import EXIT_INTERRUPTED, report_errors, resume_hint


def test_resume_names_the_directory_only_when_the_command_did_not():
    assert resume_hint("outputs/sft/2026-12-02_16-00-00", named=True) == "re-run the same command to resume"
    assert resume_hint("outputs/sft/2026-12-02_16-00-00", named=False) == (
        "re-run it with hydra.run.dir=outputs/sft/2026-12-02_16-00-00 to resume")
    assert resume_hint(None, named=False) == "re-run the same command to resume"


@pytest.mark.parametrize("hydra_state", ["none", "composed"])
def test_ctrl_c_outside_a_hydra_run_is_one_line_and_exit_130(capsys, monkeypatch, hydra_state):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    # none: no Hydra job ever ran in this process; composed: a config composed outside a run (lightalign validate,
    # run's pre-flight) left Hydra's global config set, with no output directory in it
    hydra = OmegaConf.create({"runtime": {"output_dir": "???"}, "overrides": {"hydra": []}})
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None if hydra_state == "none" else OmegaConf.create(
        {"hydra": hydra}))

    @report_errors
    def stage() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stopped:
        stage()
    assert stopped.value.code == EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == ("lightalign: interrupted; re-run the same command to resume from the last "
                                       "checkpoint\n")
