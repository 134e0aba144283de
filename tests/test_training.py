"""Resume discovery: the newest *complete* checkpoint, by step number (checkpoint-10 is newer than -9)."""

from lightalign.training import CHECKPOINTS, checkpoint_step, complete_checkpoints, find_resume_checkpoint


def test_checkpoints_are_ordered_by_step_and_torn_ones_left_out(tmp_path):
    root = tmp_path / CHECKPOINTS
    for name in ("checkpoint-9", "checkpoint-10", "checkpoint-2", "checkpoint-11", "checkpoint-final"):
        (root / name).mkdir(parents=True)
        (root / name / "trainer_state.json").write_text("{}")
    (root / "checkpoint-11" / "trainer_state.json").unlink()  # killed while saving: torn
    assert [p.name for p in complete_checkpoints(root)] == ["checkpoint-2", "checkpoint-9", "checkpoint-10"]
    assert find_resume_checkpoint(tmp_path) == str(root / "checkpoint-10")


def test_no_checkpoints_folder_means_a_fresh_start(tmp_path):
    assert complete_checkpoints(tmp_path / CHECKPOINTS) == []
    assert find_resume_checkpoint(tmp_path) is None


def test_checkpoint_step_reads_the_number_of_a_checkpoint_folder_only(tmp_path):
    assert checkpoint_step(tmp_path / "checkpoint-12") == 12
    for name in ("checkpoint-final", "checkpoint-", "rng-3", "checkpoint-1-2", ".checkpoint-4.staging"):
        assert checkpoint_step(tmp_path / name) is None, name


def test_checkpointing_reaches_trl_under_transformers_current_name_without_a_warning(tmp_path):
    import warnings

    from trl import DPOConfig, SFTConfig

    from lightalign.models import resolve_precision
    from lightalign.training import TrainerSettings, build_trl_args

    for args_cls in (SFTConfig, DPOConfig):
        for on in (False, True):  # TRL's own default is True: False must win
            with warnings.catch_warnings():
                warnings.simplefilter("error", FutureWarning)  # the deprecated name warns
                args = build_trl_args(args_cls, TrainerSettings(gradient_checkpointing=on), tmp_path,
                                      resolve_precision("fp32"))
            assert args.gradient_checkpointing is on
