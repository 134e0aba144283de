"""PPO with QLoRA on ONE shared 4-bit base: the third stage of the InstructGPT recipe (RLHF).

    lightalign run ppo ppo.sft_adapter=SFT_DIR ppo.reward_model=REWARD_DIR [overrides]   # or python recipes/ppo.py
    lightalign run ppo ppo.sft_adapter=SFT_DIR reward=gold_judge        # a callable reward (verifiable rewards)
    lightalign run ppo model=tiny-random trainer.max_steps=2 hydra.run.dir=DIR ppo.sft_adapter=SFT_DIR \\
        ppo.reward_model=REWARD_DIR

Supports: policy, reference, value and reward as four LoRA adapters on one (4-bit or full-precision) base
(lightalign.ppo.roles); the policy starts from the SFT adapter (``ppo.sft_adapter``, the reference is then a
frozen copy of it) or from a fresh adapter (the reference is the base); the reward is a reward stage's model
(``ppo.reward_model``, which also initialises the value role) or any ``(prompts, answers) -> scores`` callable
(``reward._target_``). Per update: sample ``ppo.batch_size`` answers (temperature/top-k/top-p), reward = score
at the last token - β·KL per token (β fixed, or adaptive with ``ppo.kl_target``), optional score clip
then missing-EOS penalty, reward whitening; GAE, whitened advantages; ``ppo.num_ppo_epochs`` epochs of clipped policy
and value losses over shuffled mini-batches, entropy bonus, gradient clipping and accumulation; ``ppo.sft_weight``
mixes the policy's SFT loss on ``data.train``'s demonstrations into every optimiser step (InstructGPT's PPO-ptx).
``trainer.max_steps`` counts PPO updates. Checkpoints every ``trainer.save_steps`` updates (atomic); the same
command resumes.

Writes DIR/adapter/ (the policy), DIR/metrics.json (gold_score, rm_score, win_rate_{gold,rm} against the
reference's answers, kl_to_sft; sft_* = the reference, the SFT model; ``base`` for ``sft`` without an SFT adapter;
``reward`` for ``rm`` with a reward callable), DIR/samples.jsonl, DIR/sft_samples.jsonl, DIR/logs/metrics.jsonl
(one row per update), DIR/checkpoints/.
"""

from __future__ import annotations

import math
import time

import hydra
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm
from transformers import TrainingArguments, get_scheduler

from lightalign.config import register_configs
from lightalign.config.schema import optimizer_batch
from lightalign.data import load_prompt_examples
from lightalign.data.tokenize import tokenize_prompts
from lightalign.errors import NonFiniteLossError, report_errors
from lightalign.eval import EvalContext, reference_hooks, run_eval_hooks, untouched_rng
from lightalign.models import resolve_precision
from lightalign.models.roles import save_policy
from lightalign.models.trained import ModelSource
from lightalign.ppo.kl_control import AdaptiveKLController, FixedKLController
from lightalign.ppo.roles import load_shared_base_roles
from lightalign.ppo.rollout import collect_rollout
from lightalign.ppo.update import ppo_update
from lightalign.reward_model import SharedBaseRewardModel
from lightalign.rl.checkpoint import load_loop_checkpoint, save_loop_checkpoint
from lightalign.rl.demonstrations import (
    CHECKPOINT_KEY,
    describe_demonstrations,
    load_demonstrations,
    restore_demonstrations,
)
from lightalign.rl.prompts import PromptSampler
from lightalign.rundir import (
    ADAPTER,
    LOG,
    StageRun,
    append_log,
    means_at_both_ends,
    read_log,
    trim_log,
)
from lightalign.stage import finish_stage, start_stage
from lightalign.trackers import TrackerLog, trl_report_to
from lightalign.training import build_trl_args, find_resume_checkpoint

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="ppo")
@report_errors
def main(cfg: DictConfig) -> None:
    run, out, config_hash = start_stage(cfg)  # typed config, run directory, config.yaml, seed
    precision = resolve_precision(run.trainer.precision)
    source = ModelSource.of_settings(run.model, run.quant, run.trainer.precision)  # the base model
    ppo, trainer = run.ppo, run.trainer

    # ---- setup: which reward, which adapters (the schema checked: exactly one reward, mini-batches divide) --
    reward_target = (run.reward or {}).get("_target_")
    minibatch = optimizer_batch(trainer)
    # the SFT and reward models run on this base as adapters: they must have been trained on it
    sft = StageRun.open(ppo.sft_adapter, expected_base=run.model.name_or_path) if ppo.sft_adapter else None
    reward_run = None
    if ppo.reward_model:
        reward_run = StageRun.open(ppo.reward_model, expected_base=run.model.name_or_path, stage="reward")

    # ---- setup: tokenizer, prompts -----------------------------------------------------------------------
    tokenizer = source.load_tokenizer()
    prompts, prompt_ids, prompt_report = tokenize_prompts(
        tokenizer,
        load_prompt_examples(run.data.train, split=run.data.split, limit=run.data.limit),
        max_length=run.data.max_length - ppo.max_new_tokens,  # room for the answer (checked by the schema)
        overlong=run.data.overlong,
    )
    print(f"prompts: {prompt_report.kept} kept, {prompt_report.truncated} truncated, {prompt_report.skipped} skipped")
    demonstrations = None
    if ppo.sft_weight > 0:  # the policy's SFT loss mixed into every optimiser step, on data.train's dialogues
        demonstrations, demo_report = load_demonstrations(
            run.data.train, fmt=run.data.format, split=run.data.split, limit=run.data.limit, tokenizer=tokenizer,
            max_length=run.data.max_length, overlong=run.data.overlong, batch_size=trainer.per_device_train_batch_size,
            seed=trainer.seed + 1, option="ppo.sft_weight")  # an order of its own, apart from the prompts'
        print(describe_demonstrations(demonstrations, demo_report, ppo.sft_weight))
    eval_prompts = []
    if run.data.prompts and run.eval.num_prompts > 0:
        eval_prompts = load_prompt_examples(run.data.prompts, limit=run.eval.num_prompts)

    # ---- setup: one base, four roles --------------------------------------------------------------------
    base = source.load_base()
    roles = load_shared_base_roles(
        base,
        sft.adapter_dir if sft else None,
        reward_run.adapter_dir if reward_run else None,
        value_init=None if ppo.value_init == "auto" else ppo.value_init,
        lora=run.lora,  # a fresh policy's and a fresh value adapter's shape
        gradient_checkpointing=trainer.gradient_checkpointing,
    )
    trainable = sum(p.numel() for p in roles.trainable_parameters())
    print(f"policy: {'the SFT adapter ' + str(sft.adapter_dir) if sft else 'a fresh adapter'}; reference: "
          f"{'the frozen SFT adapter' if sft else 'the base (adapters off)'}; reward: "
          f"{reward_run.adapter_dir if reward_run else reward_target}; trainable parameters (policy + value): "
          f"{trainable:,}")
    if reward_run:
        # answers are cut to what the reward model was trained on, as in its training
        reward_fn = SharedBaseRewardModel(roles, tokenizer, max_length=reward_run.setting("data.max_length", 512),
                                          batch_size=run.eval.batch_size)
    else:
        reward_fn = hydra.utils.instantiate(run.reward)

    # ---- eval hooks: the policy's answers, scores and KL against the reference (the SFT model) ---------------
    judge = hydra.utils.instantiate(run.eval.judge) if run.eval.judge else None
    # "rm" for a reward model, the name the pipeline report reads; "reward" for any other callable
    scorers = {**({"gold": judge} if judge else {}), ("rm" if reward_run else "reward"): reward_fn}
    hooks: list = []
    if eval_prompts:
        # with the reference's answers and scores too (what PPO started from) and the win rates against them
        hooks = reference_hooks(eval_prompts, scorers, reference_name="sft" if sft else "base",
                                reference_samples=sft.samples if sft else None, compare=run.eval.evaluate_base,
                                max_new_tokens=run.eval.max_new_tokens, batch_size=run.eval.batch_size,
                                temperature=ppo.temperature, dense_weights=run.generation.dense_weights)

    # ---- setup: optimiser, schedule, KL controller, prompt order; resume -----------------------------------
    epochs_of_updates = math.ceil(trainer.num_train_epochs * len(prompts) / ppo.batch_size)
    total = trainer.max_steps if trainer.max_steps > 0 else epochs_of_updates
    optimizer = torch.optim.AdamW(roles.trainable_parameters(), lr=trainer.learning_rate,
                                  weight_decay=trainer.weight_decay)
    scheduler = get_scheduler(trainer.lr_scheduler_type, optimizer,
                              num_warmup_steps=round(trainer.warmup_ratio * total), num_training_steps=total)
    kl_control = (AdaptiveKLController(ppo.kl_coef, ppo.kl_target, ppo.kl_horizon) if ppo.kl_target
                  else FixedKLController(ppo.kl_coef))
    sampler = PromptSampler(len(prompts), ppo.batch_size, seed=trainer.seed)
    start = 0
    resume_from = find_resume_checkpoint(out) if trainer.resume else None
    if resume_from:
        checkpoint = load_loop_checkpoint(resume_from)
        roles.load_trainable_state_dict(checkpoint.trainable)
        kl_control.load_state_dict(checkpoint.state["kl_controller"])
        checkpoint.restore(optimizer, scheduler, sampler)
        if demonstrations is not None:
            restore_demonstrations(demonstrations, checkpoint.state, checkpoint=resume_from, option="ppo.sft_weight")
        start = checkpoint.step
        print(f"resuming from {resume_from} (update {start} of {total})")
    trim_log(out / LOG, run.stage, start)  # updates after the checkpoint are logged again
    # trainer.report_to: each logged row goes to that tracker too, through the callbacks TRL stages' trainers use
    tracker = TrackerLog(build_trl_args(TrainingArguments, trainer, out, precision)
                         if trl_report_to(trainer.report_to) else None, model=base)

    # ---- train: rollout -> PPO epochs -> log -> checkpoint, once per update -------------------------------
    bar = tqdm(total=total, initial=start, desc="ppo updates", unit="update")
    for step in range(start + 1, total + 1):
        began = time.perf_counter()
        batch = sampler.next_batch()
        try:
            rollout = collect_rollout(roles, tokenizer, [prompts[i] for i in batch], [prompt_ids[i] for i in batch],
                                      reward_fn, ppo, kl_coef=kl_control.value,
                                      forward_batch_size=trainer.per_device_train_batch_size,
                                      dense_weights=run.generation.dense_weights)
            sampled = time.perf_counter()
            update_stats = ppo_update(roles, optimizer, rollout, ppo, minibatch_size=minibatch,
                                      micro_batch_size=trainer.per_device_train_batch_size,
                                      max_grad_norm=trainer.max_grad_norm, demonstrations=demonstrations,
                                      demonstration_weight=ppo.sft_weight)
        except NonFiniteLossError as err:
            last = find_resume_checkpoint(out)
            raise NonFiniteLossError(
                f"PPO update {step}: {err}; stopped before its optimiser step, the last checkpoint "
                f"({last or 'none yet'}) is intact. Lower trainer.learning_rate or check the reward."
            ) from err
        experience = rollout.stats()
        row = {**experience, **update_stats, "kl_coef": kl_control.value,
               "learning_rate": scheduler.get_last_lr()[0]}
        kl_control.update(experience["kl"], n_steps=rollout.size)
        scheduler.step()
        elapsed = time.perf_counter() - began
        tokens = int(rollout.mask.sum())
        row.update({"epoch": sampler.epoch + sampler.position / len(prompts), "update_seconds": elapsed,
                    "rollout_seconds": sampled - began, "tokens_per_second": tokens / elapsed})
        append_log(out / LOG, run.stage, step, row)
        tracker.log(row, step)
        bar.update()
        bar.set_postfix(score=f"{experience['score']:.3f}", kl=f"{experience['kl']:.2f}")
        if trainer.logging_steps > 0 and step % trainer.logging_steps == 0:
            tqdm.write(f"update {step}: score {experience['score']:.3f} kl {experience['kl']:.3f} "
                       f"reward {experience['total_reward']:.3f} answer {experience['answer_tokens']:.1f} tokens "
                       f"value loss {update_stats['value_loss']:.4f} clip {update_stats['policy_clip_frac']:.2f}")
        if hooks and run.eval.every_n_steps > 0 and step % run.eval.every_n_steps == 0:
            with untouched_rng():
                ctx = EvalContext(roles.activate_policy(), tokenizer, out / "evals" / f"step-{step}", step=step)
                evals = run_eval_hooks(hooks, ctx)
            append_log(out / LOG, run.stage, step, {f"eval/{k}": v for k, v in evals.items()})
            tracker.log({f"eval_{k}": v for k, v in evals.items()}, step)  # shown as eval/{k}, as TRL's
        if step % trainer.save_steps == 0 or step == total:
            state = {"kl_controller": kl_control.state_dict()}
            if demonstrations is not None:
                state[CHECKPOINT_KEY] = demonstrations.state_dict()
            save_loop_checkpoint(out, step, trainable=roles.trainable_state_dict(), optimizer=optimizer,
                                 scheduler=scheduler, sampler=sampler, state=state, keep=trainer.save_total_limit)
    bar.close()
    tracker.close()

    # ---- evaluate --------------------------------------------------------------------------------------------
    metrics: dict[str, float] = {}
    if hooks:
        with untouched_rng():
            metrics.update(run_eval_hooks(hooks, EvalContext(roles.activate_policy(), tokenizer, out, step=total)))
    logged = [r for r in read_log(out / LOG) if r.get("stage") == run.stage and "score" in r]
    if logged:
        # means of the first and of the last five updates
        metrics["train_score_first"], metrics["train_score_last"] = means_at_both_ends(logged, "score")
        metrics.update({
            "train_updates": len(logged),
            "train_kl_last": means_at_both_ends(logged, "kl")[1],
            "train_runtime_s": sum(r["update_seconds"] for r in logged),
            "train_tokens_per_second": sum(r["tokens_per_second"] for r in logged) / len(logged),
        })
    metrics.update(prompt_report.as_metrics("train_prompts"))

    # ---- save ------------------------------------------------------------------------------------------------
    save_policy(roles.model, out / ADAPTER)
    tokenizer.save_pretrained(out / ADAPTER)
    finish_stage(out, run.stage, metrics, artefacts={"adapter": ADAPTER, "base_model": run.model.name_or_path},
                 config_hash=config_hash)


if __name__ == "__main__":
    main()
