"""``lightalign export``: the adapter as is, or merged into a full-precision base (never into 4-bit weights)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from lightalign.cli import main as cli
from lightalign.models import LoraSettings, apply_lora, load_base_model

pytestmark = pytest.mark.slow
TINY = "lightalign:tiny-random"


@pytest.mark.parametrize(("dtype", "atol"), [("fp32", 1e-5), ("bf16", 0.1)])
def test_merged_model_equals_full_precision_base_plus_adapter(trained_run, tmp_path, dtype, atol):
    out = tmp_path / "merged"
    assert cli(["export", str(trained_run), "--out", str(out), "--merge", "--dtype", dtype]) == 0
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()

    merged = AutoModelForCausalLM.from_pretrained(out)  # plain transformers: no PEFT, no bitsandbytes
    assert getattr(merged.config, "quantization_config", None) is None
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert merged.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    stops = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in (stops if isinstance(stops, list) else [stops])

    reference = PeftModel.from_pretrained(load_base_model(TINY, None), trained_run / "adapter")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        got = merged(ids).logits.float()
        want = reference(ids).logits
        with reference.disable_adapter():
            base = reference(ids).logits
    assert (want - base).abs().max() > 10 * atol  # the adapter matters, so equality below means something
    assert torch.allclose(got, want, atol=atol), (got - want).abs().max()


def test_adapter_export_and_no_silent_overwrite(trained_run, tmp_path, capsys):
    out = tmp_path / "adapter"
    assert cli(["export", str(trained_run), "--out", str(out)]) == 0
    original = (trained_run / "adapter" / "adapter_model.safetensors").read_bytes()
    assert (out / "adapter_model.safetensors").read_bytes() == original
    assert AutoTokenizer.from_pretrained(out).chat_template
    assert cli(["export", str(trained_run), "--out", str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert cli(["export", str(trained_run), "--out", str(out), "--force"]) == 0
    assert cli(["export", TINY, "--out", str(tmp_path / "none")]) == 2  # a base model has no adapter


def test_a_reward_model_merges_with_its_score_head(tmp_path):
    run = tmp_path / "reward"
    model = apply_lora(load_base_model(TINY, None, head="score"), LoraSettings(r=4), task_type="SEQ_CLS",
                       modules_to_save=["score"])
    torch.manual_seed(0)
    with torch.no_grad():  # a fresh adapter adds zero: give it (and the head) weights that change the scores
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(0, 0.5)
    model.save_pretrained(run / "adapter")
    model.eval()  # no LoRA dropout in the comparison
    (run / "config.yaml").write_text("stage: reward\nmodel: {name_or_path: 'lightalign:tiny-random'}\n"
                                     "quant: {load_in_4bit: false}\n")
    assert cli(["export", str(run), "--out", str(tmp_path / "out"), "--merge"]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    ids = torch.tensor([[1, 5, 9, 14, 2]])
    with torch.no_grad():
        want = model(ids).logits
        with model.disable_adapter():
            untrained = model(ids).logits
        assert torch.allclose(merged(ids).logits, want, atol=1e-5) and not torch.allclose(want, untrained, atol=1e-2)
