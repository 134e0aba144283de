"""The DPO recipe on tiny-random through the 4-bit path: the reference is the SFT model, training moves
only the policy adapter, and the implicit reward learns a separable preference."""

from __future__ import annotations

import json
import math

import bitsandbytes as bnb
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from trl import DPOConfig

from lightalign.cli import main as cli
from lightalign.data import load_preference_splits
from lightalign.data.tokenize import tokenize_preference_pairs
from lightalign.models import LoraSettings, Quantization, apply_lora, load_base_model, resolve_precision
from lightalign.models.roles import load_policy, reference_kind, set_up_reference
from lightalign.trainers import TokenizedDPOTrainer
from lightalign.training import TrainerSettings, build_trl_args

pytestmark = pytest.mark.slow

TINY = "lightalign:tiny-random"
LN2 = math.log(2)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """An SFT stage's output whose adapter really moves the model away from the base (non-zero B)."""
    run = tmp_path_factory.mktemp("sft")
    model = apply_lora(load_base_model(TINY, Quantization()), LoraSettings(r=8, alpha=16))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(run / "adapter")
    (run / "manifest.json").write_text(json.dumps({"stage": "sft", "artefacts": {"adapter": "adapter",
                                                                                 "base_model": TINY}}))
    return run


def test_step_zero_from_sft_is_ln2_and_only_the_policy_adapter_moves(sft_run, toy_rankings, tmp_path,
                                                                      tiny_tokenizer):
    pairs = load_preference_splits(str(toy_rankings), None, limit=8, eval_fraction=0.0).train
    rows, _ = tokenize_preference_pairs(tiny_tokenizer, pairs, max_length=256)
    model, kind = load_policy(load_base_model(TINY, Quantization()), LoraSettings(), sft_adapter=sft_run / "adapter")
    args = build_trl_args(DPOConfig, TrainerSettings(max_steps=3, learning_rate=1e-2, logging_steps=1,
                                                     per_device_train_batch_size=4),
                          tmp_path, resolve_precision("auto"), max_length=None, save_strategy="no")
    trainer = TokenizedDPOTrainer(model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(rows),
                                  processing_class=tiny_tokenizer)
    set_up_reference(model, kind)
    assert reference_kind(model) == "sft"
    before = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    trainer.train()

    first = trainer.state.log_history[0]
    # policy == reference at step 0: every implicit reward is 0 and the sigmoid loss is ln 2 (peers that
    # reference the bare base instead see a loss far from ln 2 and accuracy 1.0 here)
    assert first["loss"] == pytest.approx(LN2, abs=1e-4)
    assert abs(first["rewards/chosen"]) < 1e-4 and abs(first["rewards/margins"]) < 1e-4
    assert trainer.state.log_history[2]["loss"] != pytest.approx(LN2, abs=1e-3)  # and then it trains

    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(".default." in name and "lora_" in name for name in changed)  # not the base, not "ref"
    assert isinstance(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear4bit)


def test_dpo_recipe_from_sft_learns_a_separable_preference(sft_run, reward_run, toy_rankings, tmp_path):
    out = tmp_path / "dpo"
    code = cli(["run", "dpo", "model=tiny-random", "data=jsonl", f"data.train={toy_rankings}",
                "data.prompts=demo:prompts", "data.eval_fraction=0.25", f"dpo.sft_adapter={sft_run}",
                f"dpo.reward_model={reward_run}", "dpo.beta=0.1", "trainer.max_steps=25",
                "trainer.learning_rate=2e-3", "trainer.warmup_ratio=0", "trainer.logging_steps=1",
                "eval.num_prompts=2", "eval.max_new_tokens=8", f"hydra.run.dir={out}"])
    assert code == 0
    log = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert log[0]["loss"] == pytest.approx(LN2, abs=1e-4) and abs(log[0]["rewards/margins"]) < 1e-4

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["implicit_reward_accuracy"] >= 0.9 and metrics["implicit_reward_margin"] > 0
    for key in ("gold_score", "rm_score", "win_rate_rm", "win_rate_gold", "sft_rm_score", "sft_gold_score",
                "kl_to_sft", "eval_pairs", "train_pairs"):  # the names the pipeline report reads
        assert key in metrics, key
    # the policy's KL to the SFT model (the frozen "ref" adapter), as PPO reports it. The unbiased k1 estimate
    # (log pi - log pi_ref summed over a sampled answer) can be negative; on 2 answers of 8 tokens its noise is
    # some tenths of a nat (this run: about -0.26), so only a clearly negative value means a bug
    assert math.isfinite(metrics["kl_to_sft"]) and metrics["kl_to_sft"] > -1.0
    assert math.isfinite(metrics["kl_to_sft_per_token"])
    assert len((out / "sft_samples.jsonl").read_text().splitlines()) == 2
    assert json.loads((out / "manifest.json").read_text())["artefacts"]["reference"] == "sft"
    saved = load_file(out / "adapter" / "adapter_model.safetensors")  # the policy alone, not the "ref" copy
    assert saved and all("lora_" in key and ".ref." not in key for key in saved)
    assert not (out / "adapter" / "ref").exists()


def test_dpo_sft_weight_adds_the_chosen_answers_nll_to_the_loss(sft_run, toy_rankings, tmp_path):
    out = tmp_path / "rpo"
    assert cli(["run", "dpo", "model=tiny-random", "data=jsonl", f"data.train={toy_rankings}", "data.limit=8",
                "eval.num_prompts=0", "trainer.max_steps=1", "trainer.logging_steps=1", f"dpo.sft_adapter={sft_run}",
                "dpo.sft_weight=0.5", f"hydra.run.dir={out}"]) == 0
    first = json.loads((out / "logs" / "metrics.jsonl").read_text().splitlines()[0])
    # at step 0 DPO's part is ln 2 (policy == reference); the rest is half the chosen answers' token NLL, which
    # for a random model over its vocabulary is nats, not hundredths
    assert first["loss"] - LN2 > 0.5 and abs(first["rewards/margins"]) < 1e-4


def test_dpo_without_sft_adapter_references_the_base(toy_rankings, tmp_path, capsys):
    out = tmp_path / "dpo"
    assert cli(["run", "dpo", "model=tiny-random", "data=jsonl", f"data.train={toy_rankings}", "data.limit=8",
                "eval.num_prompts=0", "trainer.max_steps=1", "trainer.logging_steps=1", "dpo.loss_type=ipo",
                f"hydra.run.dir={out}"]) == 0
    assert "reference: the base model" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["artefacts"]["reference"] == "base"
    code = cli(["run", "dpo", "model=tiny-random", "dpo.loss_type=nope", f"hydra.run.dir={tmp_path / 'x'}"])
    assert code != 0 and "dpo.loss_type='nope' is not one of" in capsys.readouterr().err


def test_dpo_resumes_from_its_last_checkpoint(sft_run, toy_rankings, tmp_path, capsys):
    common = ["model=tiny-random", "data=jsonl", f"data.train={toy_rankings}", "data.limit=12", "eval.num_prompts=0",
              f"dpo.sft_adapter={sft_run}", "trainer.save_steps=2", "trainer.logging_steps=1",
              f"hydra.run.dir={tmp_path}"]
    assert cli(["run", "dpo", *common, "trainer.max_steps=2"]) == 0
    assert cli(["run", "dpo", *common, "trainer.max_steps=3"]) == 0
    assert f"resuming from {tmp_path / 'checkpoints' / 'checkpoint-2'}" in capsys.readouterr().out
    log = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log if "loss" in row] == [1, 2, 3]
    assert json.loads((tmp_path / "metrics.json").read_text())["train_steps"] == 3
