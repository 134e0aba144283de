"""The rest of the decoding loop (issue 15): one prompt's cache shared by its G answers, a static cache, torch.compile.

    python bench/decoding.py                    # SmolLM2-135M 4-bit: GRPO's sampling, 8 prompts x G 8, <= 24 tokens
    python bench/decoding.py --group-size 4     # the rankings stage's K
    python bench/decoding.py --model lightalign:tiny-random --prompts 2 --group-size 2 --rounds 1   # smoke test

Every variant samples the same answers' worth of work from the same model in one process (the 4-bit base with a
LoRA adapter whose B matrices are non-zero, :func:`generation.load_policy`), inside one dense copy of the 4-bit
layers (``generation.dense_weights=auto`` on a CPU), at GRPO's temperature, the same seed before each call:

- ``repeat``: what GRPO and the rankings stage do: each prompt repeated G times, one ``generate`` call
  (:func:`lightalign.generation.sample_responses`);
- ``shared-prompt``: each prompt's KV cache computed once (its tokens but the last), copied to its G rows, then
  ``generate`` continues from it (:func:`lightalign.generation.generate_tokens` with ``num_samples=G``, what
  ``sample_responses`` and ``generate_answers`` do with ``num_samples``);
- ``static``: ``repeat`` with ``cache_implementation="static"`` (a pre-allocated cache);
- ``compiled``: ``static`` with transformers' automatic ``torch.compile`` of the decoding step, allowed on a CPU
  (``CompileConfig(_compile_all_devices=True)``); its first call, which compiles, is timed apart.

Variants alternate over ``--rounds`` (after one warm-up call each); the table gives the median seconds a call, the
speed against ``repeat``, and how many of the sampled answers equal ``repeat``'s at the same seed (the shared
cache computes the prompt in another batch shape, so the last bits of a logit may differ; a sampled token can
then differ where two tokens were almost equally likely).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from generation import load_policy  # noqa: E402

VARIANTS = ("repeat", "shared-prompt", "static", "compiled")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lightalign:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=8, help="prompts a call (grpo.batch_size)")
    parser.add_argument("--group-size", type=int, default=8, help="answers per prompt (grpo.group_size)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch
    from transformers import GenerationConfig
    from transformers.generation import CompileConfig

    from lightalign.data import load_prompt_examples
    from lightalign.data.collators import pad_prompts
    from lightalign.data.tokenize import encode_prompt
    from lightalign.generation import dense_decoding, generate_tokens, stop_token_ids, truncate_after_eos
    from lightalign.models.logprobs import causal_lm_of

    args = _parse(argv)
    harness.print_load_warning()
    model, tokenizer = load_policy(args.model)
    base = causal_lm_of(model)
    stops = stop_token_ids(tokenizer)
    prompts = [encode_prompt(tokenizer, p.prompt) for p in load_prompt_examples("demo:prompts", limit=args.prompts)]
    unique = pad_prompts(prompts, tokenizer.pad_token_id)
    G = args.group_size
    repeated = {k: v.repeat_interleave(G, dim=0) for k, v in unique.items()}
    common = dict(do_sample=True, temperature=args.temperature, top_k=0, top_p=1.0,
                  max_new_tokens=args.max_new_tokens, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)

    def generate(**kwargs) -> torch.Tensor:  # noqa: ANN003
        base.generation_config = GenerationConfig()  # as sample_responses: no checkpoint defaults
        output = model.generate(**kwargs, **common)
        return truncate_after_eos(output[:, repeated["input_ids"].shape[1] :], stops, tokenizer.pad_token_id).tokens

    def shared_prompt() -> torch.Tensor:  # what sample_responses(..., num_samples=G) runs
        base.generation_config = GenerationConfig()
        tokens = generate_tokens(model, unique["input_ids"], unique["attention_mask"], num_samples=G, **common)
        return truncate_after_eos(tokens, stops, tokenizer.pad_token_id).tokens

    def cpu_compile() -> CompileConfig:
        # transformers compiles only on accelerators unless this flag is set; generate copies the config through
        # to_dict(), which drops it, so it is set on the class (this process only runs the benchmark)
        CompileConfig._compile_all_devices = True
        return CompileConfig(mode="default")  # "reduce-overhead" means CUDA graphs

    calls = {
        "repeat": lambda: generate(**repeated),
        "shared-prompt": shared_prompt,
        "static": lambda: generate(**repeated, cache_implementation="static"),
        "compiled": lambda: generate(**repeated, cache_implementation="static",
                                     compile_config=cpu_compile()),
    }
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    answers: dict[str, list[list[int]]] = {}
    first_call: dict[str, float] = {}
    with torch.no_grad(), dense_decoding(model):
        for variant in list(args.variants):  # warm-up: lazy initialisation, and the compilation of `compiled`
            torch.manual_seed(0)
            started = time.perf_counter()
            try:
                answers[variant] = calls[variant]().tolist()
            except Exception as error:  # noqa: BLE001 (a variant this stack cannot run is reported, not fatal)
                print(f"{variant}: failed: {type(error).__name__}: {error}"[:300])
                args.variants.remove(variant)
                continue
            first_call[variant] = time.perf_counter() - started
            print(f"{variant}: first call {first_call[variant]:.1f} s", flush=True)
        for variant in harness.alternating(args.variants, args.rounds):
            torch.manual_seed(0)
            started = time.perf_counter()
            calls[variant]()
            seconds[variant].append(time.perf_counter() - started)

    rows_per_call = args.prompts * G
    print(f"\nSampling {args.prompts} prompts x G {G} (<= {args.max_new_tokens} tokens, T {args.temperature}), "
          f"{args.model} 4-bit + LoRA, dense copy, {args.rounds} round(s), {harness.device_name()}\n")
    reference = statistics.median(seconds["repeat"]) if "repeat" in seconds else None
    rows = []
    for variant in args.variants:
        median = statistics.median(seconds[variant])
        same = sum(a == b for a, b in zip(answers[variant], answers.get("repeat", answers[variant]), strict=True))
        rows.append([variant, first_call[variant], median, rows_per_call / median,
                     reference / median if reference else float("nan"), f"{same}/{rows_per_call}"])
    harness.print_table(["variant", "first call s", "s a call (median)", "answers/s", "x repeat",
                         "answers as repeat's"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
