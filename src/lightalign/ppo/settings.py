"""PPO's own hyper-parameters (``ppo.*``); optimiser settings shared with the other stages are ``trainer.*``."""

from __future__ import annotations

from dataclasses import dataclass

from lightalign.errors import ConfigError

KL_ESTIMATORS = ("k1", "k3")


@dataclass
class PPOSettings:
    """What one PPO update does: sample, reward, estimate advantages, optimise.

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
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ConfigError(f"ppo.kl_estimator={self.kl_estimator!r} is not one of {', '.join(KL_ESTIMATORS)}")
