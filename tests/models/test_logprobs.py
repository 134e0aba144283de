"""Chunked label log-probs: the same numbers as full-vocabulary logits, and the trainers' losses through them."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM
from trl import DPOConfig, SFTConfig, SFTTrainer

from lightalign.data import load_lm_examples
from lightalign.data.collators import LMCollator
from lightalign.data.tokenize import tokenize_lm_examples
from lightalign.models import (
    LoraSettings,
    Quantization,
    apply_lora,
    load_base_model,
    resolve_precision,
    upcast_trainable,
)
from lightalign.models import logprobs as logprobs_module
from lightalign.models.logprobs import (
    causal_lm_label_logprobs,
    install_chunked_lm_head,
    label_logprobs,
    label_logprobs_from_logits,
    output_weight,
    use_chunked_logprobs,
)
from lightalign.training import TrainerSettings, build_trl_args

TINY = "lightalign:tiny-random"


def _plain(hidden, weight, labels):
    logits = hidden @ weight.t()
    return torch.log_softmax(logits, -1).gather(1, labels[:, None]).squeeze(1), logits


def test_a_hand_worked_log_probability():
    # logits [2, 0] (hidden [1, 0] against rows [2, 0] and [0, 0]): log p(0) = 2 - log(e² + 1) = -0.126928
    out = label_logprobs(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.tensor([0]))
    assert out.log_probs.item() == pytest.approx(2 - math.log(math.e**2 + 1), abs=1e-6)
    assert out.entropy.item() == pytest.approx(-(0.880797 * math.log(0.880797) + 0.119203 * math.log(0.119203)),
                                               abs=1e-5)
    assert out.is_top1.tolist() == [True] and out.mean_logits.item() == pytest.approx(1.0)


@pytest.mark.parametrize("chunk_tokens", [1, 7, 64, 1000])  # one chunk per token, ragged chunks, one chunk
def test_label_logprobs_match_the_full_log_softmax_with_gradients(chunk_tokens):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(50, 16, generator=generator, requires_grad=True)
    weight = torch.randn(300, 16, generator=generator)
    labels = torch.randint(0, 300, (50,), generator=generator)
    upstream = torch.randn(50, generator=generator)  # a loss that weighs tokens differently, as DPO's does

    ours = label_logprobs(hidden, weight, labels, chunk_tokens=chunk_tokens)
    (ours.log_probs * upstream).sum().backward()
    ours_grad, hidden.grad = hidden.grad, None
    expected, logits = _plain(hidden, weight, labels)
    (expected * upstream).sum().backward()

    torch.testing.assert_close(ours.log_probs, expected, rtol=1e-6, atol=1e-6)  # fp32 rounding of logits ~10
    torch.testing.assert_close(ours_grad, hidden.grad, rtol=1e-5, atol=1e-5)  # entries of size ~1, summed over 300
    probs = torch.softmax(logits, -1)
    torch.testing.assert_close(ours.entropy, -(probs * probs.log()).sum(-1), rtol=0, atol=1e-5)
    assert torch.equal(ours.is_top1, logits.argmax(-1) == labels)
    torch.testing.assert_close(ours.mean_logits, logits.mean(-1))
    assert not (ours.entropy.requires_grad or ours.mean_logits.requires_grad)


def test_the_full_logits_fallback_gives_the_same_fields():
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(20, 8, generator=generator, requires_grad=True)
    weight = torch.randn(40, 8, generator=generator)
    labels = torch.randint(0, 40, (20,), generator=generator)
    chunked, full = label_logprobs(hidden, weight, labels, chunk_tokens=6), label_logprobs_from_logits(
        hidden @ weight.t(), labels)
    for ours, theirs in zip(chunked, full, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert full.log_probs.requires_grad and not full.entropy.requires_grad


def test_gradients_pass_gradcheck_also_for_a_trained_output_layer():
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(9, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    labels = torch.randint(0, 11, (9,), generator=generator)
    assert torch.autograd.gradcheck(lambda h, w: label_logprobs(h, w, labels, chunk_tokens=4).log_probs,
                                    (hidden, weight))


def test_no_label_gives_a_zero_loss_that_still_backpropagates():
    hidden = torch.randn(0, 4, requires_grad=True)
    out = label_logprobs(hidden, torch.randn(10, 4), torch.zeros(0, dtype=torch.long))
    out.log_probs.sum().backward()
    assert hidden.grad.shape == (0, 4)


def test_the_mode_option():
    assert use_chunked_logprobs("on") and not use_chunked_logprobs("off")
    assert use_chunked_logprobs("auto") is (not torch.cuda.is_available())
    with pytest.raises(ValueError, match="chunked_logprobs"):
        use_chunked_logprobs("yes")


def test_logit_transforms_and_biased_heads_keep_the_models_own_head():
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    assert output_weight(LlamaForCausalLM(config)) is not None
    capped = LlamaForCausalLM(config)
    capped.config.final_logit_softcapping = 30.0
    assert output_weight(capped) is None and not install_chunked_lm_head(capped, "on")
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():  # the evaluations' log-probs then come from the model's own (capped) logits
        logits = capped(input_ids=ids).logits[:, :-1]
        expected = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        torch.testing.assert_close(causal_lm_label_logprobs(capped, ids, ids), expected)
    biased = LlamaForCausalLM(config)
    biased.lm_head = torch.nn.Linear(16, 32, bias=True)
    assert output_weight(biased) is None


# ---- the trainers' losses on tiny-random (4-bit base + LoRA) --------------------------------------------------------


def _lora_model(b_scale: float = 0.05):
    torch.manual_seed(0)
    model = apply_lora(load_base_model(TINY, Quantization(), compute_dtype=torch.float32),
                       LoraSettings(r=4, alpha=8, dropout=0.0))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero B: the adapter changes the logits, so its gradients are all exercised
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(b_scale * torch.randn(param.shape, generator=generator))
    return model


def _lora_grads(model):
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(logprobs_module, "CHUNK_BYTES", 1)  # 16 tokens a chunk: several chunks per batch


@pytest.mark.parametrize("packing", [False, True])
def test_the_sft_loss_and_lora_gradients_equal_the_full_logits_path(tmp_path, tiny_tokenizer, small_chunks, packing):
    rows, _ = tokenize_lm_examples(tiny_tokenizer, load_lm_examples("demo:sft", limit=4), max_length=128)
    collator = LMCollator(tiny_tokenizer.pad_token_id, padding_free=packing)
    batch = collator(rows)
    assert int((batch["labels"] != -100).sum()) > 3 * 16

    model = _lora_model()
    args = build_trl_args(SFTConfig, TrainerSettings(), tmp_path, resolve_precision("fp32"),
                          dataset_kwargs={"skip_prepare_dataset": True}, max_length=None, packing=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=collator,
                         processing_class=tiny_tokenizer)
    upcast_trainable(trainer.model)  # as the recipe does: TRL casts 4-bit adapters to bf16
    assert install_chunked_lm_head(trainer.model, "on")
    trainer.model.train()

    # the plain path: the model's own forward, full-vocabulary logits, cross-entropy over the labelled tokens
    plain = model(**batch).loss
    plain.backward()
    expected = _lora_grads(model)
    model.zero_grad()

    model.get_base_model().lm_head.register_forward_hook(lambda *_: pytest.fail("the full-vocabulary head ran"))
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()

    assert loss.item() == pytest.approx(plain.item(), abs=1e-6)
    grads = _lora_grads(model)
    assert grads.keys() == expected.keys() and len(grads) == 2 * 7 * 2  # A and B, 7 layers, 2 blocks
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    assert set(trainer._metrics["train"]) >= {"entropy", "mean_token_accuracy"}


def test_nothing_vocabulary_sized_is_kept_for_the_backward_pass(small_chunks):
    model = _lora_model()
    install_chunked_lm_head(model, "on")
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (4, 40), generator=torch.Generator().manual_seed(0))
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        out = model(input_ids=ids, labels=ids, fused_lm_head=True)
    out.loss.backward()
    assert shapes and not any(vocab in shape for shape in shapes)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        model(input_ids=ids, labels=ids).loss.backward()  # the model's own loss keeps [B, T, vocab] logits
    assert any(vocab in shape for shape in shapes)


def test_unfused_calls_and_generation_are_unchanged():
    model = _lora_model()
    ids = torch.tensor([[5, 6, 7, 8]])
    before = model(input_ids=ids).logits
    generated = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    install_chunked_lm_head(model, "on")
    assert torch.equal(model(input_ids=ids).logits, before)
    assert torch.equal(model.generate(input_ids=ids, max_new_tokens=4, do_sample=False), generated)
    out = model(input_ids=ids, labels=torch.tensor([[5, -100, 7, 8]]), fused_lm_head=True)
    assert out.log_probs.shape == (1, 3) and out.log_probs[0, 0] == 0
    assert out.label_mask.tolist() == [[False, True, True]]


def test_trls_trainers_still_compute_their_losses_through_the_fused_head_call():
    # install_chunked_lm_head serves TRL 1.16's contract; a TRL that stops calling it would silently bypass ours
    import inspect

    from trl import DPOTrainer
    from trl.trainer.utils import FusedCausalLMOutput

    assert "fused_lm_head=True" in inspect.getsource(SFTTrainer.compute_loss)
    assert "fused_lm_head=True" in inspect.getsource(DPOTrainer._compute_loss)
    read = {"log_probs", "entropy", "is_top1", "mean_logits", "label_mask", "loss"}
    assert read <= set(FusedCausalLMOutput.__dataclass_fields__)


def test_causal_lm_label_logprobs_match_the_models_logits(small_chunks):
    model = _lora_model()
    ids = torch.randint(3, 200, (2, 30), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :10] = -100
    mask = torch.ones_like(ids)
    mask[1, 25:] = 0
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        ours = causal_lm_label_logprobs(model, ids, labels, attention_mask=mask)
    expected = torch.log_softmax(logits, -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None]).squeeze(-1)
    torch.testing.assert_close(ours, expected * (labels[:, 1:] != -100), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_the_dpo_loss_and_gradients_equal_trls_head(tmp_path, tiny_tokenizer, small_chunks):
    from lightalign.data import load_preference_splits
    from lightalign.data.tokenize import tokenize_preference_pairs
    from lightalign.trainers import TokenizedDPOTrainer

    pairs = load_preference_splits("demo:rankings", None, eval_fraction=0.0).train[:3]
    rows, _ = tokenize_preference_pairs(tiny_tokenizer, pairs, max_length=128)
    results = []
    for mode in ("off", "on"):
        model = _lora_model(b_scale=0.5)  # a policy well away from its reference (the base)
        args = build_trl_args(DPOConfig, TrainerSettings(), tmp_path, resolve_precision("fp32"), beta=0.1,
                              max_length=None)
        trainer = TokenizedDPOTrainer(model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(rows),
                                      processing_class=tiny_tokenizer)
        assert install_chunked_lm_head(trainer.model, mode) is (mode == "on")  # TrlInternals upcast the adapters
        trainer.model.train()
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        results.append((loss.item(), _lora_grads(model), dict(trainer._metrics["train"])))
    (trl_loss, trl_grads, trl_metrics), (loss, grads, metrics) = results
    assert loss == pytest.approx(trl_loss, abs=1e-6) and loss != pytest.approx(math.log(2), abs=1e-3)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, trl_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    for key in trl_metrics:  # rewards, margins, log-probs, logits, entropy, accuracy: the same numbers
        assert metrics[key] == pytest.approx(trl_metrics[key], rel=1e-4, abs=1e-5), key


def test_a_config_that_scales_or_caps_logits_is_recognised():
    from lightalign.models.logprobs import transforms_logits

    assert not transforms_logits(LlamaConfig())
    scaled = LlamaConfig()
    scaled.logit_scale = 0.5
    assert transforms_logits(scaled)
    capped = LlamaConfig()
    capped.final_logit_softcapping = 30.0
    assert transforms_logits(capped)


def test_a_biased_output_layer_or_transformed_logits_cannot_be_read_from_hidden_states():
    from transformers import PhiConfig

    from lightalign.models.logprobs import logits_from_hidden_states

    small = {"vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
             "num_attention_heads": 2}
    assert logits_from_hidden_states(LlamaConfig(**small))
    assert not logits_from_hidden_states(PhiConfig(**small))  # lm_head has a bias: not in the config
    capped = LlamaConfig(**small)
    capped.final_logit_softcapping = 30.0
    assert not logits_from_hidden_states(capped)
