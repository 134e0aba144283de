"""Where an SFT step's time and memory go: one training step of each variant, profiled in its own process.

    python bench/sft_profile.py                                   # SmolLM2-135M, 4-bit, the demo dialogues
    python bench/sft_profile.py --model lightalign:tiny-random    # smoke test

For each variant (the trainers of ``bench/sft_throughput.py``): after one untimed step, one step with

- the bytes autograd keeps for the backward pass, by the kind of module that kept them (a tensor counted once
  however many modules keep it; parameters left out), from ``torch.autograd.graph.saved_tensors_hooks``;
- the process's peak memory (peak RSS on a CPU) during the step, above what it held before the step;
- forward and backward seconds, and the operators that took most of the step (``torch.profiler``).

Variants: ``lightalign`` (defaults), ``lightalign-unfused`` (``trainer.chunked_logprobs=off`` and PEFT's own
LoRA dropout, i.e. the SFT path before both), ``lightalign-gc`` (gradient checkpointing), ``trl``.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

import harness

HERE = Path(__file__).resolve()
VARIANTS = ("lightalign", "lightalign-unfused", "lightalign-gc", "trl")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lightalign:smollm2-135m-instruct")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--top", type=int, default=8, help="operators listed per variant")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _trainer(args: argparse.Namespace, variant: str, out: Path):
    from sft_throughput import build_lightalign_trainer, build_trl_trainer

    bench_args = argparse.Namespace(model=args.model, data="demo:sft", batch_size=args.batch_size,
                                    max_length=args.max_length, warmup=1, steps=1)
    if variant == "trl":
        return build_trl_trainer(bench_args, out, callbacks=[])
    if variant == "lightalign-unfused":
        import lightalign.models.adapters as adapters

        adapters.fold_lora_dropout = lambda model: 0  # PEFT's nn.Dropout in front of lora_A, as before
    return build_lightalign_trainer(bench_args, out, packing=False, callbacks=[],
                                    gradient_checkpointing=variant == "lightalign-gc",
                                    chunked_logprobs="off" if variant == "lightalign-unfused" else "auto")


def profile_variant(args: argparse.Namespace, variant: str) -> dict:
    """One profiled training step (forward, backward) after an untimed one."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(args, variant, Path(tmp))
        model = trainer.model
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        model.train()
        trainer.compute_loss(model, dict(batch)).backward()  # lazy initialisation, caches
        model.zero_grad(set_to_none=True)

        kinds: list[str] = ["(outside modules)"]
        def enter(module: torch.nn.Module, _: tuple) -> None:
            kinds.append(type(module).__name__)

        def leave(*_: object) -> None:  # returns None: a forward hook's return value would replace the output
            kinds.pop()

        hooks = [m.register_forward_pre_hook(enter) for m in model.modules()]
        hooks += [m.register_forward_hook(leave) for m in model.modules()]
        parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
        kept: dict[int, tuple[str, int]] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in parameters and storage.data_ptr() not in kept:
                kept[storage.data_ptr()] = (kinds[-1], storage.nbytes())
            return tensor

        harness.reset_peak_memory()
        start = harness.peak_memory_mb()  # right after the reset: what the process holds now
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            started = time.perf_counter()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                loss = trainer.compute_loss(model, dict(batch))
            forward = time.perf_counter() - started
            loss.backward()
            backward = time.perf_counter() - started - forward
        peak = harness.peak_memory_mb()
        for hook in hooks:
            hook.remove()
    by_kind: collections.Counter = collections.Counter()
    for kind, size in kept.values():
        by_kind[kind] += size / 2**20
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops) or 1
    ids = batch["input_ids"]
    return {
        "variant": variant, "loss": loss.item(), "positions": ids.numel(),
        "labelled": int((batch["labels"] != -100).sum()), "forward_s": forward, "backward_s": backward,
        "memory_before_step_mb": start, "peak_above_start_mb": peak - start, "kept_mb": sum(by_kind.values()),
        "kept_by_module_mb": dict(by_kind.most_common()),
        "top_ops": [(e.key, e.self_cpu_time_total / total) for e in ops[: args.top]],
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    passthrough = harness.child_arguments(argv)
    if args.child:
        harness.emit_result(profile_variant(args, args.child))
        return 0
    harness.print_load_warning()
    results = [harness.run_child(HERE, [*passthrough, f"--child={variant}"]) for variant in args.variants]
    first = results[0]
    print(f"\nOne SFT step, {args.model}, batch {args.batch_size} ({first['positions']} positions, {first['labelled']} "
          f"labelled), {harness.device_name()}\n")
    harness.print_table(
        ["variant", "loss", "forward s", "backward s", "kept for backward MB", "peak above step start MB",
         "memory before step MB"],
        [[r["variant"], f"{r['loss']:.6f}", r["forward_s"], r["backward_s"], r["kept_mb"], r["peak_above_start_mb"],
          r["memory_before_step_mb"]] for r in results])
    for r in results:
        kinds = ", ".join(f"{kind} {mb:.0f}" for kind, mb in r["kept_by_module_mb"].items() if mb >= 1)
        ops = ", ".join(f"{name} {share:.0%}" for name, share in r["top_ops"])
        print(f"\n{r['variant']}: kept for backward (MB) by module: {kinds}\n  most time: {ops}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
