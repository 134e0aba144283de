"""GRPO with QLoRA on ONE shared 4-bit base: critic-free RL, G sampled answers per prompt, no value model.

    lightalign run grpo grpo.sft_adapter=SFT_DIR [overrides]          # or python recipes/grpo.py; reward: correct
    lightalign run grpo grpo.sft_adapter=SFT_DIR 'rewards=[correct,gold_judge]' rewards.gold.weight=0.5
    lightalign run grpo grpo.sft_adapter=SFT_DIR rewards=none grpo.reward_model=REWARD_DIR
    lightalign run grpo model=tiny-random trainer.max_steps=2 hydra.run.dir=DIR grpo.sft_adapter=SFT_DIR

Supports: the policy as a trainable adapter on the base, started from the SFT adapter (``grpo.sft_adapter``; the
reference is then a frozen copy of it) or fresh (the reference is the base, adapters off); ``grpo.beta=0``
computes no reference log-probs; ``grpo.sft_weight`` mixes the SFT loss on ``data.train``'s demonstrations into
every optimiser step (InstructGPT's PPO-ptx). The reward is a weighted list of ``(prompts, answers) -> scores``
callables (``rewards``, e.g. the demo judge's correctness) and/or a reward stage's model (``grpo.reward_model``),
each part logged. Per step: ``grpo.batch_size`` prompts × ``grpo.group_size`` answers sampled in one batch; advantages
within each group (``grpo.advantage``: grpo | rloo | dr_grpo); ``grpo.num_iterations`` passes of the clipped
ratio loss + β·KL (k3) over the answers in mini-batches, aggregated by ``grpo.loss_aggregation``.
``trainer.max_steps`` counts steps. Checkpoints every ``trainer.save_steps`` steps (atomic); the same command
resumes exactly.

Writes DIR/adapter/ (the policy), DIR/metrics.json (correct_fraction, gold_score, reward_score, win rates against
the reference's answers, kl_to_sft; sft_* = the reference), DIR/samples.jsonl, DIR/sft_samples.jsonl,
DIR/logs/metrics.jsonl (one row per step: reward, reward/<part>, kl, clip_frac, ...), DIR/checkpoints/.
"""

from __future__ import annotations

import math
import time
from functools import partial

import hydra
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm
from transformers import TrainingArguments, get_scheduler

from lightalign.config import register_configs
from lightalign.config.schema import optimizer_batch
from lightalign.data import load_prompt_examples
from lightalign.data.tokenize import tokenize_prompts
from lightalign.errors import NonFiniteLossError, RewardError, report_errors
from lightalign.eval import EvalContext, reference_hooks, run_eval_hooks, untouched_rng
from lightalign.grpo.rewards import RewardPart, WeightedReward
from lightalign.grpo.rollout import sample_groups
from lightalign.grpo.update import grpo_update
from lightalign.models import resolve_precision
from lightalign.models.modes import disable_dropout
from lightalign.models.roles import (
    POLICY,
    adapter_weights,
    load_adapter_weights,
    load_policy_and_reference,
    save_policy,
    use_reference,
)
from lightalign.models.trained import ModelSource
from lightalign.reward_model import RewardRole, SharedBaseRewardModel
from lightalign.rl.checkpoint import load_loop_checkpoint, save_loop_checkpoint
from lightalign.rl.demonstrations import (
    CHECKPOINT_KEY,
    describe_demonstrations,
    load_demonstrations,
    restore_demonstrations,
)
from lightalign.rl.prompts import PromptSampler
from lightalign.rundir import ADAPTER, LOG, StageRun, append_log, means_at_both_ends, read_log, trim_log
from lightalign.stage import finish_stage, start_stage
from lightalign.trackers import TrackerLog, trl_report_to
from lightalign.training import build_trl_args, find_resume_checkpoint

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="grpo")
@report_errors
def main(cfg: DictConfig) -> None:
    run, out, config_hash = start_stage(cfg)  # typed and checked: G >= 2, beta >= 0, reward parts, mini-batch ...
    precision = resolve_precision(run.trainer.precision)
    source = ModelSource.of_settings(run.model, run.quant, run.trainer.precision)  # the base model
    grpo, trainer = run.grpo, run.trainer
    # the SFT and reward models run on this base as adapters: they must have been trained on it
    sft = StageRun.open(grpo.sft_adapter, expected_base=run.model.name_or_path) if grpo.sft_adapter else None
    reward_run = None
    if grpo.reward_model:
        reward_run = StageRun.open(grpo.reward_model, expected_base=run.model.name_or_path, stage="reward")

    # ---- setup: tokenizer, prompts -----------------------------------------------------------------------
    tokenizer = source.load_tokenizer()
    prompts, prompt_ids, prompt_report = tokenize_prompts(
        tokenizer,
        load_prompt_examples(run.data.train, split=run.data.split, limit=run.data.limit),
        max_length=run.data.max_length - grpo.max_new_tokens,  # room for the answer (checked by the schema)
        overlong=run.data.overlong,
    )
    print(f"prompts: {prompt_report.kept} kept, {prompt_report.truncated} truncated, {prompt_report.skipped} skipped")
    demonstrations = None
    if grpo.sft_weight > 0:  # the SFT loss mixed into every optimiser step, on data.train's dialogues
        demonstrations, demo_report = load_demonstrations(
            run.data.train, fmt=run.data.format, split=run.data.split, limit=run.data.limit, tokenizer=tokenizer,
            max_length=run.data.max_length, overlong=run.data.overlong, batch_size=trainer.per_device_train_batch_size,
            seed=trainer.seed + 1, option="grpo.sft_weight")
        print(describe_demonstrations(demonstrations, demo_report, grpo.sft_weight))
    eval_prompts = []
    if run.data.prompts and run.eval.num_prompts > 0:
        eval_prompts = load_prompt_examples(run.data.prompts, limit=run.eval.num_prompts)

    # ---- setup: one base; the policy adapter, the reference (frozen SFT copy or the base), the reward model ----
    base = source.load_base()
    model = load_policy_and_reference(base, run.lora, sft_adapter=sft.adapter_dir if sft else None,
                                      gradient_checkpointing=trainer.gradient_checkpointing)
    disable_dropout(model)  # the same log-probs in the update as at sampling: the first ratio is 1 (to ~1e-6)
    parts = [RewardPart(name, hydra.utils.instantiate(part.fn), part.weight) for name, part in run.rewards.items()]
    reward_model = None
    if reward_run:
        # one more frozen adapter on the same base; answers cut to what it was trained on, as in its training
        reward_model = SharedBaseRewardModel(RewardRole.attach(model, reward_run.adapter_dir), tokenizer,
                                             max_length=reward_run.setting("data.max_length", 512),
                                             batch_size=run.eval.batch_size)
        parts.append(RewardPart("rm", reward_model, grpo.reward_model_weight))
    reward = WeightedReward(parts)
    params = [p for p in model.parameters() if p.requires_grad]  # the policy adapter alone
    print(f"policy: {'the SFT adapter ' + str(sft.adapter_dir) if sft else 'a fresh adapter'}; reference: "
          f"{'the frozen SFT adapter' if sft else 'the base (adapters off)'}"
          f"{' (evaluation only: grpo.beta=0)' if grpo.beta == 0 else ''}; reward: "
          + " + ".join(f"{p.weight:g} × {p.name}" for p in parts) + f"; trainable parameters: "
          f"{sum(p.numel() for p in params):,}")

    # ---- eval hooks: the policy's answers, scores and KL against the reference (the SFT model) ---------------
    judge = hydra.utils.instantiate(run.eval.judge) if run.eval.judge else None
    # "rm" for the reward model alone, the name the pipeline report reads; "reward" for the sum trained on
    scorers = {**({"gold": judge} if judge else {}), **({"rm": reward_model} if reward_model else {}), "reward": reward}
    hooks: list = []
    if eval_prompts:
        hooks = reference_hooks(eval_prompts, scorers, reference_name="sft" if sft else "base",
                                reference_samples=sft.samples if sft else None, compare=run.eval.evaluate_base,
                                max_new_tokens=run.eval.max_new_tokens, batch_size=run.eval.batch_size,
                                temperature=grpo.temperature, dense_weights=run.generation.dense_weights)

    # ---- setup: optimiser, schedule, prompt order; resume ----------------------------------------------------
    total = trainer.max_steps if trainer.max_steps > 0 else \
        math.ceil(trainer.num_train_epochs * len(prompts) / grpo.batch_size)
    optimizer = torch.optim.AdamW(params, lr=trainer.learning_rate, weight_decay=trainer.weight_decay)
    scheduler = get_scheduler(trainer.lr_scheduler_type, optimizer,
                              num_warmup_steps=round(trainer.warmup_ratio * total), num_training_steps=total)
    sampler = PromptSampler(len(prompts), grpo.batch_size, seed=trainer.seed)
    answers_per_step = grpo.batch_size * grpo.group_size
    minibatch = optimizer_batch(trainer)
    start = 0
    resume_from = find_resume_checkpoint(out) if trainer.resume else None
    if resume_from:
        checkpoint = load_loop_checkpoint(resume_from)
        load_adapter_weights(model, POLICY, checkpoint.trainable)
        checkpoint.restore(optimizer, scheduler, sampler)
        if demonstrations is not None:
            restore_demonstrations(demonstrations, checkpoint.state, checkpoint=resume_from, option="grpo.sft_weight")
        start = checkpoint.step
        print(f"resuming from {resume_from} (step {start} of {total})")
    trim_log(out / LOG, run.stage, start)  # steps after the checkpoint are logged again
    tracker = TrackerLog(build_trl_args(TrainingArguments, trainer, out, precision)
                         if trl_report_to(trainer.report_to) else None, model=base)

    # ---- train: sample groups -> advantages -> optimise -> log -> checkpoint, once per step -----------------
    bar = tqdm(total=total, initial=start, desc="grpo steps", unit="step")
    for step in range(start + 1, total + 1):
        began = time.perf_counter()
        batch = sampler.next_batch()
        try:
            rollout = sample_groups(
                model, tokenizer, [prompts[i] for i in batch], [prompt_ids[i] for i in batch], reward,
                group_size=grpo.group_size, max_new_tokens=grpo.max_new_tokens, temperature=grpo.temperature,
                top_p=grpo.top_p, advantage=grpo.advantage, scale_eps=grpo.scale_eps,
                reference=partial(use_reference, model) if grpo.beta > 0 else None,
                # the policy moves before the last pass over these answers: keep what sampled them
                keep_old_logprobs=grpo.num_iterations > 1 or minibatch < answers_per_step,
                mask_truncated=grpo.mask_truncated,
                forward_batch_size=trainer.per_device_train_batch_size,
                dense_weights=run.generation.dense_weights,
            )
            sampled = time.perf_counter()
            update_stats = grpo_update(
                model, params, optimizer, rollout.batch, clip_range=grpo.clip_range, beta=grpo.beta,
                kl_estimator=grpo.kl_estimator, aggregation=grpo.aggregation, max_new_tokens=grpo.max_new_tokens,
                temperature=grpo.temperature, num_iterations=grpo.num_iterations, minibatch_size=minibatch,
                micro_batch_size=trainer.per_device_train_batch_size, max_grad_norm=trainer.max_grad_norm,
                demonstrations=demonstrations, demonstration_weight=grpo.sft_weight,
            )
        except (NonFiniteLossError, RewardError) as err:
            last = find_resume_checkpoint(out)
            raise type(err)(f"GRPO step {step}: {err}; stopped before its optimiser step, the last checkpoint "
                            f"({last or 'none yet'}) is intact") from err
        scheduler.step()
        elapsed = time.perf_counter() - began
        row = {**rollout.stats(), **update_stats, "learning_rate": scheduler.get_last_lr()[0],
               "epoch": sampler.epoch + sampler.position / len(prompts), "step_seconds": elapsed,
               "sample_seconds": sampled - began, "samples_per_second": answers_per_step / elapsed}
        append_log(out / LOG, run.stage, step, row)
        tracker.log(row, step)
        bar.update()
        bar.set_postfix(reward=f"{row['reward']:.3f}")
        if trainer.logging_steps > 0 and step % trainer.logging_steps == 0:
            tqdm.write(f"step {step}: reward {row['reward']:.3f} " + " ".join(
                f"{k.split('/', 1)[1]} {v:.3f}" for k, v in row.items() if k.startswith("reward/")) +
                f" | kl {row.get('kl', 0.0):.4f} clip {row['clip_frac']:.2f} answer {row['answer_tokens']:.1f} "
                f"tokens, {row['samples_per_second']:.2f} samples/s")
        if hooks and run.eval.every_n_steps > 0 and step % run.eval.every_n_steps == 0:
            with untouched_rng():
                evals = run_eval_hooks(hooks, EvalContext(model, tokenizer, out / "evals" / f"step-{step}", step=step))
            append_log(out / LOG, run.stage, step, {f"eval/{k}": v for k, v in evals.items()})
            tracker.log({f"eval_{k}": v for k, v in evals.items()}, step)  # shown as eval/{k}, as TRL's
        if step % trainer.save_steps == 0 or step == total:
            save_loop_checkpoint(out, step, trainable=adapter_weights(model, POLICY),
                                 optimizer=optimizer, scheduler=scheduler, sampler=sampler,
                                 state={CHECKPOINT_KEY: demonstrations.state_dict()} if demonstrations else None,
                                 keep=trainer.save_total_limit)
    bar.close()
    tracker.close()

    # ---- evaluate ----------------------------------------------------------------------------------------------
    metrics: dict[str, float] = {}
    if hooks:
        with untouched_rng():
            metrics.update(run_eval_hooks(hooks, EvalContext(model, tokenizer, out, step=total)))
    logged = [r for r in read_log(out / LOG) if r.get("stage") == run.stage and "reward" in r]
    if logged:
        # means of the first and of the last five steps
        metrics["train_reward_first"], metrics["train_reward_last"] = means_at_both_ends(logged, "reward")
        if grpo.beta > 0:
            metrics["train_kl_last"] = means_at_both_ends(logged, "kl")[1]
        metrics.update({
            "train_steps": len(logged),
            "train_runtime_s": sum(r["step_seconds"] for r in logged),
            "train_samples_per_second": sum(r["samples_per_second"] for r in logged) / len(logged),
        })
    metrics.update(prompt_report.as_metrics("train_prompts"))

    # ---- save --------------------------------------------------------------------------------------------------
    save_policy(model, out / ADAPTER)  # the policy adapter alone: not the frozen reference or reward copies
    tokenizer.save_pretrained(out / ADAPTER)
    finish_stage(out, run.stage, metrics, artefacts={"adapter": ADAPTER, "base_model": run.model.name_or_path},
                 config_hash=config_hash)

if __name__ == "__main__":
    main()
