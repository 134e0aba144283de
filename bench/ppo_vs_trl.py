"""One PPO update: lightalign against TRL 1.12's ``trl.experimental.ppo.PPOTrainer`` (the last TRL with PPO).

    python -m venv bench/.venv-trl112                       # once: TRL 1.12 beside the project's TRL
    bench/.venv-trl112/bin/pip install torch==2.13.0
    bench/.venv-trl112/bin/pip install 'trl==1.12.*' transformers==5.24.0 peft==0.21.2 bitsandbytes==0.50.2 \\
        accelerate==1.15.0 datasets==5.2.0
    python bench/ppo_vs_trl.py                              # SmolLM2-135M, 8 rollouts x 48 tokens, 1 PPO epoch
    python bench/ppo_vs_trl.py --model lightalign:tiny-random --rounds 1   # smoke test

The same model folder, the same 8 demo prompts (token ids written by this script, so both tokenise alike),
the same rollout sizes (8 answers of at most 48 new tokens, temperature 0.7, stopping at EOS), one PPO epoch
in micro-batches of 4, β = 0.05. Variants, each in its own process, alternating over ``--rounds``:

- ``lightalign``: ``bench/ppo_memory.py``'s ``shared`` variant (its :func:`run_variant`: policy, reference,
  value and reward as four LoRA adapters on one 4-bit base, random r=16 adapters standing in for the SFT and
  reward stages);
- ``trl-qlora``: TRL's PEFT set-up: a 4-bit policy with a LoRA adapter (r=16, all linear layers), the reference
  = that policy with the adapter disabled, and the value and reward models as full-precision sequence
  classifiers (TRL trains the value model in full; it cannot be 4-bit);
- ``trl-fp32``: TRL's plain set-up: four full-precision models (policy, a separately loaded reference, value,
  reward).

TRL runs at its defaults otherwise (rollout forward batch 64, i.e. all 8 answers at once) except for what the
comparison needs (``stop_token="eos"`` as ours, ``num_sample_generations=0``) and, on a CPU, ``use_cpu=True``
and fp32 training (TRL's bf16 default refuses to start there); its 4-bit layers compute in the dtype lightalign's
``resolve_precision`` picks (fp32 on CPUs without native bf16). Peak memory is the process's peak RSS (CPU) or
the peak CUDA memory allocated (GPU), both with and without what the imports alone take. The four-separate-models
comparison (the same code on four models) is ``bench/ppo_memory.py``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import harness

HERE = Path(__file__).resolve()
TRL_PYTHON = HERE.parent / ".venv-trl112" / "bin" / "python"
VARIANTS = ("lightalign", "trl-qlora", "trl-fp32")
TARGET_SPEED, TARGET_MEMORY = 1.5, 0.5  # issue 15 (an earlier target was 1.0x)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lightalign:smollm2-135m-instruct")
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    # set by the parent for the TRL children, which run in TRL 1.12's environment without lightalign
    parser.add_argument("--trl-child", choices=["trl-qlora", "trl-fp32"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", help=argparse.SUPPRESS)
    parser.add_argument("--compute-dtype", default="float32", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def peak_mb() -> float:
    """The process's peak: CUDA memory allocated by torch on a GPU, else peak resident memory."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- TRL 1.12 (runs in bench/.venv-trl112) ----------------------------------------------------------------------


def run_trl(args: argparse.Namespace) -> dict:
    """Load TRL's four roles as ``args.trl_child`` says and run one PPO update; time it and read the peak."""
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BitsAndBytesConfig,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    import_mb = peak_mb()
    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.folder, padding_side="left")
    prompt_ids = json.loads(Path(args.prompts).read_text())
    dataset = Dataset.from_dict({"input_ids": prompt_ids})
    dtype = torch.bfloat16 if cuda else torch.float32
    common = {"dtype": dtype, "use_safetensors": True}

    started = time.perf_counter()
    qlora = args.trl_child == "trl-qlora"
    if qlora:
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=getattr(torch, args.compute_dtype))
        policy = AutoModelForCausalLM.from_pretrained(args.folder, quantization_config=bnb, **common)
        reference = None  # TRL: the policy with its adapter disabled
        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    else:
        policy = AutoModelForCausalLM.from_pretrained(args.folder, **common)
        reference = AutoModelForCausalLM.from_pretrained(args.folder, **common)
        peft_config = None
    value = AutoModelForSequenceClassification.from_pretrained(args.folder, num_labels=1, **common)
    reward = AutoModelForSequenceClassification.from_pretrained(args.folder, num_labels=1, **common)
    if cuda:
        for model in (policy, reference, value, reward):
            if model is not None and not getattr(model, "is_loaded_in_4bit", False):
                model.to("cuda")
    load_s = time.perf_counter() - started
    loaded_mb = peak_mb()

    with tempfile.TemporaryDirectory() as tmp:
        config = PPOConfig(
            output_dir=tmp, total_episodes=args.rollouts, per_device_train_batch_size=4,
            gradient_accumulation_steps=args.rollouts // 4, num_mini_batches=1, num_ppo_epochs=1,
            response_length=args.new_tokens, temperature=0.7, kl_coef=0.05, stop_token="eos",
            num_sample_generations=0, save_strategy="no", report_to=[], disable_tqdm=True, seed=0,
            use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(),
        )
        trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=reference,
                             reward_model=reward, value_model=value, train_dataset=dataset, peft_config=peft_config)
        timer = _UpdateTimer()
        trainer.add_callback(timer)
        trainer.train()
    return {"variant": args.trl_child, "trl_version": trl.__version__, "peak_mb": peak_mb(), "import_mb": import_mb,
            "after_load_mb": loaded_mb, "load_s": load_s, "update_s": timer.ends[0] - timer.begin,
            "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)}


class _UpdateTimer(harness.StepTimer):
    """Seconds from the start of training to the end of the first PPO update (what ppo_memory.py times)."""

    begin: float = 0.0

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201 (transformers API)
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.begin = time.perf_counter()


# ---- lightalign (the project's environment) ----------------------------------------------------------------------


def run_lightalign(args: argparse.Namespace, sft: Path, reward: Path) -> dict:
    """ppo_memory.py's ``shared`` variant in a child process (its own peak)."""
    result = harness.run_child(HERE.parent / "ppo_memory.py", [
        "--variant", "shared", "--model", args.model, "--sft", str(sft), "--reward", str(reward),
        "--rollouts", str(args.rollouts), "--new-tokens", str(args.new_tokens)], result_prefix="")
    return {"variant": "lightalign", "peak_mb": result["peak_rss_mb"], "import_mb": result["import_mb"],
            "after_load_mb": result["after_load_mb"], "load_s": result["load_s"], "update_s": result["update_s"],
            "trainable_params": result["trainable_params"], "answer_tokens": result["answer_tokens"]}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.trl_child:
        harness.emit_result(run_trl(args))
        return 0
    if not TRL_PYTHON.is_file():
        sys.exit(f"TRL 1.12's environment is missing: create {TRL_PYTHON.parent.parent} as this file's docstring says")

    import torch
    from ppo_memory import make_adapters

    from lightalign.data import load_prompt_examples
    from lightalign.data.tokenize import tokenize_prompts
    from lightalign.models import load_tokenizer, resolve_model_path, resolve_precision

    harness.print_load_warning()
    folder = resolve_model_path(args.model)
    compute_dtype = str(resolve_precision("auto").compute_dtype).removeprefix("torch.")
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="ppo-vs-trl-") as tmp:
        _, ids, _ = tokenize_prompts(load_tokenizer(args.model),
                                     load_prompt_examples("demo:prompts", limit=args.rollouts), max_length=256)
        prompts = Path(tmp) / "prompt_ids.json"
        prompts.write_text(json.dumps(ids))
        sft, reward = make_adapters(args.model, Path(tmp))
        for variant in harness.alternating(VARIANTS, args.rounds):
            if variant == "lightalign":
                result = run_lightalign(args, sft, reward)
            else:
                result = harness.run_child(HERE, [
                    f"--trl-child={variant}", f"--folder={folder}", f"--prompts={prompts}",
                    f"--compute-dtype={compute_dtype}", f"--rollouts={args.rollouts}",
                    f"--new-tokens={args.new_tokens}"], python=TRL_PYTHON)
            result["samples_per_second"] = args.rollouts / result["update_s"]
            results[variant].append(result)
            print(f"{variant:11s} {result['samples_per_second']:6.3f} samples/s ({result['update_s']:.1f} s/update)  "
                  f"peak {result['peak_mb']:6.0f} MB ({result['peak_mb'] - result['import_mb']:6.0f} above imports)",
                  flush=True)

    device = f"GPU ({torch.cuda.get_device_name()}), peak CUDA memory" if torch.cuda.is_available() else \
        "CPU, peak RSS"
    print(f"\nOne PPO update, {args.model}, {args.rollouts} rollouts x <= {args.new_tokens} new tokens, 1 epoch, "
          f"{device}; median speed / max peak over {args.rounds} rounds\n")
    ours = results["lightalign"]
    ours_speed = harness.median_of(ours, "samples_per_second")
    ours_peak = max(r["peak_mb"] for r in ours)
    ours_above = max(r["peak_mb"] - r["import_mb"] for r in ours)
    rows = []
    for variant in VARIANTS:
        speed = harness.median_of(results[variant], "samples_per_second")
        peak = max(r["peak_mb"] for r in results[variant])
        above = max(r["peak_mb"] - r["import_mb"] for r in results[variant])
        rows.append([variant, speed, ours_speed / speed, peak, ours_peak / peak, above, ours_above / above])
    harness.print_table(["variant", "samples/s", "lightalign speed x", "peak MB", "lightalign peak x",
                         "peak above imports MB", "lightalign x"], rows)
    for row in rows[1:]:
        print(f"target vs {row[0]}: >= {TARGET_SPEED}x samples/s and <= {TARGET_MEMORY}x peak memory: "
              + harness.target_verdict(row[2], row[4], TARGET_SPEED, TARGET_MEMORY))
    print(json.dumps(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
