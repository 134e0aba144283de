"""Reward modelling from rankings with QLoRA: the second stage of the InstructGPT recipe.

    lightalign run reward [overrides]            # or: python recipes/reward.py [overrides]
    lightalign run reward model=tiny-random trainer.max_steps=2 hydra.run.dir=DIR
    lightalign run reward data=jsonl data.train=hh.jsonl data.format=hh data.invalid=skip
    lightalign run reward data.train=RANKINGS_DIR/rankings.jsonl reward.init_adapter=SFT_RUN_DIR

Supports: K-wise rankings, chosen/rejected pairs (explicit or implicit prompt) and Anthropic HH transcripts
(lightalign.data.preference); a scalar ``score`` head on the 4-bit (or full-precision) base with LoRA, the
head trained and saved with the adapter (``modules_to_save``); InstructGPT's loss with one prompt and all
its ranked answers per batch element; held-out prompts split off the training data (``data.eval_fraction``)
unless ``data.eval`` names a source; the reward model's adapter started from the SFT stage's
(``reward.init_adapter=SFT_RUN_DIR``, as InstructGPT did; the default in pipelines); with
``reward.likelihood=fit``, a score that also reads the answer's likelihood under the trained trunk, its two
weights fitted on the training pairs after training (lightalign.score_mix); resume from the last
checkpoint in DIR. Built on TRL's ``RewardTrainer``.

Writes DIR/adapter/ (LoRA + score head, and score_mix.json when fitted), DIR/metrics.json (pairwise_accuracy,
mean_margin, mean_score: of the final score; head_/likelihood_pairwise_accuracy: each reading alone; base_* = the
untrained head), DIR/logs/. Use it with ``lightalign.reward_model.RewardModel.load(DIR)``.
"""

from __future__ import annotations

import gc

import hydra
from datasets import Dataset
from omegaconf import DictConfig
from trl import RewardConfig

from lightalign.config import register_configs
from lightalign.data import load_preference_splits
from lightalign.data.collators import RankedGroupCollator
from lightalign.data.tokenize import tokenize_reward_groups, trained_reward_pairs
from lightalign.distributed import is_main_process
from lightalign.errors import ConfigError, report_errors
from lightalign.eval import EvalContext, EvalHookCallback, PairwiseAccuracy, run_eval_hooks
from lightalign.models import apply_lora, resolve_precision
from lightalign.models.adapters import apply_lora_from
from lightalign.models.logprobs import logits_from_hidden_states
from lightalign.models.trained import ModelSource
from lightalign.reward_model import load_reward_on_causal_lm
from lightalign.rundir import (
    ADAPTER,
    LOG,
    StageRun,
    read_json,
    write_json_atomic,
)
from lightalign.score_mix import fit_mix_on_pairs, save_score_mix
from lightalign.stage import finish_stage, start_stage
from lightalign.trainers import RankedRewardTrainer
from lightalign.training import JsonlLogCallback, NonFiniteLossCallback, build_trl_args, find_resume_checkpoint

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="reward")
@report_errors
def main(cfg: DictConfig) -> None:
    run, out, config_hash = start_stage(cfg)  # typed config, run directory, config.yaml, seed
    precision = resolve_precision(run.trainer.precision)
    source = ModelSource.of_settings(run.model, run.quant, run.trainer.precision, head="score")  # the base model
    init = StageRun.open(run.reward.init_adapter, expected_base=run.model.name_or_path) \
        if run.reward.init_adapter else None

    # ---- setup: tokenizer, data, model -------------------------------------------------------------
    tokenizer = source.load_tokenizer()
    data = load_preference_splits(
        run.data.train, run.data.eval, fmt=run.data.format, split=run.data.split, limit=run.data.limit,
        eval_limit=run.data.eval_limit, eval_fraction=run.data.eval_fraction, invalid=run.data.invalid,
        seed=run.trainer.seed,
    )
    print(f"train data: {data.train_report.summary()}; {len(data.held_out)} held-out pairs")
    train_rows, train_report = tokenize_reward_groups(
        tokenizer, data.train, max_length=run.data.max_length, overlong=run.data.overlong
    )
    print(f"train groups: {train_report.kept} kept, {train_report.truncated} truncated, {train_report.skipped} skipped")

    model = source.load_base()
    # known now, not after training: the fit reads the trunk's logits from its hidden states
    if run.reward.likelihood == "fit" and not logits_from_hidden_states(
            model.config, trust_remote_code=run.model.trust_remote_code):
        raise ConfigError(f"{run.model.name_or_path}'s output layer has a bias, or its config scales or caps its "
                          "logits: the reward model cannot read answer likelihoods from its hidden states; set "
                          "reward.likelihood=off")
    # The score head is new: train it and save it with the adapter, or the saved reward model is useless.
    if init:  # InstructGPT: the reward model starts as the SFT model plus a new head
        model = apply_lora_from(model, init.adapter_dir, task_type="SEQ_CLS", modules_to_save=["score"],
                                gradient_checkpointing=run.trainer.gradient_checkpointing)
    else:
        model = apply_lora(model, run.lora, task_type="SEQ_CLS", modules_to_save=["score"],
                           gradient_checkpointing=run.trainer.gradient_checkpointing)
    print(f"reward model: {'the SFT adapter ' + str(init.adapter_dir) if init else 'a fresh adapter'} "
          "on the base, plus a new score head")
    model.print_trainable_parameters()

    hooks = []
    if data.held_out:
        hooks.append(PairwiseAccuracy(data.held_out, max_length=run.data.max_length, batch_size=run.eval.batch_size))

    # ---- the untrained head's scores, for comparison (kept across resumes) --------------------------
    base_file = out / "evals" / "base.json"
    base_metrics = read_json(base_file) or {}
    if run.eval.evaluate_base and not base_metrics and hooks and is_main_process():  # rank 0 writes (DDP)
        base_metrics = run_eval_hooks(hooks, EvalContext(model, tokenizer, out, prefix="base_"))
        write_json_atomic(base_file, base_metrics)

    # ---- train -----------------------------------------------------------------------------------------
    args = build_trl_args(
        RewardConfig, run.trainer, out, precision,
        max_length=None,  # over-long rows were handled above (data.overlong)
        center_rewards_coefficient=run.reward.center_rewards_coefficient,
    )
    trainer = RankedRewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        data_collator=RankedGroupCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[
            NonFiniteLossCallback(),
            JsonlLogCallback(out / LOG, run.stage),
            EvalHookCallback(hooks, tokenizer, out, run.eval.every_n_steps),
        ],
    )
    resume_from = find_resume_checkpoint(out) if run.trainer.resume else None
    if resume_from:
        print(f"resuming from {resume_from}")
    result = trainer.train(resume_from_checkpoint=resume_from)
    if not trainer.is_world_process_zero():
        return  # under DDP the weights are the same on every rank; rank 0 evaluates and saves them

    # ---- evaluate ----------------------------------------------------------------------------------------
    final = EvalContext(model, tokenizer, out, step=trainer.state.global_step)
    metrics = {**base_metrics, **run_eval_hooks(hooks, final)}
    metrics.update({
        "train_loss": result.training_loss,
        "train_steps": trainer.state.global_step,
        "train_runtime_s": result.metrics["train_runtime"],
        **train_report.as_metrics("train"),
        **data.as_metrics(),
    })

    # ---- save ----------------------------------------------------------------------------------------------
    model.save_pretrained(out / ADAPTER)  # LoRA weights + the score head (modules_to_save)
    tokenizer.save_pretrained(out / ADAPTER)

    # ---- read the trunk's likelihood too: fit the score mix on the training pairs, as consumers load it ------
    if run.reward.likelihood == "fit":
        del trainer, model, final  # the classifier has no output layer; the causal LM that replaces it does
        gc.collect()
        scorer = load_reward_on_causal_lm(StageRun.open(out, stage="reward"), batch_size=run.eval.batch_size)
        # fitted on the pairs training saw: not on groups that data.overlong=skip left out
        mix, mix_metrics = fit_mix_on_pairs(scorer, trained_reward_pairs(data.train, train_report), data.held_out)
        save_score_mix(mix, out / ADAPTER)
        metrics.update(mix_metrics)  # pairwise_accuracy, mean_margin and mean_score are now the mixed score's
        print(f"score = {mix.head_weight:.3f} * head + {mix.likelihood_weight:.3f} * mean answer log-prob; held-out "
              f"pairwise accuracy {mix_metrics.get('pairwise_accuracy', float('nan')):.3f} (head alone "
              f"{mix_metrics.get('head_pairwise_accuracy', float('nan')):.3f})")
    finish_stage(out, run.stage, metrics, artefacts={"adapter": ADAPTER, "base_model": run.model.name_or_path},
                 config_hash=config_hash)


if __name__ == "__main__":
    main()
