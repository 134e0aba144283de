"""GRPO steps: lightalign's ``grpo`` stage against TRL's ``GRPOTrainer`` (the TRL installed beside lightalign, 1.16).

    python bench/grpo_vs_trl.py                        # SmolLM2-135M, 8 prompts x G = 4, <= 24 new tokens, 4 steps
    python bench/grpo_vs_trl.py --model lightalign:tiny-random --steps 2          # smoke test (about a minute)
    python bench/grpo_vs_trl.py --precision fp32      # 4-bit layers computing in fp32, as on CPUs without bf16
    python bench/grpo_vs_trl.py --set grpo.temperature=1.0 --set grpo.beta=0.04     # other stage settings

Run it alone (``flock /tmp/lightalign-heavy.lock``, ``LIGHTALIGN_HOME`` as usual): two torch processes on the
same cores distort both. Each side runs in its own child process, lightalign first, then TRL:

- ``lightalign``: the real stage, ``lightalign run grpo`` (in the child's process, so its peak is the stage's),
  from a fresh adapter (the reference is the base with adapters off) with the overrides this script prints;
  the seconds a step took are the stage's own ``step_seconds`` in ``DIR/logs/metrics.jsonl`` (sampling, reward,
  reference log-probs, update; not the checkpoint written at the end);
- ``trl``: ``trl.GRPOTrainer`` in TRL's QLoRA set-up: the model passed as a folder with
  ``quantization_config=BitsAndBytesConfig(NF4, double quantisation)`` and ``peft_config=LoraConfig(...)``,
  transformers generation (``use_vllm=False``); a step is timed from the end of one optimiser step to the end
  of the next (:class:`harness.StepTimer`).

Both sides read one composed ``conf/grpo.yaml`` with the same overrides, so they share: the base and its 4-bit
settings (``quant``), the LoRA settings (``lora``: r=16, alpha 32, dropout 0.05 — off while training, as
lightalign's stage does and TRL's ``disable_dropout=True`` does — on all linear layers), the prompts (the first
``--prompts-per-step × --steps`` of ``data.train``, the demo's ``demo:sft`` split, chat-templated alike and each
used once; the TRL child checks that its prompt ids equal lightalign's), G, the answer length, β (``grpo.beta``),
the temperature (``grpo.temperature``: 0.7 in conf/grpo.yaml; 1.0 in BENCHMARKS.md §6's runs before session 28),
top-p 1.0, the clip range 0.2, one optimisation pass per batch of answers in one optimiser step (in passes of
``--micro-batch`` answers, 8 as ``conf/trainer/grpo.yaml``: gradient accumulation on both sides),
token-level loss aggregation (TRL's ``dapo``), answers cut off at the length limit masked from the loss, the
learning rate and schedule, gradient checkpointing (on: ``conf/trainer/grpo.yaml``, and TRL's default), the seed, the
precision (``trainer.precision=auto``) and the reward: the demo's gold
judge (``rewards=gold_judge``, :class:`lightalign.demo.GoldJudge`, adapted to TRL's
``(prompts, completions, **kwargs) -> list[float]``). The stage's SFT loss beside the reward (``grpo.sft_weight``, on in
conf/grpo.yaml for the demo) is off: GRPOTrainer has none. The first step is a warm-up and is not timed: ``--steps``
must be at least 2.

TRL casts the trainable LoRA weights of a 4-bit model to bf16. On a CPU without native bf16, where the 4-bit
layers compute in fp32 (``resolve_precision``), its first step was seen to fail there ("expected m1 and m2 to have
the same dtype", issue 16): so whenever the 4-bit layers compute in fp32, this script casts them back to fp32
(:func:`lightalign.models.adapters.upcast_trainable`, lightalign's own choice of fp32 adapter weights) after
building the trainer, before training starts, and the table's caption says so. Where they compute in bf16 TRL
keeps its bf16 adapter weights.

Peak memory is the child process's peak resident memory (CPU) or peak CUDA memory allocated (GPU), model loading
included, and the same less what the child's imports alone took. Targets (issue 16): lightalign ≥ 1.5× TRL's
samples/s at ≤ 0.5× its peak memory. Only ratios of one run compare: never absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import harness

HERE = Path(__file__).resolve()
SIDES = ("lightalign", "trl")
TARGET_SPEED, TARGET_MEMORY = 1.5, 0.5
# lightalign's loss aggregation and advantage -> TRL's loss_type and scale_rewards (rloo has no GRPOTrainer twin)
TRL_LOSS = {"token": "dapo", "sequence": "grpo", "constant": "dr_grpo"}
TRL_SCALE = {"grpo": "group", "dr_grpo": "none"}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lightalign:smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=4, help="GRPO steps per side, the first one untimed")
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=4, help="G: answers per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--micro-batch", type=int, default=8,
                        help="answers per forward/backward pass (trainer.per_device_train_batch_size); the step's "
                             "answers are still one optimiser step, in gradient accumulation")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                        help="trainer.precision of both sides (fp32: 4-bit layers compute in fp32, as on a CPU "
                             "without native bf16)")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="one more override both sides compose (repeatable), e.g. --set grpo.temperature=1.0")
    # set by the parent for its children
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--overrides", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is a warm-up")
    if (args.prompts_per_step * args.group_size) % args.micro_batch:
        parser.error("--micro-batch must divide the answers of a step (--prompts-per-step x --group-size)")
    return args


def stage_overrides(args: argparse.Namespace) -> list[str]:
    """The ``grpo`` stage's overrides both sides compose: sizes from the options, no evaluation, the gold judge."""
    answers = args.prompts_per_step * args.group_size
    return [
        f"model.name_or_path={args.model}",
        f"trainer.precision={args.precision}",
        "rewards=gold_judge",
        "grpo.sft_weight=0",  # the demo's SFT loss beside the reward: GRPOTrainer has none
        f"grpo.batch_size={args.prompts_per_step}",
        f"grpo.group_size={args.group_size}",
        f"grpo.max_new_tokens={args.max_new_tokens}",
        f"trainer.max_steps={args.steps}",
        # all answers of a step in one optimiser step, in micro-batches (TRL: its generation batch, the same)
        f"trainer.per_device_train_batch_size={args.micro_batch}",
        f"trainer.gradient_accumulation_steps={answers // args.micro_batch}",
        f"trainer.save_steps={args.steps}",  # one checkpoint, after the last (timed) step
        f"data.limit={args.prompts_per_step * args.steps}",  # each prompt once, on both sides
        "eval.num_prompts=0",  # no held-out evaluation: TRL's side has none
        *args.extra,
    ]


# ---- lightalign: the stage itself, through the CLI ---------------------------------------------------------------


def run_lightalign(overrides: list[str], run_dir: Path) -> dict:
    """``lightalign run grpo overrides`` in this process; its per-step seconds from the stage's log."""
    import torch  # noqa: F401 (imported before the baseline is read, as on TRL's side)

    from lightalign.cli import main as cli_main
    from lightalign.rundir import LOG, read_log

    import_mb = harness.peak_memory_mb()
    started = time.perf_counter()
    code = cli_main(["run", "grpo", *overrides, f"hydra.run.dir={run_dir}"])
    if code != 0:
        raise RuntimeError(f"lightalign run grpo exited with {code}")
    steps = [r for r in read_log(run_dir / LOG) if r.get("stage") == "grpo" and "step_seconds" in r]
    return {"side": "lightalign", "peak_mb": harness.peak_memory_mb(), "import_mb": import_mb,
            "step_seconds": [r["step_seconds"] for r in steps], "process_s": time.perf_counter() - started}


# ---- TRL: GRPOTrainer in its QLoRA set-up -----------------------------------------------------------------------


def trl_reward(score):  # noqa: ANN001, ANN201 (a ScoreFn in, a TRL reward function out)
    """A lightalign ``(prompts, answers) -> scores`` callable as a TRL reward function.

    TRL passes conversational prompts and completions (lists of messages); lightalign's reward parts read the
    last user turn and the answer's text, as :class:`lightalign.grpo.rewards.WeightedReward` gives them.
    """
    from lightalign.data.formats import prompt_text

    def reward(prompts: list, completions: list, **kwargs: object) -> list[float]:
        return [float(s) for s in score([prompt_text(p) for p in prompts], [c[-1]["content"] for c in completions])]

    reward.__name__ = type(score).__name__
    return reward


def run_trl(overrides: list[str], out: Path) -> dict:
    """Build TRL's GRPOTrainer from the same composed config and train ``trainer.max_steps`` steps, timed."""
    # Before any lightalign import: TRL's users get bitsandbytes with its torch.compile wrappers and the
    # compiler stack they import, which lightalign skips on CPU (lightalign.lean_imports).
    import bitsandbytes  # noqa: F401
    import torch
    import trl
    from datasets import Dataset
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from trl import GRPOConfig, GRPOTrainer

    from lightalign.commands.validate import ConfigSource, compose_checked
    from lightalign.data import load_prompt_examples
    from lightalign.data.tokenize import tokenize_prompts
    from lightalign.models import load_tokenizer, resolve_model_path, resolve_precision
    from lightalign.models.adapters import build_lora_config, upcast_trainable
    from lightalign.models.loading import build_bnb_config
    from lightalign.paths import conf_dir
    from lightalign.training import build_trl_args

    import_mb = harness.peak_memory_mb()
    run = OmegaConf.to_object(compose_checked(ConfigSource(conf_dir(), "grpo", "grpo"), overrides))
    grpo, precision = run.grpo, resolve_precision(run.trainer.precision)
    if grpo.advantage not in TRL_SCALE:
        raise SystemExit(f"grpo.advantage={grpo.advantage} has no GRPOTrainer equivalent")
    tokenizer = load_tokenizer(run.model.name_or_path)  # the same chat template as lightalign's side
    prompts, prompt_ids, _ = tokenize_prompts(
        tokenizer, load_prompt_examples(run.data.train, split=run.data.split, limit=run.data.limit),
        max_length=run.data.max_length - grpo.max_new_tokens, overlong=run.data.overlong)
    # TRL renders conversational prompts itself: check it gets the ids lightalign samples from
    trl_ids = [tokenizer.apply_chat_template(p.prompt, add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"] for p in prompts]
    same_prompts = sum(a == list(b) for a, b in zip(prompt_ids, trl_ids, strict=True))
    dataset = Dataset.from_dict({"prompt": [p.prompt for p in prompts]})
    parts = list(run.rewards.values())

    config = build_trl_args(
        GRPOConfig, run.trainer, out, precision,
        save_strategy="no", report_to=[], disable_tqdm=True, logging_steps=1,
        model_init_kwargs={"dtype": precision.compute_dtype if torch.cuda.is_available() else torch.float32,
                           "use_safetensors": True},
        num_generations=grpo.group_size, max_completion_length=grpo.max_new_tokens, temperature=grpo.temperature,
        top_p=grpo.top_p, beta=grpo.beta, epsilon=grpo.clip_range, num_iterations=grpo.num_iterations,
        loss_type=TRL_LOSS[grpo.aggregation], scale_rewards=TRL_SCALE[grpo.advantage],
        mask_truncated_completions=grpo.mask_truncated, disable_dropout=True, use_vllm=False,
        reward_weights=[p.weight for p in parts],
    )
    trainer = GRPOTrainer(
        model=resolve_model_path(run.model.name_or_path), args=config, train_dataset=dataset,
        processing_class=tokenizer, reward_funcs=[trl_reward(instantiate(p.fn)) for p in parts],
        quantization_config=build_bnb_config(run.quant, precision.compute_dtype),
        peft_config=build_lora_config(run.lora),
    )
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    cast_back = precision.compute_dtype == torch.float32 and any(p.dtype != torch.float32 for p in trainable)
    if cast_back:
        upcast_trainable(trainer.model)  # TRL's bf16 adapter weights cannot meet fp32 4-bit compute (docstring)
    timer = _StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    return {"side": "trl", "trl_version": trl.__version__, "peak_mb": harness.peak_memory_mb(),
            "import_mb": import_mb, "step_ends": timer.ends, "cast_trainable_to_fp32": cast_back,
            "prompts_with_same_ids": same_prompts, "prompts": len(prompts), "beta": grpo.beta,
            "temperature": grpo.temperature,
            "trainable_params": sum(p.numel() for p in trainable)}


class _StepTimer(harness.StepTimer):
    """Step end times, peak memory not reset at the start of training: both sides count model loading."""

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201 (transformers API)
        pass


# ---- the parent: prepare, run both, print the table ---------------------------------------------------------------


def seconds_per_step(result: dict) -> float:
    """Mean seconds of the steps after the first (the warm-up)."""
    if result["side"] == "lightalign":
        timed = result["step_seconds"][1:]
        return sum(timed) / len(timed)
    ends = result["step_ends"]
    return (ends[-1] - ends[0]) / (len(ends) - 1)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.child:
        overrides = json.loads(args.overrides)
        runner = run_lightalign if args.child == "lightalign" else run_trl
        harness.emit_result(runner(overrides, Path(args.run_dir)))
        return 0

    import torch

    from lightalign.data import load_prompt_examples
    from lightalign.models import resolve_model_path, resolve_precision

    warning = harness.load_warning()
    if warning:
        print(warning)
    # build what both children read (the converted model folder, the demo data) here, outside their peaks
    resolve_model_path(args.model)
    load_prompt_examples("demo:sft", limit=1)
    overrides = stage_overrides(args)
    print("lightalign run grpo " + " ".join(overrides) + " hydra.run.dir=TMP", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="grpo-vs-trl-") as tmp:
        for side in SIDES:
            result = harness.run_child(HERE, [f"--child={side}", f"--overrides={json.dumps(overrides)}",
                                              f"--run-dir={Path(tmp) / side}"])
            result["seconds_per_step"] = seconds_per_step(result)
            result["samples_per_second"] = args.prompts_per_step * args.group_size / result["seconds_per_step"]
            results[side] = result
            print(f"{side:10s} {result['seconds_per_step']:7.2f} s/step {result['samples_per_second']:6.3f} samples/s "
                  f"peak {result['peak_mb']:6.0f} MB", flush=True)

    ours, trl_ = results["lightalign"], results["trl"]
    memory = "peak CUDA memory" if torch.cuda.is_available() else "peak RSS"
    print(f"\nGRPO, {args.model}, {args.prompts_per_step} prompts x G = {args.group_size}, <= {args.max_new_tokens} "
          f"new tokens, beta {trl_['beta']:g}, temperature {trl_['temperature']:g}, gold-judge reward, "
          f"{args.steps} steps (first untimed), "
          f"{harness.device_name()}, 4-bit compute {resolve_precision(args.precision).compute_dtype}, {memory}; "
          f"TRL {trl_['trl_version']}"
          f"{', its LoRA weights cast back to fp32' if trl_['cast_trainable_to_fp32'] else ''}; "
          f"prompt ids equal on {trl_['prompts_with_same_ids']}/{trl_['prompts']} prompts\n")
    rows = []
    for side, r in results.items():
        rows.append([side, r["seconds_per_step"], r["samples_per_second"], r["peak_mb"], r["peak_mb"] - r["import_mb"]])
    speed = ours["samples_per_second"] / trl_["samples_per_second"]
    peak = ours["peak_mb"] / trl_["peak_mb"]
    above = (ours["peak_mb"] - ours["import_mb"]) / (trl_["peak_mb"] - trl_["import_mb"])
    rows.append(["lightalign / trl", ours["seconds_per_step"] / trl_["seconds_per_step"], speed, peak, above])
    harness.print_table(["side", "s/step", "samples/s", "peak MB", "peak above imports MB"], rows)
    print(f"\ntarget: >= {TARGET_SPEED}x TRL's samples/s at <= {TARGET_MEMORY}x its peak memory: "
          + harness.target_verdict(speed, peak, TARGET_SPEED, TARGET_MEMORY))
    print(json.dumps(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
