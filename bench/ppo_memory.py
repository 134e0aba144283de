"""Peak memory of one PPO update: four roles on ONE shared 4-bit base vs four separately loaded models.

    python bench/ppo_memory.py                                   # SmolLM2-135M-Instruct, 8 rollouts x 48 tokens
    python bench/ppo_memory.py --model lightalign:tiny-random    # a quick check of the script itself
    python bench/ppo_memory.py --sft SFT_ADAPTER --reward REWARD_ADAPTER   # trained adapters (same numbers)

Each variant runs in a fresh subprocess, alone (two torch processes on the same cores slow each other down),
and reports that process's peak resident memory (``ru_maxrss``) and the seconds of one PPO update:

- ``shared``: lightalign's layout, one (4-bit) base with policy, reference, value and reward as LoRA adapters
  (:func:`lightalign.ppo.roles.load_shared_base_roles`);
- ``separate-4bit``: the four roles as four models, each with its own 4-bit base (policy: base + SFT adapter,
  trainable; reference: base + SFT adapter, frozen; value: base + reward adapter and head, trainable;
  reward: sequence-classification base + reward adapter, frozen);
- ``separate-fp32``: the same four models without quantisation (how peers keep the frozen roles).

Every variant runs the same code (:func:`~lightalign.ppo.rollout.collect_rollout` and
:func:`~lightalign.ppo.update.ppo_update`): the separate models sit behind the interface of
:class:`~lightalign.ppo.roles.SharedBaseRoles`. Memory does not depend on the adapters' values, so by default
random LoRA adapters of the default shape (r=16, all linear layers) stand in for the SFT and reward stages.
The peak includes the interpreter and libraries (``import_mb``, the same in every variant).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("shared", "separate-4bit", "separate-fp32")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def make_adapters(model_name: str, folder: Path) -> tuple[Path, Path]:
    """Random SFT (causal LM) and reward (sequence classification + score head) LoRA adapters, r=16."""
    import torch
    from peft import get_peft_model

    from lightalign.models import LoraSettings, load_base_model
    from lightalign.models.adapters import build_lora_config

    torch.manual_seed(0)
    settings = LoraSettings(r=16, alpha=32, dropout=0.0)
    sft = get_peft_model(load_base_model(model_name, None), build_lora_config(settings))
    sft.save_pretrained(folder / "sft")
    del sft
    reward = get_peft_model(load_base_model(model_name, None, head="score"),
                            build_lora_config(settings, task_type="SEQ_CLS", modules_to_save=["score"]))
    reward.save_pretrained(folder / "reward")
    return folder / "sft", folder / "reward"


class SeparateRoles:
    """Four models behind the methods of ``SharedBaseRoles`` that the rollout and the update call."""

    def __init__(self, model_name: str, sft: Path, reward: Path, quantization) -> None:
        import torch
        from peft import PeftModel

        from lightalign.models import load_base_model, resolve_precision
        from lightalign.models.modes import disable_dropout
        from lightalign.reward_model import load_score_head

        compute = resolve_precision("auto").compute_dtype

        def causal_lm(adapter: Path, trainable: bool) -> PeftModel:
            base = load_base_model(model_name, quantization, compute_dtype=compute)
            return PeftModel.from_pretrained(base, adapter, is_trainable=trainable)

        self.policy = causal_lm(sft, True)
        self.ref = causal_lm(sft, False)
        self.value = causal_lm(reward, True)  # the reward adapter's trunk; its score head is read below
        self.value_head = load_score_head(reward)
        self.reward = PeftModel.from_pretrained(
            load_base_model(model_name, quantization, head="score", compute_dtype=compute), reward)
        self.model = torch.nn.ModuleList([self.policy, self.ref, self.value, self.reward, self.value_head])
        self.pad_token_id = self.reward.config.pad_token_id  # what SharedBaseRewardModel pads with
        for part in self.model:
            disable_dropout(part)

    def trainable_parameters(self) -> list:
        return [p for m in (self.policy, self.value, self.value_head) for p in m.parameters() if p.requires_grad]

    def activate_policy(self):
        return self.policy

    def policy_logits(self, input_ids, attention_mask, start, *, temperature):
        from lightalign.generation import response_logits

        return response_logits(self.policy, input_ids, attention_mask, start, temperature)

    def policy_scores(self, input_ids, attention_mask, start, *, temperature):
        from lightalign.generation import response_token_scores

        return response_token_scores(self.policy, input_ids, attention_mask, start, temperature)

    def policy_logprobs(self, input_ids, attention_mask, start, *, temperature):
        return self.policy_scores(input_ids, attention_mask, start, temperature=temperature).log_probs

    def ref_logprobs(self, input_ids, attention_mask, start, *, temperature):
        import torch

        from lightalign.generation import response_logprobs

        with torch.no_grad():
            return response_logprobs(self.ref, input_ids, attention_mask, start, temperature)

    def values(self, input_ids, attention_mask, start):
        from lightalign.generation import position_ids_from_mask

        decoder = self.value.get_base_model().get_decoder()
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state
        return self.value_head(hidden[:, start - 1 : -1].float()).squeeze(-1)

    def reward_scores(self, input_ids, attention_mask, answer_starts=None):  # reads no likelihood
        import torch

        with torch.no_grad():
            return self.reward(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()

    def generate(self, prompt_ids, prompt_mask, **kwargs):
        from lightalign.generation import sample_responses

        return sample_responses(self.policy, prompt_ids, prompt_mask, **kwargs)


def run_variant(variant: str, model_name: str, sft: Path, reward: Path, rollouts: int, new_tokens: int) -> dict:
    """Load the roles as ``variant`` says, run one rollout and one PPO epoch, report memory and time."""
    import torch

    from lightalign.config.schema import PPOSettings
    from lightalign.data import load_prompt_examples
    from lightalign.data.tokenize import tokenize_prompts
    from lightalign.models import Quantization, load_base_model, load_tokenizer, resolve_precision
    from lightalign.ppo.roles import load_shared_base_roles
    from lightalign.ppo.rollout import collect_rollout
    from lightalign.ppo.update import ppo_update
    from lightalign.reward_model import SharedBaseRewardModel

    import_mb = peak_rss_mb()
    torch.manual_seed(0)
    tokenizer = load_tokenizer(model_name)
    settings = PPOSettings(batch_size=rollouts, max_new_tokens=new_tokens, num_ppo_epochs=1)
    started = time.perf_counter()
    if variant == "shared":
        compute = resolve_precision("auto").compute_dtype
        roles = load_shared_base_roles(load_base_model(model_name, Quantization(), compute_dtype=compute), sft, reward)
    else:
        quantization = Quantization(load_in_4bit=variant == "separate-4bit")
        roles = SeparateRoles(model_name, sft, reward, quantization)
    load_s = time.perf_counter() - started
    loaded_mb = peak_rss_mb()
    prompts, ids, _ = tokenize_prompts(tokenizer, load_prompt_examples("demo:prompts", limit=rollouts), max_length=256)
    reward_fn = SharedBaseRewardModel(roles, tokenizer)  # duck-typed: roles.pad_token_id, roles.reward_scores
    optimizer = torch.optim.AdamW(roles.trainable_parameters(), lr=1e-5)
    started = time.perf_counter()
    rollout = collect_rollout(roles, tokenizer, prompts, ids, reward_fn, settings, kl_coef=0.05, forward_batch_size=4)
    ppo_update(roles, optimizer, rollout, settings, minibatch_size=4, micro_batch_size=4, progress=False)
    return {"variant": variant, "peak_rss_mb": round(peak_rss_mb(), 1), "import_mb": round(import_mb, 1),
            "after_load_mb": round(loaded_mb, 1), "load_s": round(load_s, 1),
            "update_s": round(time.perf_counter() - started, 1), "answer_tokens": rollout.stats()["answer_tokens"],
            "trainable_params": sum(p.numel() for p in roles.trainable_parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lightalign:smollm2-135m-instruct")
    parser.add_argument("--sft", type=Path, help="an SFT adapter folder (default: a random one)")
    parser.add_argument("--reward", type=Path, help="a reward adapter folder (default: a random one)")
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # set in the child processes
    args = parser.parse_args()

    if args.variant:  # child: measure one variant, print one JSON line
        print(json.dumps(run_variant(args.variant, args.model, args.sft, args.reward, args.rollouts, args.new_tokens)))
        return

    with tempfile.TemporaryDirectory(prefix="ppo-memory-") as tmp:
        sft, reward = args.sft, args.reward
        if sft is None or reward is None:
            made_sft, made_reward = make_adapters(args.model, Path(tmp))
            sft, reward = sft or made_sft, reward or made_reward
        results = []
        for variant in args.variants:
            command = [sys.executable, __file__, "--variant", variant, "--model", args.model, "--sft", str(sft),
                       "--reward", str(reward), "--rollouts", str(args.rollouts), "--new-tokens", str(args.new_tokens)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"variant {variant} failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)

    print(f"\n{args.model}, {args.rollouts} rollouts x {args.new_tokens} new tokens, one PPO epoch\n")
    print("| variant | peak RSS (MB) | above imports (MB) | load (s) | one update (s) |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['variant']} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['import_mb']:.0f} | {r['load_s']} "
              f"| {r['update_s']} |")
    shared = next((r for r in results if r["variant"] == "shared"), None)
    if shared:
        for r in results:
            if r is not shared:
                total = r["peak_rss_mb"] / shared["peak_rss_mb"]
                above = (r["peak_rss_mb"] - r["import_mb"]) / (shared["peak_rss_mb"] - shared["import_mb"])
                print(f"{r['variant']} / shared: {total:.2f}x peak RSS ({above:.2f}x above the imports)")


if __name__ == "__main__":
    main()
