"""Supervised fine-tuning (SFT) with QLoRA: the first stage of the InstructGPT recipe.

    lightalign run sft [overrides]            # or: python recipes/sft.py [overrides]
    lightalign run sft model=tiny-random trainer.max_steps=2 hydra.run.dir=DIR
    lightalign run pretrain                   # plain text, loss on every token, packed rows

Supports: any causal LM (``model=...`` or ``model.name_or_path=...``), 4-bit NF4 or full-precision base
(``quant=nf4|none``), LoRA on all linear layers, completion-only loss on conversational / prompt-completion
/ Alpaca data, plain-text pre-training, padding-free packing (``trainer.packing=true``), resume from the
last checkpoint in DIR. Built on TRL's ``SFTTrainer``; only the adapter is trained and saved.

Writes DIR/adapter/, DIR/metrics.json (base_* = before training), DIR/samples.jsonl, DIR/logs/.
"""

from __future__ import annotations

import hydra
from datasets import Dataset
from omegaconf import DictConfig
from trl import SFTConfig, SFTTrainer

from lightalign.config import register_configs
from lightalign.data import load_lm_examples, load_prompt_examples
from lightalign.data.collators import LMCollator
from lightalign.data.tokenize import tokenize_lm_examples
from lightalign.distributed import is_main_process
from lightalign.errors import report_errors
from lightalign.eval import EvalContext, EvalHookCallback, HeldOutLoss, SampleAnswers, run_eval_hooks
from lightalign.models import apply_lora, install_chunked_lm_head, resolve_precision, upcast_trainable
from lightalign.models.trained import ModelSource
from lightalign.rundir import ADAPTER, LOG, read_json, write_json_atomic
from lightalign.stage import finish_stage, start_stage
from lightalign.training import (
    JsonlLogCallback,
    NonFiniteLossCallback,
    build_trl_args,
    find_resume_checkpoint,
)

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="sft")
@report_errors
def main(cfg: DictConfig) -> None:
    run, out, config_hash = start_stage(cfg)  # typed config, run directory, config.yaml, seed
    precision = resolve_precision(run.trainer.precision)
    source = ModelSource.of_settings(run.model, run.quant, run.trainer.precision)  # the base model

    # ---- setup: tokenizer, data, model -------------------------------------------------------------
    tokenizer = source.load_tokenizer()
    train_rows, train_report = tokenize_lm_examples(
        tokenizer,
        load_lm_examples(run.data.train, fmt=run.data.format, split=run.data.split, limit=run.data.limit),
        max_length=run.data.max_length,
        overlong=run.data.overlong,
    )
    if not run.sft.completion_only:
        train_rows = [{"input_ids": r["input_ids"], "labels": list(r["input_ids"])} for r in train_rows]
    print(f"train rows: {train_report.kept} kept, {train_report.truncated} truncated, {train_report.skipped} skipped")
    eval_rows, eval_report = [], None
    if run.data.eval:
        eval_rows, eval_report = tokenize_lm_examples(
            tokenizer,
            load_lm_examples(run.data.eval, fmt=run.data.format, limit=run.data.eval_limit),
            max_length=run.data.max_length,
            overlong="truncate",
        )
    prompts = []
    if run.data.prompts and run.eval.num_prompts > 0:
        prompts = load_prompt_examples(run.data.prompts, limit=run.eval.num_prompts)

    model = source.load_base()
    model = apply_lora(model, run.lora, gradient_checkpointing=run.trainer.gradient_checkpointing)
    model.print_trainable_parameters()

    judge = hydra.utils.instantiate(run.eval.judge) if run.eval.judge else None
    hooks = []
    if eval_rows:
        hooks.append(HeldOutLoss(eval_rows, tokenizer.pad_token_id, batch_size=run.eval.batch_size))
    if prompts:
        hooks.append(
            SampleAnswers(
                prompts,
                {"gold": judge} if judge else {},
                max_new_tokens=run.eval.max_new_tokens,
                batch_size=run.eval.batch_size,
                dense_weights=run.generation.dense_weights,
            )
        )

    # ---- the base model's scores, for comparison (kept across resumes) -------------------------------
    base_file = out / "evals" / "base.json"
    base_metrics = read_json(base_file) or {}
    # Under DDP (`torchrun -m lightalign run sft`) rank 0 alone evaluates and writes the run directory.
    if run.eval.evaluate_base and not base_metrics and hooks and is_main_process():
        with model.disable_adapter():
            base_metrics = run_eval_hooks(hooks, EvalContext(model, tokenizer, out, prefix="base_"))
        write_json_atomic(base_file, base_metrics)

    # ---- train -----------------------------------------------------------------------------------------
    args = build_trl_args(
        SFTConfig,
        run.trainer,
        out,
        precision,
        dataset_kwargs={"skip_prepare_dataset": True},  # tokenised above by the shared data layer
        max_length=None,
        packing=False,  # our collator packs (padding-free) when trainer.packing=true
        include_num_input_tokens_seen="non_padding",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        data_collator=LMCollator(tokenizer.pad_token_id, padding_free=run.trainer.packing),
        processing_class=tokenizer,
        callbacks=[
            NonFiniteLossCallback(),
            JsonlLogCallback(out / LOG, run.stage),
            EvalHookCallback(hooks, tokenizer, out, run.eval.every_n_steps),
        ],
    )
    # TRL casts QLoRA adapters to bf16; fp32 adapters cost little, learn small steps and resume bit-exactly.
    upcast_trainable(trainer.model)
    # the loss from the labelled positions' hidden states, a chunk at a time (no full-vocabulary logits)
    install_chunked_lm_head(trainer.model, run.trainer.chunked_logprobs)
    resume_from = find_resume_checkpoint(out) if run.trainer.resume else None
    if resume_from:
        print(f"resuming from {resume_from}")
    result = trainer.train(resume_from_checkpoint=resume_from)
    if not trainer.is_world_process_zero():
        return  # the weights are the same on every rank; rank 0 evaluates and saves them

    # ---- evaluate ----------------------------------------------------------------------------------------
    final = EvalContext(model, tokenizer, out, step=trainer.state.global_step)
    metrics = {**base_metrics, **run_eval_hooks(hooks, final)}
    tokens = trainer.state.num_input_tokens_seen
    metrics.update(
        {
            "train_loss": result.training_loss,
            "train_steps": trainer.state.global_step,
            "train_runtime_s": result.metrics["train_runtime"],
            "train_tokens": tokens,
            "train_tokens_per_second": tokens / max(result.metrics["train_runtime"], 1e-9),
            **train_report.as_metrics("train"),
        }
    )
    if eval_report:
        metrics.update(eval_report.as_metrics("eval"))

    # ---- save ----------------------------------------------------------------------------------------------
    model.save_pretrained(out / ADAPTER)
    tokenizer.save_pretrained(out / ADAPTER)
    finish_stage(out, run.stage, metrics, artefacts={"adapter": ADAPTER, "base_model": run.model.name_or_path},
                 config_hash=config_hash)


if __name__ == "__main__":
    main()
