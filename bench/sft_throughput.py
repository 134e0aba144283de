"""SFT throughput and peak memory: lightalign's SFT path against plain TRL ``SFTTrainer`` with TRL's defaults.

    python bench/sft_throughput.py                      # SmolLM2-135M, 4-bit, demo dialogues, batch 8, 2 rounds
    python bench/sft_throughput.py --model lightalign:tiny-random --steps 2 --warmup 1 --rounds 1   # smoke test

Both sides train the same 4-bit NF4 base (``lightalign:smollm2-135m-instruct`` resolved to its folder, which TRL
loads itself) with the same LoRA settings (lightalign's defaults: r=16, alpha=32, dropout 0.05, all linear
layers), on the same demo dialogues, with the same batch size and maximum length:

- ``lightalign``: what ``recipes/sft.py`` runs: our tokenisation (completion-only labels) and collator, our
  precision choice and trainer arguments (``build_trl_args``), fp32 adapters; ``lightalign-packed`` adds
  ``trainer.packing=true`` (padding-free rows); ``lightalign-gc`` adds ``trainer.gradient_checkpointing=true``
  (TRL's default, and the ``sft`` stage's (``conf/trainer/sft.yaml``; the pipelines turn it off for the demo):
  activations recomputed in the backward pass, for memory), ``lightalign-packed-gc`` both;
- ``trl``: ``SFTTrainer(model=folder, peft_config=..., quantization_config=...)`` on the same dialogues as
  conversational prompt/completion rows, everything else at TRL's defaults (gradient checkpointing, bf16 on a
  GPU, its own tokenisation and collator). On a CPU TRL refuses to start at its defaults (its bf16 default "needs
  a GPU"); it gets ``use_cpu=True, bf16=False`` there, and its 4-bit layers compute in the dtype
  ``resolve_precision`` picks: with ``use_cpu=True`` alone it would train under bf16 autocast, which a CPU
  without native bf16 (AVX2) emulates at ~1/50 of its fp32 matmul speed; that would measure the emulation,
  not the pipelines.

Each variant runs in its own process (its peak memory is its own), alternating over ``--rounds``; the first
``--warmup`` steps are not timed. Tokens/second counts real (non-padding) tokens. A last process checks that
the two pipelines produce identical loss on identical batches (same rows, same padded batching, same model).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import harness

HERE = Path(__file__).resolve()
VARIANTS = ("lightalign", "lightalign-packed", "lightalign-gc", "lightalign-packed-gc", "trl")
TARGET_SPEED, TARGET_MEMORY = 1.5, 1.0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lightalign:smollm2-135m-instruct")
    parser.add_argument("--data", default="demo:sft")
    parser.add_argument("--batch-size", type=int, default=8)  # conf/trainer/sft.yaml
    parser.add_argument("--max-length", type=int, default=256)  # conf/data/demo.yaml
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=[*VARIANTS, "check"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---- the two pipelines ------------------------------------------------------------------------------------------


def _examples(args: argparse.Namespace) -> list:
    from lightalign.data import load_lm_examples

    return load_lm_examples(args.data, limit=args.batch_size * (args.warmup + args.steps))


def build_lightalign_trainer(args: argparse.Namespace, out: Path, *, packing: bool, callbacks: list,
                             gradient_checkpointing: bool = False, chunked_logprobs: str = "auto"):
    """The SFT recipe's set-up (recipes/sft.py), minus evaluation and saving."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from lightalign.data.collators import LMCollator
    from lightalign.data.tokenize import tokenize_lm_examples
    from lightalign.models import (
        LoraSettings,
        Quantization,
        apply_lora,
        install_chunked_lm_head,
        load_base_model,
        load_tokenizer,
        resolve_precision,
        upcast_trainable,
    )
    from lightalign.training import TrainerSettings, build_trl_args

    precision = resolve_precision("auto")
    tokenizer = load_tokenizer(args.model)
    rows, _ = tokenize_lm_examples(tokenizer, _examples(args), max_length=args.max_length)
    model = load_base_model(args.model, Quantization(), compute_dtype=precision.compute_dtype)
    model = apply_lora(model, LoraSettings(), gradient_checkpointing=gradient_checkpointing)
    settings = TrainerSettings(max_steps=args.warmup + args.steps, per_device_train_batch_size=args.batch_size,
                               logging_steps=5, save_steps=10**9, packing=packing,
                               gradient_checkpointing=gradient_checkpointing, chunked_logprobs=chunked_logprobs)
    trl_args = build_trl_args(SFTConfig, settings, out, precision, dataset_kwargs={"skip_prepare_dataset": True},
                              max_length=None, packing=False, include_num_input_tokens_seen="non_padding",
                              save_strategy="no", disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=trl_args, train_dataset=Dataset.from_list(rows),
                         data_collator=LMCollator(tokenizer.pad_token_id, padding_free=packing),
                         processing_class=tokenizer, callbacks=callbacks)
    upcast_trainable(trainer.model)
    install_chunked_lm_head(trainer.model, settings.chunked_logprobs)
    return trainer


def build_trl_trainer(args: argparse.Namespace, out: Path, *, callbacks: list, model=None):  # noqa: ANN001
    """Plain TRL: the model folder, the same QLoRA settings, TRL's defaults for everything else."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from lightalign.models import LoraSettings, Quantization, resolve_model_path, resolve_precision
    from lightalign.models.loading import build_bnb_config

    lora = LoraSettings()
    rows = [{"prompt": e.messages[:-1], "completion": e.messages[-1:]} for e in _examples(args)]
    cpu = not torch.cuda.is_available()
    # On a CPU, TRL's bf16 default refuses to start; fp32 is its fastest working choice there (module docstring).
    cpu_args = {"use_cpu": True, "bf16": False} if cpu else {}
    config = SFTConfig(output_dir=str(out), max_steps=args.warmup + args.steps,
                       per_device_train_batch_size=args.batch_size, max_length=args.max_length,
                       save_strategy="no", report_to=[], disable_tqdm=True, **cpu_args)
    compute_dtype = resolve_precision("auto").compute_dtype if cpu else torch.bfloat16  # TRL's QLoRA recipe: bf16
    return SFTTrainer(
        model=model if model is not None else resolve_model_path(args.model),
        args=config,
        train_dataset=Dataset.from_list(rows),
        quantization_config=None if model is not None else build_bnb_config(Quantization(), compute_dtype),
        peft_config=None if model is not None else LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules="all-linear",
            task_type="CAUSAL_LM"),
        callbacks=callbacks,
    )


# ---- child processes --------------------------------------------------------------------------------------------


def run_variant(args: argparse.Namespace, variant: str) -> dict:
    """Train ``warmup + steps`` steps and measure the timed ones."""
    timer = harness.StepTimer(warmup=args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        if variant == "trl":
            trainer = build_trl_trainer(args, Path(tmp), callbacks=[timer])
        else:
            trainer = build_lightalign_trainer(args, Path(tmp), packing="-packed" in variant, callbacks=[timer],
                                               gradient_checkpointing=variant.endswith("-gc"))
        counter = harness.CountingCollator(trainer.data_collator)
        trainer.data_collator = counter  # the dataloader is built in train(), from this attribute
        trainer.train()
    args_used = trainer.args
    return {
        "variant": variant,
        **harness.throughput(timer, counter, args_used.gradient_accumulation_steps),
        "peak_memory_mb": harness.peak_memory_mb(),
        "precision": "bf16" if args_used.bf16 else "fp16" if args_used.fp16 else "fp32",
        "gradient_checkpointing": bool(args_used.gradient_checkpointing),
    }


def check_same_loss(args: argparse.Namespace) -> dict:
    """Same rows, same padded batching, same model: TRL's pipeline and ours must give the same loss.

    One model (our 4-bit base + LoRA, its B matrices made non-zero so the adapter matters) scores a batch built
    by each pipeline: TRL's tokenisation + its collator, ours + our padded collator, and ours packed.
    """
    import torch

    from lightalign.data.collators import LMCollator
    from lightalign.data.tokenize import tokenize_lm_examples
    from lightalign.models import LoraSettings, Quantization, apply_lora, load_base_model, load_tokenizer

    tokenizer = load_tokenizer(args.model)
    model = apply_lora(load_base_model(args.model, Quantization()), LoraSettings(dropout=0.0))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.01 * torch.randn(param.shape, generator=generator))
    with tempfile.TemporaryDirectory() as tmp:
        trl_trainer = build_trl_trainer(args, Path(tmp), callbacks=[], model=model)
        trl_rows = [trl_trainer.train_dataset[i] for i in range(args.batch_size)]
        trl_batch = trl_trainer.data_collator(trl_rows)
    ours = tokenize_lm_examples(tokenizer, _examples(args)[: args.batch_size], max_length=args.max_length)[0]
    padded = LMCollator(tokenizer.pad_token_id)(ours)
    packed = LMCollator(tokenizer.pad_token_id, padding_free=True)(ours)
    model.eval()

    def loss_of(batch: dict) -> float:
        device = next(model.parameters()).device
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.no_grad():
            return float(model(**inputs).loss)

    same_ids = torch.equal(trl_batch["input_ids"], padded["input_ids"])
    same_labels = torch.equal(trl_batch["labels"], padded["labels"])
    return {"same_input_ids": same_ids, "same_labels": same_labels, "loss_trl": loss_of(trl_batch),
            "loss_lightalign": loss_of(padded), "loss_lightalign_packed": loss_of(packed)}


# ---- the parent: run, alternate, report -------------------------------------------------------------------------


def default_variant() -> str:
    """The variant ``lightalign run sft`` trains like: with or without checkpointing (its composed config)."""
    from lightalign.commands.validate import ConfigSource, compose_checked
    from lightalign.paths import conf_dir

    sft = compose_checked(ConfigSource(conf_dir(), "sft", "sft"), [])
    return "lightalign-gc" if sft.trainer.gradient_checkpointing else "lightalign"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    passthrough = harness.child_arguments(argv)
    if args.child == "check":
        harness.emit_result(check_same_loss(args))
        return 0
    if args.child:
        harness.emit_result(run_variant(args, args.child))
        return 0

    harness.print_load_warning()
    results = harness.run_variants(
        HERE, VARIANTS, args.rounds, passthrough,
        lambda variant, result: f"{variant:18s} {result['tokens_per_second']:8.1f} tokens/s  peak "
        f"{result['peak_memory_mb']:7.0f} MB  ({result['precision']}, gradient checkpointing "
        f"{result['gradient_checkpointing']}, padding {result['padding_fraction']:.1%})")
    check = harness.run_child(HERE, [*passthrough, "--child=check"])

    base_speed = harness.median_of(results["trl"], "tokens_per_second")
    base_memory = max(r["peak_memory_mb"] for r in results["trl"])
    print(f"\nSFT, {args.model}, 4-bit NF4 + LoRA r=16, batch {args.batch_size}, max length {args.max_length}, "
          f"{args.steps} timed steps x {args.rounds} rounds, {harness.device_name()}\n")
    rows = []
    for variant in VARIANTS:
        speed = harness.median_of(results[variant], "tokens_per_second")
        memory = max(r["peak_memory_mb"] for r in results[variant])
        rows.append([variant, speed, speed / base_speed, memory, memory / base_memory])
    harness.print_table(["variant", "tokens/s (median)", "x TRL", "peak memory MB (max)", "x TRL"], rows)
    print(f"\nsame batch, same model: TRL loss {check['loss_trl']:.6f}, lightalign {check['loss_lightalign']:.6f}, "
          f"lightalign packed {check['loss_lightalign_packed']:.6f}; identical input_ids {check['same_input_ids']}, "
          f"labels {check['same_labels']}")
    # the target is the sft stage's default setting's (issue 15), with the other settings beside it
    default = default_variant()
    for name, _, speed, _, memory in rows:
        if name != "trl":
            print(f"target >= {TARGET_SPEED}x TRL tokens/s at <= {TARGET_MEMORY}x its peak memory: {name}"
                  f"{' (the sft stage default)' if name == default else ''} {speed:.2f}x at {memory:.2f}x -> "
                  f"{'met' if speed >= TARGET_SPEED and memory <= TARGET_MEMORY else 'missed'}")
    print(json.dumps({"results": results, "check": check}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
