"""Generation speed and peak memory: lightalign's sampler against ``model.generate`` on the same PEFT 4-bit model.

    python bench/generation.py                  # SmolLM2-135M, 4-bit, 128 held-out demo prompts x 24 tokens, 1 round
    python bench/generation.py --model lightalign:tiny-random --prompts 8 --rounds 1   # smoke test

Every variant answers the same prompts (the demo's held-out prompts, ``demo:prompts``, as the eval hooks ask
them: chat template, left padding, ``--batch-size`` prompts per call) greedily with at most ``--max-new-tokens``
tokens, on the same model: the 4-bit NF4 base (``lightalign:smollm2-135m-instruct``) with a LoRA adapter
(r=16, all linear layers) whose B matrices are made non-zero, so the adapter changes the answers:

- ``lightalign``: :func:`lightalign.generation.generate_answers` as every sampler runs it, with
  ``generation.dense_weights`` at its default (``auto``: on a CPU, a dense copy of the 4-bit layers for each call);
- ``lightalign-4bit``: the same with ``dense_weights=off`` (decoding through bitsandbytes' 4-bit layers);
- ``generate``: ``model.generate`` on the PEFT model, what TRL's trainers do, with the same token ids.

Each variant runs in its own process (its peak memory is its own: resident memory on a CPU, from just before the
first answer to the last, model and libraries included), alternating over ``--rounds``; a one-prompt call before
the clock starts pays for lazy initialisation. Tokens/second counts each answer's tokens up to its stop token.
The table says whether the answers are the same as ``generate``'s (they must be: greedy, same model).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import harness

HERE = Path(__file__).resolve()
VARIANTS = ("lightalign", "lightalign-4bit", "generate")
TARGET_SPEED, TARGET_MEMORY = 2.0, 1.2


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lightalign:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=128, help="held-out demo prompts (conf/eval/demo.yaml)")
    parser.add_argument("--max-new-tokens", type=int, default=24)  # conf/eval/demo.yaml
    parser.add_argument("--batch-size", type=int, default=32)  # eval.batch_size
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def load_policy(model_name: str):  # noqa: ANN201 (PeftModel, tokenizer)
    """The 4-bit base with a LoRA adapter that matters (B != 0), in eval mode, as the stages sample from it."""
    import torch

    from lightalign.models import (
        LoraSettings,
        Quantization,
        apply_lora,
        load_base_model,
        load_tokenizer,
        resolve_precision,
    )

    tokenizer = load_tokenizer(model_name)
    base = load_base_model(model_name, Quantization(), compute_dtype=resolve_precision("auto").compute_dtype)
    torch.manual_seed(0)  # PEFT draws lora_A from the global generator: every child process gets the same adapter
    model = apply_lora(base, LoraSettings(dropout=0.0))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.01 * torch.randn(param.shape, generator=generator))
    return model.eval(), tokenizer


def plain_generate(model, tokenizer, prompts: list, *, max_new_tokens: int, batch_size: int) -> list[list[int]]:  # noqa: ANN001
    """``model.generate`` on the prompts as generate_answers encodes them; each answer's ids up to its stop token."""
    import torch

    from lightalign.data.collators import pad_prompts
    from lightalign.data.tokenize import encode_prompt
    from lightalign.generation import stop_token_ids

    stops = stop_token_ids(tokenizer)
    answers = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            batch = pad_prompts([encode_prompt(tokenizer, p) for p in prompts[start : start + batch_size]],
                                tokenizer.pad_token_id)
            output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                                    pad_token_id=tokenizer.pad_token_id)
            for row in output[:, batch["input_ids"].shape[1] :].tolist():
                cut = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
                answers.append(row[:cut])
    return answers


def run_variant(args: argparse.Namespace, variant: str) -> dict:
    from lightalign.data import load_prompt_examples
    from lightalign.generation import dense_weights_bytes, generate_answers, uses_dense_weights

    model, tokenizer = load_policy(args.model)
    prompts = [p.prompt for p in load_prompt_examples("demo:prompts", limit=args.prompts)]
    mode = "off" if variant == "lightalign-4bit" else "auto"

    def answer(items: list) -> list[tuple[str, int]]:
        if variant == "generate":
            ids = plain_generate(model, tokenizer, items, max_new_tokens=args.max_new_tokens,
                                 batch_size=args.batch_size)
            return [(tokenizer.decode(row, skip_special_tokens=True).strip(), len(row)) for row in ids]
        answers = generate_answers(model, tokenizer, items, max_new_tokens=args.max_new_tokens,
                                   batch_size=args.batch_size, dense_weights=mode, desc=variant)
        return [(a.text, a.num_tokens) for a in answers]

    answer(prompts[:1])  # lazy initialisation (kernels, the first dense copy's allocations) before the clock
    harness.reset_peak_memory()
    started = time.perf_counter()
    answers = answer(prompts)
    seconds = time.perf_counter() - started
    tokens = sum(n for _, n in answers)
    return {"variant": variant, "seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds,
            "peak_memory_mb": harness.peak_memory_mb(), "answers": [text for text, _ in answers],
            "dense_weights": variant != "generate" and uses_dense_weights(model, mode),
            "dense_copy_mb": dense_weights_bytes(model) / 2**20}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    passthrough = harness.child_arguments(argv)
    if args.child:
        harness.emit_result(run_variant(args, args.child))
        return 0

    harness.print_load_warning()
    results = harness.run_variants(
        HERE, VARIANTS, args.rounds, passthrough,
        lambda variant, result: f"{variant:16s} {result['tokens_per_second']:8.1f} tokens/s  peak "
        f"{result['peak_memory_mb']:7.0f} MB  ({result['tokens']} tokens in {result['seconds']:.1f} s, "
        f"dense weights {result['dense_weights']})")

    base_speed = harness.median_of(results["generate"], "tokens_per_second")
    base_memory = max(r["peak_memory_mb"] for r in results["generate"])
    reference = results["generate"][0]["answers"]
    print(f"\nGreedy generation, {args.model}, 4-bit NF4 + LoRA r=16, {args.prompts} held-out demo prompts x <= "
          f"{args.max_new_tokens} new tokens, {args.batch_size} prompts per call, {args.rounds} round(s), "
          f"{harness.device_name()}; dense copy {results['lightalign'][0]['dense_copy_mb']:.0f} MB\n")
    rows = []
    for variant in VARIANTS:
        speed = harness.median_of(results[variant], "tokens_per_second")
        memory = max(r["peak_memory_mb"] for r in results[variant])
        same = min(sum(a == b for a, b in zip(r["answers"], reference, strict=True)) for r in results[variant])
        rows.append([variant, speed, speed / base_speed, memory, memory / base_memory, f"{same}/{len(reference)}"])
    harness.print_table(["variant", "tokens/s (median)", "x generate", "peak memory MB (max)", "x generate",
                         "answers as generate's"], rows)
    speed, memory = rows[0][2], rows[0][4]
    met = speed >= TARGET_SPEED and memory <= TARGET_MEMORY
    print(f"target >= {TARGET_SPEED}x generate's tokens/s at <= {TARGET_MEMORY}x its peak memory: lightalign "
          f"{speed:.2f}x at {memory:.2f}x -> {'met' if met else 'missed'}")
    for variant in results:
        for result in results[variant]:
            del result["answers"]
    print(json.dumps({"results": results}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
