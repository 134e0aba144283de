"""Direct preference optimisation (DPO) with QLoRA, from the SFT model: the alternative to reward + PPO.

    lightalign run dpo dpo.sft_adapter=SFT_RUN_DIR [overrides]     # or: python recipes/dpo.py [overrides]
    lightalign run dpo model=tiny-random trainer.max_steps=2 hydra.run.dir=DIR dpo.sft_adapter=SFT_DIR
    lightalign run dpo dpo.sft_adapter=SFT_DIR dpo.reward_model=REWARD_DIR dpo.loss_type=ipo dpo.beta=0.5

Supports: the preference formats of lightalign.data.preference (rankings expand to all their pairs; every
pair counts once: TRL's DPOTrainer has no per-pair weight); TRL's pairwise DPO losses (``dpo.loss_type``) and
``dpo.beta``; one 4-bit copy of the base for policy and reference: with ``dpo.sft_adapter`` the policy trains
the SFT adapter further and the reference is a frozen copy of it (the SFT model), without it a fresh adapter
against the base (lightalign.models.roles); resume from the last checkpoint in DIR.

Writes DIR/adapter/ (the policy adapter), DIR/metrics.json (implicit_reward_* on held-out pairs, gold_score; with
``dpo.reward_model`` rm_score; win_rate_{gold,rm} against the reference's answers to the same prompts, whose own
scores are sft_* (base_* without an SFT adapter); kl_to_sft, the policy's KL to the reference on its own sampled
answers, as PPO reports it (kl_to_base without an SFT adapter)), DIR/samples.jsonl, DIR/sft_samples.jsonl, DIR/logs/.
"""

from __future__ import annotations

import hydra
from datasets import Dataset
from omegaconf import DictConfig
from trl import DPOConfig

from lightalign.config import register_configs
from lightalign.data import load_preference_splits, load_prompt_examples
from lightalign.data.tokenize import tokenize_preference_pairs
from lightalign.errors import report_errors
from lightalign.eval import (
    EvalContext,
    EvalHookCallback,
    ImplicitRewardAccuracy,
    reference_hooks,
    run_eval_hooks,
)
from lightalign.models import install_chunked_lm_head, resolve_precision
from lightalign.models.roles import load_policy, save_policy, set_up_reference
from lightalign.models.trained import ModelSource
from lightalign.reward_model import RewardModel
from lightalign.rundir import ADAPTER, LOG, StageRun
from lightalign.stage import finish_stage, start_stage
from lightalign.trainers import TokenizedDPOTrainer
from lightalign.training import JsonlLogCallback, NonFiniteLossCallback, build_trl_args, find_resume_checkpoint

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="dpo")
@report_errors
def main(cfg: DictConfig) -> None:
    run, out, config_hash = start_stage(cfg)  # typed config, run directory, config.yaml, seed
    precision = resolve_precision(run.trainer.precision)
    source = ModelSource.of_settings(run.model, run.quant, run.trainer.precision)  # the base model
    sft = StageRun.open(run.dpo.sft_adapter, expected_base=run.model.name_or_path) if run.dpo.sft_adapter else None

    # ---- setup: tokenizer, data, model -------------------------------------------------------------
    tokenizer = source.load_tokenizer()
    data = load_preference_splits(
        run.data.train, run.data.eval, fmt=run.data.format, split=run.data.split, limit=run.data.limit,
        eval_limit=run.data.eval_limit, eval_fraction=run.data.eval_fraction, invalid=run.data.invalid,
        seed=run.trainer.seed,
    )
    print(f"train data: {data.train_report.summary()}; {len(data.held_out)} held-out pairs")
    train_rows, train_report = tokenize_preference_pairs(
        tokenizer, data.train, max_length=run.data.max_length, overlong=run.data.overlong
    )
    print(f"train pairs: {train_report.kept} kept, {train_report.truncated} truncated, {train_report.skipped} skipped")
    eval_rows, _ = tokenize_preference_pairs(tokenizer, data.held_out, max_length=run.data.max_length,
                                             overlong="truncate")
    prompts = []
    if run.data.prompts and run.eval.num_prompts > 0:
        prompts = load_prompt_examples(run.data.prompts, limit=run.eval.num_prompts)

    base = source.load_base()
    model, reference = load_policy(base, run.lora, sft_adapter=sft.adapter_dir if sft else None,
                                   gradient_checkpointing=run.trainer.gradient_checkpointing)
    print(f"policy: {'the SFT adapter ' + str(sft.adapter_dir) if sft else 'a fresh adapter'}; "
          f"reference: {'the SFT model (frozen copy of its adapter)' if reference == 'sft' else 'the base model'}")

    scorers = {}
    if run.eval.judge:
        scorers["gold"] = hydra.utils.instantiate(run.eval.judge)
    if run.dpo.reward_model:
        scorers["rm"] = RewardModel.load(run.dpo.reward_model, batch_size=run.eval.batch_size)
    hooks = []
    if eval_rows:
        hooks.append(ImplicitRewardAccuracy(eval_rows, run.dpo.beta, tokenizer.pad_token_id,
                                            batch_size=run.eval.batch_size))
    if prompts:
        # the policy's answers against the reference's (sft_* metrics, win rates) and its KL to it (kl_to_sft)
        hooks += reference_hooks(prompts, scorers, reference_name=reference, reference_samples=sft.samples if sft
                                 else None, compare=run.eval.evaluate_base, max_new_tokens=run.eval.max_new_tokens,
                                 batch_size=run.eval.batch_size,
                                 dense_weights=run.generation.dense_weights)

    # ---- train -----------------------------------------------------------------------------------------
    args = build_trl_args(
        DPOConfig, run.trainer, out, precision,
        beta=run.dpo.beta,
        # dpo.sft_weight > 0: TRL adds its "sft" loss (NLL of the chosen answer) with that weight (RPO)
        loss_type=[run.dpo.loss_type, "sft"] if run.dpo.sft_weight > 0 else [run.dpo.loss_type],
        loss_weights=[1.0, run.dpo.sft_weight] if run.dpo.sft_weight > 0 else None,
        max_length=None,  # over-long pairs were handled above (data.overlong)
    )
    trainer = TokenizedDPOTrainer(
        model=model,
        ref_model=None,  # the reference lives in the same model: one 4-bit copy of the base
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        processing_class=tokenizer,
        callbacks=[
            NonFiniteLossCallback(),
            JsonlLogCallback(out / LOG, run.stage),
            EvalHookCallback(hooks, tokenizer, out, run.eval.every_n_steps),
        ],
    )
    set_up_reference(model, reference)  # after TRL, which copies any adapter it is given to "ref"
    install_chunked_lm_head(trainer.model, run.trainer.chunked_logprobs)  # policy and reference log-probs
    resume_from = find_resume_checkpoint(out) if run.trainer.resume else None
    if resume_from:
        print(f"resuming from {resume_from}")
    result = trainer.train(resume_from_checkpoint=resume_from)
    if not trainer.is_world_process_zero():
        return  # under DDP the weights are the same on every rank; rank 0 evaluates and saves them

    # ---- evaluate ----------------------------------------------------------------------------------------
    final = EvalContext(model, tokenizer, out, step=trainer.state.global_step)
    metrics = run_eval_hooks(hooks, final)
    metrics.update({
        "train_loss": result.training_loss,
        "train_steps": trainer.state.global_step,
        "train_runtime_s": result.metrics["train_runtime"],
        **train_report.as_metrics("train"),
        **data.as_metrics(),
    })

    # ---- save ----------------------------------------------------------------------------------------------
    save_policy(model, out / ADAPTER)
    tokenizer.save_pretrained(out / ADAPTER)
    artefacts = {"adapter": ADAPTER, "base_model": run.model.name_or_path, "reference": reference}
    finish_stage(out, run.stage, metrics, artefacts=artefacts, config_hash=config_hash)


if __name__ == "__main__":
    main()
