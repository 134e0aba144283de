"""Fixtures shared by the recipe tests: a separable toy ranking set, a reward run, checks of RL runs and errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lightalign.cli import main as cli

WORDS = ["apple", "river", "stone", "cloud", "green", "piano", "tiger", "lemon", "north", "candle", "glass", "forest"]
# Trivially separable: the best answer is enthusiastic, the worst dismissive, whatever the prompt.
TEMPLATES = ["Sure, {} is great!", "Well, {} is fine.", "No. {} is awful."]
REWARD_STEPS = 20


@pytest.fixture(scope="session")
def toy_rankings(tmp_path_factory) -> Path:
    """40 prompts, each with 3 answers in shuffled order and their ranking (best first)."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("toy") / "rankings.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for i in range(40):
            word = rng.choice(WORDS)
            order = rng.sample(range(3), 3)
            responses = [TEMPLATES[j].format(word) for j in order]
            ranking = sorted(range(3), key=lambda k: order[k])
            out.write(json.dumps({"prompt": f"Tell me about {word} #{i}.", "responses": responses,
                                  "ranking": ranking}) + "\n")
    return path


@pytest.fixture(scope="session")
def reward_run(toy_rankings, tmp_path_factory) -> Path:
    """A reward stage trained for a few steps on the toy rankings (25% of the prompts held out)."""
    out = tmp_path_factory.mktemp("reward") / "run"
    code = cli(["run", "reward", "model=tiny-random", "data=jsonl", f"data.train={toy_rankings}",
                "data.eval_fraction=0.25", f"trainer.max_steps={REWARD_STEPS}", "trainer.learning_rate=1e-3",
                "trainer.warmup_ratio=0", "trainer.logging_steps=5", f"hydra.run.dir={out}"])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def fitted_reward_run(toy_rankings, tmp_path_factory) -> Path:
    """A reward stage whose score also reads the answers' likelihood (``reward.likelihood=fit``)."""
    out = tmp_path_factory.mktemp("reward-fit") / "run"
    code = cli(["run", "reward", "model=tiny-random", "data=jsonl", f"data.train={toy_rankings}",
                "data.eval_fraction=0.25", "trainer.max_steps=4", "trainer.learning_rate=1e-3",
                "eval.evaluate_base=false", "reward.likelihood=fit", f"hydra.run.dir={out}"])
    assert code == 0
    return out


@pytest.fixture
def check_policy_run():
    """What an RL stage with its own loop (PPO, GRPO) leaves in its run directory after ``steps`` steps: the public
    files, and a policy adapter that moved away from the SFT adapter it started from and loads on the 4-bit base."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from lightalign.models import Quantization, load_base_model

    def check(out: Path, sft_adapter: Path, steps: int) -> None:
        for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/tokenizer.json",
                     "metrics.json", "samples.jsonl", "sft_samples.jsonl", "config.yaml", "manifest.json",
                     "logs/metrics.jsonl", f"checkpoints/checkpoint-{steps}/trainer_state.json"):
            assert (out / name).is_file(), name
        trained = load_file(out / "adapter" / "adapter_model.safetensors")
        sft = load_file(sft_adapter / "adapter_model.safetensors")
        assert trained.keys() == sft.keys()
        assert any(not torch.equal(trained[k], sft[k]) for k in sft)
        policy = PeftModel.from_pretrained(load_base_model("lightalign:tiny-random", Quantization()), out / "adapter")
        assert policy.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=2, do_sample=False).shape == (1, 5)

    return check


@pytest.fixture
def judge_fails_once(monkeypatch):
    """The demo judge scores every answer of its second batch NaN (a reward going bad mid-run); call the returned
    function to make it judge normally again (the same command then resumes)."""
    import lightalign.demo.judge as judge

    calls = {"n": 0}
    original = judge.GoldJudge.__call__

    def nan_on_second_batch(self, prompts, answers):
        calls["n"] += 1
        return [float("nan")] * len(answers) if calls["n"] == 2 else original(self, prompts, answers)

    monkeypatch.setattr(judge.GoldJudge, "__call__", nan_on_second_batch)
    return lambda: monkeypatch.setattr(judge.GoldJudge, "__call__", original)


@pytest.fixture
def error_line(capsys):
    """Read what a failed run printed to stderr: its one ``lightalign: error: ...`` line (progress bars share
    stderr, so it may follow one's carriage return), checking that no stack trace came with it."""

    def read() -> str:
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return "lightalign: error:" + err.split("lightalign: error:", 1)[1].split("\n", 1)[0]

    return read


@pytest.fixture
def tensorboard_scalars():
    """Read back what ``trainer.report_to=tensorboard`` wrote for a run: ``{tag: [(step, value), ...]}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def read(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
        runs = sorted((run_dir / "checkpoints" / "runs").glob("*/events.out.tfevents.*"))
        assert len(runs) == 1, runs  # one run, written where docs/logging.md says
        events = EventAccumulator(str(runs[0].parent)).Reload()
        return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}

    return read
