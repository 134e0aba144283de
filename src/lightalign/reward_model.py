"""Use a trained reward model: ``RewardModel.load(DIR).score(prompts, responses) -> list[float]``.

A reward stage's run directory holds the LoRA adapter *and* the trained ``score`` head (``DIR/adapter/``,
saved through ``modules_to_save``) and the config it was trained with (``DIR/config.yaml``): loading puts the
same base model, quantisation and chat template back together. PPO and the eval hooks score answers with it::

    reward = RewardModel.load("outputs/reward/run")
    reward.score(["What is 7 + 5?"], ["12."])                       # prompts: strings or message lists
    reward(["What is 7 + 5?"], ["12."])                             # the same: a ScoreFn for SampleAnswers
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightalign.data.collators import pad_sequences
from lightalign.data.tokenize import encode_exchange, keep_last
from lightalign.data.types import Message
from lightalign.errors import ConfigError
from lightalign.models.loading import Quantization, load_base_model, load_tokenizer
from lightalign.models.modes import eval_mode
from lightalign.models.precision import resolve_precision
from lightalign.models.score_position import score_pad_token_id
from lightalign.rundir import CONFIG, resolve_adapter_dir

Prompt = str | list[Message]


@torch.no_grad()
def score_sequences(model: PreTrainedModel, sequences: Sequence[Sequence[int]], *, batch_size: int = 8) -> list[float]:
    """The scalar score of each token sequence, in batches (the model is left in the mode it was in).

    Padded with the id the score head pools with, so each score is read where training read it
    (:mod:`lightalign.models.score_position`), whatever the tokenizer's pad token.
    """
    device = next(model.parameters()).device
    pad_token_id = score_pad_token_id(model.config)
    scores: list[float] = []
    with eval_mode(model):
        for start in range(0, len(sequences), batch_size):
            batch = {k: v.to(device) for k, v in pad_sequences(sequences[start : start + batch_size],
                                                               pad_token_id).items()}
            scores += model(**batch, use_cache=False).logits[:, 0].float().tolist()
    return scores


def as_messages(prompt: Prompt) -> list[Message]:
    """A prompt as messages: a string is one user turn."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def read_reward_stage(path: str | Path, *, expected_base: str | None = None) -> tuple[Path, DictConfig]:
    """The adapter folder (LoRA + score head) and the training config of a reward stage's output.

    Raises:
        ConfigError: ``path`` holds no adapter, no ``config.yaml``, or is another stage's output; or its
            manifest names another base model than ``expected_base``.
    """
    adapter_dir = resolve_adapter_dir(path, expected_base=expected_base)
    config_path = adapter_dir.parent / CONFIG
    if not config_path.is_file():
        raise ConfigError(f"{config_path} is missing: pass the run directory of a reward stage")
    cfg = OmegaConf.load(config_path)
    if cfg.get("stage") != "reward":
        raise ConfigError(f"{adapter_dir.parent} is a {cfg.get('stage')!r} stage, not a reward stage")
    return adapter_dir, cfg


class RewardModel:
    """A reward model (base + LoRA adapter + score head) that scores answers to prompts.

    Sequences longer than ``max_length`` keep their last ``max_length`` tokens, as in training; how many were
    cut is counted in ``truncated``.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, max_length: int = 512,
                 batch_size: int = 8) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.truncated = 0

    @classmethod
    def load(cls, path: str | Path, *, batch_size: int = 8) -> RewardModel:
        """Load a reward stage's output: its run directory, or the ``adapter/`` folder inside one."""
        adapter_dir, cfg = read_reward_stage(path)
        precision = resolve_precision(cfg.trainer.precision)
        quant = Quantization(**OmegaConf.to_container(cfg.quant))
        name = cfg.model.name_or_path
        tokenizer = load_tokenizer(name, revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code)
        base = load_base_model(name, quant, compute_dtype=precision.compute_dtype, head="score",
                               revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code,
                               attn_implementation=cfg.model.attn_implementation)
        model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=False)
        model.eval()
        return cls(model, tokenizer, max_length=cfg.data.max_length, batch_size=batch_size)

    def encode(self, prompt: Prompt, response: str) -> list[int]:
        """Token ids of one scored exchange, exactly as in training (chat template, last tokens kept)."""
        ids = encode_exchange(self.tokenizer, as_messages(prompt), response)
        self.truncated += len(ids) > self.max_length
        return keep_last(ids, self.max_length)

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """One score per (prompt, response): higher is better."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        sequences = [self.encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        return score_sequences(self.model, sequences, batch_size=self.batch_size)

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        return self.score(prompts, responses)
