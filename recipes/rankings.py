"""On-policy rankings: InstructGPT's labelling step, with a judge (or a person) as the labeler.

    lightalign run rankings rankings.sft_adapter=SFT_RUN_DIR [overrides]   # or: python recipes/rankings.py
    lightalign run rankings model=tiny-random rankings.num_prompts=8 hydra.run.dir=DIR
    lightalign run rankings judge=none rankings.human=my_rankings.jsonl    # rankings written by `lightalign rank`

For each of data.train's prompts it samples ``rankings.k`` answers from the model being aligned (the SFT
stage's adapter in a pipeline; the base model without ``rankings.sft_adapter``), scores them with the
``judge`` component (any ``(prompts, answers) -> scores`` callable; the demo's gold judge by default) and
ranks them, best first, with equal scores tied. Labelers ranking *the model's own answers* is what made
InstructGPT's reward model read the mistakes the policy actually makes. Sampling is batched (``batch_size``
answers per generate call) and resumable: each judged prompt is one fsynced line of DIR/judged.jsonl, and a
re-run skips them. On the held-out prompts (data.prompts) it measures the headroom RL can win: the greedy
answers' gold score and correct fraction against pass@k, the share with a correct answer among k samples.

Writes DIR/rankings.jsonl (the reward stage's ranking format, plus each row's scores, model and sampling
settings; rows where every answer tied are left out and counted), DIR/pairs.jsonl (DPO's pairs: every ranked
pair, or with ``rankings.pair_margin`` those whose scores differ by at least that much), DIR/judged.jsonl,
DIR/samples.jsonl (greedy held-out answers), DIR/metrics.json.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from lightalign.config import register_configs
from lightalign.data import load_prompt_examples
from lightalign.errors import report_errors
from lightalign.eval import EvalContext, SampleAnswers, run_eval_hooks
from lightalign.eval.headroom import PassAtK
from lightalign.models.trained import ModelSource, load_model_source
from lightalign.rankings import has_preference, human_rankings, ranked_pairs, sample_and_judge
from lightalign.rundir import SAMPLES, StageRun, write_jsonl_atomic
from lightalign.stage import finish_stage, start_stage

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="rankings")
@report_errors
def main(cfg: DictConfig) -> None:
    run, out, config_hash = start_stage(cfg)  # typed config, run directory, config.yaml, seed
    opts = run.rankings
    # a judge, or a person's rankings (rankings.human): the schema has checked there is one
    judge = hydra.utils.instantiate(run.judge) if run.judge and run.judge.get("_target_") else None

    # ---- setup: prompts and the model whose answers are ranked -----------------------------------------
    prompts = load_prompt_examples(run.data.train, limit=opts.num_prompts)
    held_out = []
    if opts.headroom and judge is not None and run.data.prompts and run.eval.num_prompts > 0:
        held_out = load_prompt_examples(run.data.prompts, limit=run.eval.num_prompts)
    model = tokenizer = None
    if opts.human is None or held_out:
        if opts.sft_adapter:
            source = ModelSource.of_run(StageRun.open(opts.sft_adapter, expected_base=run.model.name_or_path))
        else:
            source = ModelSource.of_settings(run.model, run.quant, run.trainer.precision)
        print(f"rankings: answers from {source.describe()}")
        model, tokenizer = load_model_source(source)

    # ---- rank: k sampled answers per prompt, judged (or a person's rankings) ----------------------------
    if opts.human is not None:
        rows = human_rankings(Path(opts.human), prompts)
    else:
        rows = sample_and_judge(
            model, tokenizer, prompts, judge, out / "judged.jsonl", k=opts.k, temperature=opts.temperature,
            top_p=opts.top_p, max_new_tokens=opts.max_new_tokens, batch_size=opts.batch_size,
            seed=run.trainer.seed, model_name=source.describe(), dense_weights=run.generation.dense_weights,
        )
    ranked = [row for row in rows if has_preference(row)]
    pairs = [pair for row in ranked for pair in ranked_pairs(row)]
    # DPO's pairs: with rankings.pair_margin only those whose judge scores differ by at least that much
    dpo_pairs = [pair for row in ranked for pair in ranked_pairs(row, opts.pair_margin)]
    print(f"rankings: {len(ranked)} of {len(rows)} prompts ranked, {len(pairs)} pairs; "
          f"{len(rows) - len(ranked)} prompts where every answer tied are left out")
    if opts.pair_margin > 0:
        print(f"rankings: {len(dpo_pairs)} of the {len(pairs)} pairs differ in score by >= {opts.pair_margin} "
              "(rankings.pair_margin): DPO's pairs")
        if pairs and not dpo_pairs:  # DPO would stop on an empty file without saying why
            print(f"rankings: warning: no pair differs by >= {opts.pair_margin}, so pairs.jsonl is empty and DPO "
                  "has nothing to train on; lower rankings.pair_margin (0: every pair)")
    metrics = {
        "rankings_prompts": len(rows),
        "rankings_ranked": len(ranked),
        "rankings_all_tied": len(rows) - len(ranked),
        "rankings_pairs": len(pairs),
        "rankings_dpo_pairs": len(dpo_pairs),
        "rankings_distinct_answers": sum(len(r["responses"]) for r in rows) / max(len(rows), 1),
    }
    if rows and all("scores" in r for r in rows):
        metrics["rankings_mean_score"] = sum(sum(r["scores"]) / len(r["scores"]) for r in rows) / len(rows)
        metrics["rankings_best_score"] = sum(max(r["scores"]) for r in rows) / len(rows)

    # ---- evaluate: the headroom on held-out prompts (greedy vs pass@k) ---------------------------------
    if held_out:
        hooks = [
            SampleAnswers(held_out, {"gold": judge}, max_new_tokens=run.eval.max_new_tokens,
                          batch_size=run.eval.batch_size, dense_weights=run.generation.dense_weights),
            PassAtK(held_out, judge, k=opts.k, temperature=opts.temperature, top_p=opts.top_p,
                    max_new_tokens=opts.max_new_tokens, batch_size=opts.batch_size, seed=run.trainer.seed,
                    dense_weights=run.generation.dense_weights),
        ]
        metrics.update(run_eval_hooks(hooks, EvalContext(model, tokenizer, out)))

    # ---- save ------------------------------------------------------------------------------------------------
    write_jsonl_atomic(out / "rankings.jsonl", ranked)
    write_jsonl_atomic(out / "pairs.jsonl", dpo_pairs)
    artefacts = {"rankings": "rankings.jsonl", "pairs": "pairs.jsonl", "base_model": run.model.name_or_path}
    if held_out:
        artefacts["samples"] = SAMPLES
    finish_stage(out, run.stage, metrics, artefacts=artefacts, config_hash=config_hash)


if __name__ == "__main__":
    main()
