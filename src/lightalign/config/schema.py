"""Typed schemas for every config group, registered in Hydra's ConfigStore.

Each primary config (``conf/sft.yaml`` ...) starts its defaults list with ``<stage>_schema``, so every
group option merges into a typed node: ``lora.r=abc`` or ``lora.rnak=8`` fails at compose time with
the key named. Defaults live here, once; YAML files hold only what differs.

Every check that needs nothing but the config lives here too, in the dataclasses' ``__post_init__``:
``OmegaConf.to_object`` builds them, so ``lightalign validate`` and a recipe's first line reject a bad value
before any data or model is read. This module imports no torch (a test checks): validating is instant.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from lightalign.errors import ConfigError

# The values each option takes (named in the error of a bad one); the module in brackets acts on them.
# data.format of the language-modelling stages (lightalign.data.formats) and of the preference stages
LM_FORMATS = ("auto", "messages", "conversations", "prompt_completion", "alpaca", "text")
PREFERENCE_FORMATS = ("auto", "pairs", "hh", "ranking")  # (lightalign.data.preference)
OVERLONG_POLICIES = ("error", "truncate", "skip")  # data.overlong (lightalign.data.tokenize)
INVALID_POLICIES = ("error", "skip")  # data.invalid (lightalign.data.preference)
PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # trainer.precision (lightalign.models.precision)
CHUNKED_LOGPROBS_MODES = ("auto", "on", "off")  # trainer.chunked_logprobs (lightalign.models.logprobs)
# trainer.report_to -> the package it needs (tensorboard is written through torch.utils.tensorboard)
REPORT_TO: dict[str, str | None] = {"none": None, "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
# dpo.loss_type: the pairwise losses of TRL 1.16's DPOTrainer that need nothing but beta (exo_pair needs label
# smoothing)
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "nca_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
                  "apo_zero", "apo_down", "discopop", "sigmoid_norm")
VALUE_INITS = ("auto", "reward", "fresh")  # ppo.value_init
REWARD_LIKELIHOOD = ("off", "fit")  # reward.likelihood (lightalign.score_mix)
KL_ESTIMATORS = ("k1", "k3")  # ppo.kl_estimator, grpo.kl_estimator (lightalign.rl.objectives)
GRPO_ADVANTAGES = ("grpo", "rloo", "dr_grpo")  # grpo.advantage (lightalign.grpo.advantages)
# grpo.loss_aggregation (lightalign.grpo.losses.aggregate_tokens); auto: constant for dr_grpo, else token
GRPO_AGGREGATIONS = ("auto", "token", "sequence", "constant")
DENSE_WEIGHTS = ("auto", "on", "off")  # generation.dense_weights (lightalign.generation)


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise :class:`ConfigError` naming ``key`` and the valid values unless ``value`` is one of ``choices``.

    Example:
        >>> check_choice("data.invalid", "ignore", INVALID_POLICIES)
        Traceback (most recent call last):
        ...
        lightalign.errors.ConfigError: data.invalid='ignore' is not one of error, skip
    """
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}")


def check_report_to(choice: str) -> None:
    """Raise :class:`ConfigError` unless ``choice`` is a known tracker whose package is installed.

    The package is looked up, not imported: only the chosen tracker is ever imported, by transformers'
    integration when training starts (lightalign.trackers).

    Example:
        >>> check_report_to("none")
        >>> check_report_to("comet")
        Traceback (most recent call last):
        ...
        lightalign.errors.ConfigError: trainer.report_to='comet' is not supported; valid: none, tensorboard, ...
    """
    if choice not in REPORT_TO:
        raise ConfigError(f"trainer.report_to={choice!r} is not supported; valid: {', '.join(REPORT_TO)}")
    package = REPORT_TO[choice]
    if package is not None and importlib.util.find_spec(package) is None:
        raise ConfigError(f"trainer.report_to={choice} needs the {package} package: pip install {package}")


@dataclass
class ModelSettings:
    """``model.*``: which base model. ``name_or_path`` is a Hub id, a local folder or ``lightalign:<name>``."""

    name_or_path: str = MISSING
    revision: str | None = None
    trust_remote_code: bool = False
    attn_implementation: str | None = "sdpa"


@dataclass
class Quantization:
    """How to quantise the frozen base weights (QLoRA). ``load_in_4bit=False`` means plain LoRA."""

    load_in_4bit: bool = True
    quant_type: str = "nf4"
    double_quant: bool = True


@dataclass
class LoraSettings:
    """LoRA hyper-parameters. ``target_modules=["all-linear"]`` adapts every linear layer but the head."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])


@dataclass
class TrainerSettings:
    """Optimisation settings shared by every stage (``trainer.*`` on the command line)."""

    max_steps: int = -1
    num_train_epochs: float = 1.0
    learning_rate: float = 2e-4
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.05
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 5
    save_steps: int = 50
    save_total_limit: int = 2
    seed: int = 0
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    gradient_checkpointing: bool = False
    packing: bool = False  # padding-free batches (one packed row per batch)
    # SFT/DPO log-probs through lightalign.models.logprobs instead of TRL's fused head: auto = on without CUDA
    chunked_logprobs: str = "auto"  # auto | on | off
    report_to: str = "none"  # none | tensorboard | wandb | mlflow (lightalign.trackers); metrics.jsonl always
    resume: bool = True  # continue from the last complete checkpoint in DIR/checkpoints

    def __post_init__(self) -> None:
        check_choice("trainer.precision", self.precision, PRECISIONS)
        check_choice("trainer.chunked_logprobs", self.chunked_logprobs, CHUNKED_LOGPROBS_MODES)
        check_report_to(self.report_to)


def check_prompt_room(max_length: int, max_new_tokens: int, key: str) -> None:
    """Raise :class:`ConfigError` unless ``data.max_length`` leaves at least one prompt token beside answers of
    ``max_new_tokens`` (named by ``key``): sampling stages cut prompts to the difference."""
    if max_length - max_new_tokens < 1:
        raise ConfigError(f"data.max_length={max_length} leaves no room for prompts of answers of "
                          f"{key}={max_new_tokens}")


def optimizer_batch(trainer: TrainerSettings) -> int:
    """Sampled answers per optimiser step: ``trainer.per_device_train_batch_size * gradient_accumulation_steps``."""
    return trainer.per_device_train_batch_size * trainer.gradient_accumulation_steps


@dataclass
class DataSettings:
    """``data.*``: sources are files, ``demo:<split>`` or Hugging Face dataset ids (see lightalign.data)."""

    train: str = MISSING
    eval: str | None = None  # held-out rows for loss/accuracy
    prompts: str | None = None  # fixed prompts answered into samples.jsonl
    format: str = "auto"
    split: str = "train"
    max_length: int = 512
    overlong: str = "error"  # error | truncate | skip (counted in metrics.json)
    limit: int | None = None  # use at most this many training rows
    eval_limit: int | None = 64

    FORMATS: ClassVar[tuple[str, ...]] = LM_FORMATS  # the data.format values of this kind of stage

    def __post_init__(self) -> None:
        if self.format not in self.FORMATS:
            raise ConfigError(f"data.format: unknown data format {self.format!r}; valid: {', '.join(self.FORMATS)}")
        check_choice("data.overlong", self.overlong, OVERLONG_POLICIES)


@dataclass
class EvalSettings:
    """``eval.*``: the shared eval hooks, run at the end of a stage and every ``every_n_steps``."""

    every_n_steps: int = 0  # 0 = only at the end
    num_prompts: int = 32
    max_new_tokens: int = 48
    # One generate call for all 32 prompts: on a CPU a 4-bit decoding step costs about the same for 1 row as
    # for 32 (dequantising the weights dominates); measured 28 s vs 75 s at 8 (SmolLM2-135M, 2 cores).
    batch_size: int = 32
    evaluate_base: bool = True  # also score the model before training (base_* metrics)
    # (prompts, answers) -> scores; any callable named by _target_, e.g. lightalign.demo.GoldJudge
    judge: Any = None


@dataclass
class GenerationSettings:
    """``generation.*``: how every sampler of a stage decodes (eval answers, KL evals, PPO rollouts, rankings).

    ``dense_weights``: decode with a dense copy of the 4-bit base, dequantised once per sampling call, instead
    of dequantising every weight at every token (the same answers, faster on a CPU). ``auto``: on a CPU when
    the copy fits in memory; off on a GPU, where bitsandbytes' 4-bit kernels serve and the copy would cost the
    memory QLoRA saves. See docs/generation.md.
    """

    dense_weights: str = "auto"  # auto | on | off

    def __post_init__(self) -> None:
        check_choice("generation.dense_weights", self.dense_weights, DENSE_WEIGHTS)


@dataclass
class StageConfig:
    """What every stage has. Stage schemas add their own nodes."""

    stage: str = MISSING
    model: ModelSettings = field(default_factory=ModelSettings)
    quant: Quantization = field(default_factory=Quantization)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataSettings = field(default_factory=DataSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)


@dataclass
class SFTOptions:
    """``sft.*``: ``completion_only=false`` trains on prompt tokens too."""

    completion_only: bool = True


@dataclass
class SFTStageConfig(StageConfig):
    sft: SFTOptions = field(default_factory=SFTOptions)


@dataclass
class PreferenceDataSettings(DataSettings):
    """``data.*`` of the preference stages: formats ``auto|pairs|hh|ranking`` (see lightalign.data.preference)."""

    eval_fraction: float = 0.1  # when data.eval is null: hold out this share of the training prompts
    invalid: str = "error"  # error | skip: unusable preference rows (skips are counted in metrics.json)

    FORMATS: ClassVar[tuple[str, ...]] = PREFERENCE_FORMATS

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("data.invalid", self.invalid, INVALID_POLICIES)
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"data.eval_fraction={self.eval_fraction} must be in [0, 1)")


@dataclass
class RewardOptions:
    """``reward.*``: ``center_rewards_coefficient`` pulls scores towards 0 (useful as a PPO reward)."""

    center_rewards_coefficient: float | None = None
    # InstructGPT starts the reward model from the SFT model: an SFT run dir (or its adapter/) whose LoRA
    # weights the reward model's adapter starts from (its LoRA shape is used; lora.* is then ignored)
    init_adapter: str | None = None
    # fit: after training, the score becomes a * head + b * the answer's mean log-prob per token under the reward
    # model's own trunk, a and b fitted on the training pairs (lightalign.score_mix: the head alone reads form, the
    # trunk's likelihood knows facts); off: the head alone
    likelihood: str = "off"

    def __post_init__(self) -> None:
        check_choice("reward.likelihood", self.likelihood, REWARD_LIKELIHOOD)


@dataclass
class RewardStageConfig(StageConfig):
    data: PreferenceDataSettings = field(default_factory=PreferenceDataSettings)
    reward: RewardOptions = field(default_factory=RewardOptions)


@dataclass
class DPOOptions:
    """``dpo.*``: the loss, and where the policy starts (``sft_adapter``: an SFT run dir or its adapter/)."""

    beta: float = 0.1
    loss_type: str = "sigmoid"  # sigmoid | hinge | ipo | ... (DPO_LOSS_TYPES)
    # + sft_weight * the chosen answer's mean token NLL (RPO, Pang et al. 2024): without it DPO on pairs that differ
    # in correctness can lower both answers' likelihood and drift to long answers that never end
    sft_weight: float = 0.0
    sft_adapter: str | None = None  # the policy starts here and the reference is this SFT model; else the base
    reward_model: str | None = None  # a reward stage's run dir: its mean score and win rate vs the reference

    def __post_init__(self) -> None:
        check_choice("dpo.loss_type", self.loss_type, DPO_LOSS_TYPES)
        if not self.sft_weight >= 0:
            raise ConfigError(f"dpo.sft_weight={self.sft_weight}: the NLL weight must be >= 0 (0: DPO alone)")


@dataclass
class DPOStageConfig(StageConfig):
    data: PreferenceDataSettings = field(default_factory=PreferenceDataSettings)
    dpo: DPOOptions = field(default_factory=DPOOptions)


@dataclass
class PPOSettings:
    """What one PPO update does: sample, reward, estimate advantages, optimise (what lightalign.ppo's functions
    take; :class:`PPOOptions` adds where the roles come from).

    Defaults follow TRL's PPOv2 and "The N implementation details of RLHF with PPO" (Huang et al.).
    A PPO mini-batch (one optimiser step) is ``trainer.per_device_train_batch_size *
    trainer.gradient_accumulation_steps`` rollouts; ``batch_size`` must be a multiple of it.
    """

    # ---- rollouts
    batch_size: int = 8  # prompts sampled (one answer each) per PPO update
    max_new_tokens: int = 48
    temperature: float = 0.7  # the one source: sampling and every log-prob (policy, reference) use it
    top_k: int = 0  # 0 = off; on, the sampled distribution is no longer the scored one (ratio != 1)
    top_p: float = 1.0
    # ---- reward = score at the last token - kl_coef * KL(policy || reference) per token
    kl_coef: float = 0.05  # β; the starting β when kl_target is set
    kl_target: float | None = None  # set: adaptive β (Ziegler et al.) steering the per-answer KL (nats) here
    kl_horizon: float = 10000.0  # adaptive β: samples to close most of the gap
    kl_estimator: str = "k1"  # k1 = logp - ref_logp (unbiased) | k3 (>= 0, lower variance)
    missing_eos_penalty: float | None = None  # subtracted (after the clip) from answers cut off without EOS
    score_clip: float | None = None  # clip scores to [-c, c], before the missing-EOS penalty
    whiten_rewards: bool = False  # rescale per-token rewards to unit variance over the batch (mean kept)
    # ---- advantages and losses
    gamma: float = 1.0
    lam: float = 0.95
    num_ppo_epochs: int = 4  # passes over the rollout batch, in shuffled mini-batches
    clip_range: float = 0.2  # policy ratio clip ε
    clip_range_value: float = 0.2  # value clip, in reward units
    vf_coef: float = 0.1  # weight of the value loss
    entropy_coef: float = 0.0  # > 0 adds an entropy bonus

    def __post_init__(self) -> None:
        # OmegaConf.to_object builds this dataclass, so a bad choice fails at compose time, not after model load.
        if self.temperature <= 0:
            raise ConfigError(f"ppo.temperature={self.temperature} must be > 0")
        check_choice("ppo.kl_estimator", self.kl_estimator, KL_ESTIMATORS)


@dataclass
class PPOOptions(PPOSettings):
    """``ppo.*``: PPO's hyper-parameters (see PPOSettings), where its roles come from, and the SFT loss mixed in.

    The reward is ``ppo.reward_model`` (a reward stage's run dir, run on the shared base) or the top-level
    ``reward`` component (any ``(prompts, answers) -> scores`` callable): exactly one of the two.
    """

    sft_adapter: str | None = None  # SFT run dir or adapter folder: the policy starts here, the reference is it
    reward_model: str | None = None  # a reward stage's run dir
    value_init: str = "auto"  # auto (reward if there is a reward model, else fresh) | reward | fresh
    # weight of the SFT loss on data.train's demonstrations added to every optimiser step of the policy
    # (InstructGPT's PPO-ptx, against the alignment tax: skills that no sampled reward defends); 0: off. The
    # same name as dpo.sft_weight and grpo.sft_weight; data.train must then hold dialogues. Here, not in
    # PPOSettings: the recipe passes it to ppo_update with the demonstrations it weighs, as GRPO's does.
    sft_weight: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("ppo.value_init", self.value_init, VALUE_INITS)
        if not (math.isfinite(self.sft_weight) and self.sft_weight >= 0):
            raise ConfigError(f"ppo.sft_weight={self.sft_weight}: give a finite weight >= 0 (0: off)")


@dataclass
class PPOStageConfig(StageConfig):
    ppo: PPOOptions = field(default_factory=PPOOptions)
    # (prompts, answers) -> scores named by _target_ (conf/reward/*.yaml), e.g. lightalign.demo.GoldJudge
    reward: Any = None

    def __post_init__(self) -> None:
        if bool(self.ppo.reward_model) == bool((self.reward or {}).get("_target_")):
            raise ConfigError("set exactly one reward: ppo.reward_model=REWARD_RUN_DIR (a reward stage) or a callable "
                              "with reward=gold_judge / reward._target_=pkg.fn")
        minibatch = optimizer_batch(self.trainer)
        if self.ppo.batch_size % minibatch:
            raise ConfigError(f"ppo.batch_size={self.ppo.batch_size} must be a multiple of trainer."
                              f"per_device_train_batch_size * trainer.gradient_accumulation_steps = {minibatch}")
        check_prompt_room(self.data.max_length, self.ppo.max_new_tokens, "ppo.max_new_tokens")


@dataclass
class RankingsOptions:
    """``rankings.*``: whose answers are ranked, how they are sampled, and (optionally) a person's rankings.

    ``k`` answers per prompt are sampled from ``sft_adapter`` (a stage's run dir or adapter; null = the base
    model) at ``temperature``/``top_p`` and ranked by the ``judge`` component; with ``human`` set, the
    rankings a person wrote with ``lightalign rank`` for the same prompts are used instead of a judge.
    """

    sft_adapter: str | None = None
    k: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 24
    num_prompts: int | None = None  # rank at most this many of data.train's prompts
    batch_size: int = 64  # answers per generate call
    human: str | None = None  # a `lightalign rank` output file: its rankings instead of the judge's
    headroom: bool = True  # also measure greedy correctness and pass@k on the held-out prompts (data.prompts)
    # pairs.jsonl (DPO's pairs) keeps only pairs whose judge scores differ by at least this much; 0: every pair
    pair_margin: float = 0.0

    def __post_init__(self) -> None:
        if not 2 <= self.k <= 32:
            raise ConfigError(f"rankings.k={self.k}: rank between 2 and 32 answers per prompt")
        if not self.temperature > 0:
            raise ConfigError(f"rankings.temperature={self.temperature}: sampling needs a temperature > 0")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"rankings.top_p={self.top_p}: give a value in (0, 1]")
        for key in ("max_new_tokens", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"rankings.{key}={getattr(self, key)}: give a positive number")
        if self.num_prompts is not None and self.num_prompts < 1:
            raise ConfigError(f"rankings.num_prompts={self.num_prompts}: give a positive number or null (all)")
        if not self.pair_margin >= 0:
            raise ConfigError(f"rankings.pair_margin={self.pair_margin}: give a score gap >= 0 (0: every pair)")
        if self.pair_margin > 0 and self.human is not None:
            raise ConfigError(f"rankings.pair_margin={self.pair_margin}: a person's rankings have no scores to take "
                              "a margin of; set rankings.pair_margin=0 with rankings.human")


@dataclass
class RankingsStageConfig(StageConfig):
    rankings: RankingsOptions = field(default_factory=RankingsOptions)
    # (prompts, answers) -> scores named by _target_ (conf/judge/*.yaml), e.g. lightalign.demo.GoldJudge
    judge: Any = None

    def __post_init__(self) -> None:
        if not (self.judge and self.judge.get("_target_")) and self.rankings.human is None:
            raise ConfigError("rank with a judge (judge=gold_judge or judge._target_=pkg.fn) or a person's rankings "
                              "(judge=none rankings.human=FILE from `lightalign rank`)")


@dataclass
class GRPOOptions:
    """``grpo.*``: GRPO's hyper-parameters and where the policy starts (see lightalign.grpo and docs/grpo.md).

    Per step: ``batch_size`` prompts, ``group_size`` answers each, scored by the reward (the ``rewards`` parts
    and/or ``reward_model``); advantages within each prompt's group; ``num_iterations`` passes of the clipped
    ratio loss (+ ``beta``·KL to the reference) over the answers in mini-batches of
    ``trainer.per_device_train_batch_size * trainer.gradient_accumulation_steps``.
    """

    sft_adapter: str | None = None  # SFT run dir or adapter folder: the policy starts here, the reference is it
    reward_model: str | None = None  # a reward stage's run dir: its model is the reward part "rm"
    reward_model_weight: float = 1.0
    # ---- sampling
    batch_size: int = 8  # prompts per step
    group_size: int = 4  # G: answers sampled per prompt
    max_new_tokens: int = 48
    temperature: float = 1.0  # the one source: sampling and every log-prob (policy, reference) use it
    top_p: float = 1.0
    # ---- advantages and loss
    advantage: str = "grpo"  # grpo (mean/std) | rloo (leave-one-out) | dr_grpo (mean only)
    scale_eps: float = 1e-4  # grpo: added to the group's std
    loss_aggregation: str = "auto"  # token | sequence | constant | auto (constant for dr_grpo, else token)
    clip_range: float = 0.2  # ε of the ratio clip
    beta: float = 0.04  # KL to the reference in the loss; 0 loads no reference
    kl_estimator: str = "k3"  # k3 (the GRPO paper) | k1
    num_iterations: int = 1  # optimisation passes over each batch of answers (μ in the GRPO paper)
    mask_truncated: bool = False  # leave answers cut off at max_new_tokens out of the loss (DAPO)
    # weight of the SFT loss on data.train's demonstrations added to every optimiser step (InstructGPT's
    # PPO-ptx: keeps skills that no sampled reward defends); 0: off. data.train must then hold dialogues.
    sft_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ConfigError(f"grpo.group_size={self.group_size}: a group needs at least 2 answers per prompt "
                              "(a lone answer has no baseline)")
        for key in ("batch_size", "max_new_tokens", "num_iterations"):
            if getattr(self, key) < 1:
                raise ConfigError(f"grpo.{key}={getattr(self, key)}: give a positive number")
        if not self.temperature > 0:
            raise ConfigError(f"grpo.temperature={self.temperature}: sampling needs a temperature > 0")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"grpo.top_p={self.top_p}: give a value in (0, 1]")
        if not self.beta >= 0:
            raise ConfigError(f"grpo.beta={self.beta}: the KL weight must be >= 0 (0: no reference)")
        if not self.clip_range > 0:
            raise ConfigError(f"grpo.clip_range={self.clip_range}: give a value > 0")
        if not self.scale_eps > 0:
            raise ConfigError(f"grpo.scale_eps={self.scale_eps}: give a value > 0")
        if not math.isfinite(self.reward_model_weight):
            raise ConfigError(f"grpo.reward_model_weight={self.reward_model_weight} is not a finite number")
        if not (math.isfinite(self.sft_weight) and self.sft_weight >= 0):
            raise ConfigError(f"grpo.sft_weight={self.sft_weight}: give a finite weight >= 0 (0: off)")
        check_choice("grpo.advantage", self.advantage, GRPO_ADVANTAGES)
        check_choice("grpo.loss_aggregation", self.loss_aggregation, GRPO_AGGREGATIONS)
        check_choice("grpo.kl_estimator", self.kl_estimator, KL_ESTIMATORS)

    @property
    def aggregation(self) -> str:
        """``loss_aggregation`` with ``auto`` resolved: Dr. GRPO's constant normaliser goes with its advantage."""
        if self.loss_aggregation != "auto":
            return self.loss_aggregation
        return "constant" if self.advantage == "dr_grpo" else "token"


@dataclass
class RewardPartSettings:
    """``rewards.<name>.*``: one part of GRPO's reward, ``weight`` × a ``(prompts, answers) -> scores`` callable
    ``fn`` named by ``_target_`` (conf/rewards/*.yaml), e.g. ``lightalign.demo.GoldJudge``."""

    fn: dict[str, Any]
    weight: float = 1.0

    @classmethod
    def from_node(cls, name: str, node: Any) -> RewardPartSettings:
        """Check a ``rewards.<name>`` node as a schema would (keys, types) and build the part from it."""
        if not isinstance(node, dict):
            raise ConfigError(f"rewards.{name} must be a mapping with fn (and weight), got {node!r}")
        unknown = sorted(set(node) - {"fn", "weight"})
        if unknown:
            raise ConfigError(f"rewards.{name}: unknown key(s) {', '.join(unknown)}; a part has fn and weight")
        fn, weight = node.get("fn"), node.get("weight", 1.0)
        if not (isinstance(fn, dict) and fn.get("_target_")):
            raise ConfigError(f"rewards.{name}.fn._target_ is not set: name the reward callable")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
            raise ConfigError(f"rewards.{name}.weight={weight!r} is not a finite number")
        return cls(fn=fn, weight=float(weight))


@dataclass
class GRPOStageConfig(StageConfig):
    grpo: GRPOOptions = field(default_factory=GRPOOptions)
    # name -> {fn: {_target_: ...}, weight: 1.0} (RewardPartSettings). `rewards=[correct,gold_judge]` picks several
    # options of conf/rewards/ and sums them. Values typed Any, not RewardPartSettings, so that the command line can
    # add a part (+rewards.mine.fn._target_=pkg.fn, which OmegaConf refuses for a typed value); __post_init__
    # checks each part as the typed schema would and turns it into a RewardPartSettings.
    rewards: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rewards = {name: RewardPartSettings.from_node(name, node) for name, node in self.rewards.items()}
        if not self.rewards and not self.grpo.reward_model:
            raise ConfigError("GRPO has no reward: pick reward callables (rewards=correct, rewards=[correct,gold_judge]"
                              ") and/or a reward stage's model (grpo.reward_model=REWARD_RUN_DIR)")
        check_prompt_room(self.data.max_length, self.grpo.max_new_tokens, "grpo.max_new_tokens")
        answers = self.grpo.batch_size * self.grpo.group_size
        minibatch = optimizer_batch(self.trainer)
        if answers % minibatch:
            raise ConfigError(f"grpo.batch_size * grpo.group_size = {answers} answers per step must be a multiple of "
                              f"trainer.per_device_train_batch_size * trainer.gradient_accumulation_steps = "
                              f"{minibatch} (one optimiser step)")


SCHEMAS: dict[str, type] = {"sft_schema": SFTStageConfig, "reward_schema": RewardStageConfig,
                            "dpo_schema": DPOStageConfig, "ppo_schema": PPOStageConfig,
                            "rankings_schema": RankingsStageConfig, "grpo_schema": GRPOStageConfig}


@functools.cache
def register_configs() -> None:
    """Register every stage schema; called by recipes before Hydra composes. Once a process: each schema becomes a
    structured config by deep copies (a quarter of a second for the six), and a pipeline's plan composes a dozen
    times; Hydra's config store is a process-wide singleton that keeps them."""
    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(name=name, node=node)
