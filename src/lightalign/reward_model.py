"""Use a trained reward model: ``RewardModel.load(DIR).score(prompts, responses) -> list[float]``.

A reward stage's run directory holds the LoRA adapter *and* the trained ``score`` head (``DIR/adapter/``,
saved through ``modules_to_save``) and the config it was trained with (``DIR/config.yaml``): loading puts the
same base model, quantisation and chat template back together. The eval hooks score answers with it::

    reward = RewardModel.load("outputs/reward/run")
    reward.score(["What is 7 + 5?"], ["12."])                       # prompts: strings or message lists
    reward(["What is 7 + 5?"], ["12."])                             # the same: a ScoreFn for SampleAnswers

A stage that trains a policy (PPO, GRPO) runs the reward model on the policy's own base instead, as one more
adapter (:class:`RewardRole`) scored by :class:`SharedBaseRewardModel`: no second copy of the base.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import torch
from peft import PeftConfig, PeftModel
from peft.utils import load_peft_weights
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightalign.data.collators import pad_sequences
from lightalign.data.tokenize import IGNORE_INDEX, encode_exchange, encode_scored_exchange, keep_last
from lightalign.data.types import Message
from lightalign.errors import ConfigError
from lightalign.generation import last_hidden_states
from lightalign.models.logprobs import causal_lm_of, hidden_label_logprobs, output_weight
from lightalign.models.modes import eval_mode
from lightalign.models.roles import POLICY, REWARD, activate, use_adapter
from lightalign.models.score_position import score_pad_token_id, scored_positions
from lightalign.models.trained import ModelSource, load_model_source
from lightalign.rundir import StageRun
from lightalign.score_mix import ScoreMix, load_score_mix

Prompt = str | list[Message]
# Keys of a PEFT SEQ_CLS adapter that hold the classification head (saved via modules_to_save=["score"]).
_HEAD_SUFFIXES = ("score.weight", "score.bias")


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
        """Load a reward stage's output: its run directory, or the ``adapter/`` folder inside one.

        A reward model that also reads the answers' likelihood (``adapter/score_mix.json``,
        :mod:`lightalign.score_mix`) needs its base's output layer, which a sequence classifier does not load:
        it comes back as :func:`load_reward_on_causal_lm`'s scorer, with the same ``score`` and ``__call__``.

        Raises:
            ConfigError: ``path`` is not a reward stage's output (:meth:`~lightalign.rundir.StageRun.open`).
        """
        run = StageRun.open(path, stage="reward")
        if load_score_mix(run.adapter_dir).reads_likelihood:  # the output layer is needed: the causal LM path
            return load_reward_on_causal_lm(run, batch_size=batch_size)  # type: ignore[return-value]
        model, tokenizer = load_model_source(ModelSource.of_run(run))
        return cls(model, tokenizer, max_length=run.setting("data.max_length"), batch_size=batch_size)

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


# ---- the reward model on a shared base ------------------------------------------------------------------------


def load_score_head(adapter_dir: str | Path) -> nn.Linear:
    """Read the scalar ``score`` head out of a saved PEFT SEQ_CLS adapter (reward model) as a Linear.

    Raises:
        ConfigError: the adapter has no ``score`` weights (trained without ``modules_to_save=["score"]``,
            so its head was random and was not saved) or a head with more than one output.
    """
    weights = load_peft_weights(str(adapter_dir), device="cpu")
    head = {key.rsplit(".", 1)[1]: value for key, value in weights.items() if key.endswith(_HEAD_SUFFIXES)}
    if "weight" not in head:
        raise ConfigError(
            f"{adapter_dir}: the reward adapter holds no 'score' head weights; train the reward model as a "
            "SEQ_CLS LoRA with modules_to_save=['score']"
        )
    out_features, in_features = head["weight"].shape
    if out_features != 1:
        raise ConfigError(f"{adapter_dir}: the reward head has {out_features} outputs, expected 1")
    layer = nn.Linear(in_features, 1, bias="bias" in head)
    layer.load_state_dict(head)
    return layer


def load_trunk_adapter(model: PeftModel, folder: Path, adapter_name: str, *, trainable: bool) -> None:
    """Load a SEQ_CLS adapter's LoRA weights onto the causal LM; its ``score`` head is read separately."""
    result = model.load_adapter(str(folder), adapter_name=adapter_name, is_trainable=trainable)
    # The causal LM has no `score` module, so PEFT reports the head as unexpected; anything else
    # unexpected or missing means the adapter does not fit this base model.
    unexpected = [key for key in result.unexpected_keys if not key.endswith(_HEAD_SUFFIXES)]
    missing = [key for key in result.missing_keys if f".{adapter_name}." in key]
    if unexpected or missing:
        raise ConfigError(
            f"{folder}: adapter does not fit the base model (unexpected {unexpected[:3]}, missing {missing[:3]})"
        )


class RewardRole:
    """A reward stage's model as the :data:`~lightalign.models.roles.REWARD` adapter of a shared base plus its
    ``score`` head (frozen, fp32): ``RewardRole.attach(model, StageRun.open(dir).adapter_dir)``.

    Args:
        model: the PEFT model holding the reward adapter.
        head: the reward model's ``Linear(hidden, 1)``.
        pad_token_id: the pad id the head pooled with in training
            (:func:`~lightalign.models.score_position.score_pad_token_id`).
    """

    def __init__(self, model: PeftModel, head: nn.Linear, pad_token_id: int, mix: ScoreMix | None = None) -> None:
        self.model = model
        self.head = head.requires_grad_(False)
        self.pad_token_id = pad_token_id
        self.mix = mix or ScoreMix()

    @classmethod
    def attach(cls, model: PeftModel, adapter_dir: str | Path) -> RewardRole:
        """Load a reward stage's adapter (trained on this base) onto ``model`` as a frozen role; the policy stays
        active."""
        load_trunk_adapter(model, Path(adapter_dir), REWARD, trainable=False)
        activate(model, POLICY)  # and the trainability rule: the reward adapter stays frozen
        return cls.of_loaded(model, adapter_dir)

    @classmethod
    def of_loaded(cls, model: PeftModel, adapter_dir: str | Path) -> RewardRole:
        """The role of a reward adapter already loaded onto ``model`` as :data:`REWARD`: its head (fp32, on the
        model's device) and score mix read from ``adapter_dir``."""
        device = model.get_input_embeddings().weight.device
        return cls(model, load_score_head(adapter_dir).to(device=device, dtype=torch.float32),
                   score_pad_token_id(model.config), load_score_mix(adapter_dir))

    @torch.no_grad()
    def score_parts(
        self, input_ids: Tensor, attention_mask: Tensor, answer_starts: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """The head's score of each right-padded sequence ``[B]``, read where the reward model was trained to read
        it (:func:`~lightalign.models.score_position.scored_positions`, with ``self.pad_token_id``), and, given
        where each answer starts, the answer's mean log-probability per token under the reward adapter's trunk as
        a causal LM ``[B]`` (else None). One forward pass; no grad.

        Puts the model back as it found it (active adapter, adapters disabled or not), so it can score answers
        in the middle of an evaluation of another role.
        """
        with use_adapter(self.model, REWARD):
            hidden = last_hidden_states(self.model, input_ids, attention_mask)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        last = hidden[rows, scored_positions(input_ids, attention_mask, self.pad_token_id)]
        head = self.head(last.to(self.head.weight.dtype)).squeeze(-1)
        if answer_starts is None:
            return head, None
        return head, answer_mean_logprobs(self.model, hidden, input_ids, attention_mask, answer_starts)

    def reward_scores(self, input_ids: Tensor, attention_mask: Tensor, answer_starts: Tensor | None = None) -> Tensor:
        """The reward model's score of each full sequence ``[B]`` (no grad): its head's, mixed with the answer's
        likelihood as the reward stage fitted (:mod:`lightalign.score_mix`; ``answer_starts`` is then needed)."""
        head, likelihood = self.score_parts(input_ids, attention_mask,
                                            answer_starts if self.mix.reads_likelihood else None)
        return self.mix.combine(head, likelihood)


def answer_mean_logprobs(
    model: nn.Module, hidden: Tensor, input_ids: Tensor, attention_mask: Tensor, answer_starts: Tensor
) -> Tensor:
    """Mean log-probability per answer token ``[B]`` from the last hidden states ``[B, L, H]`` of right-padded
    sequences (the model's own output layer; answer tokens are those from ``answer_starts[b]`` to the mask's end).

    Raises:
        ConfigError: the model's output layer is not a plain matrix (:func:`~lightalign.models.logprobs.
            output_weight`), so its logits cannot be computed from the hidden states alone.
    """
    causal_lm = causal_lm_of(model)
    if output_weight(causal_lm) is None:
        raise ConfigError("this model's output layer is not a plain matrix: the reward model cannot read answer "
                          "likelihoods; train it with reward.likelihood=off")
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    answer = (positions[None, :] >= answer_starts.to(input_ids.device)[:, None]) & attention_mask.bool()
    labels = torch.where(answer, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    scored, mask = hidden_label_logprobs(causal_lm, hidden[:, :-1], labels[:, 1:])
    return (scored.log_probs.float().sum(-1) / mask.sum(-1).clamp(min=1)).to(hidden.device)


class RewardScorer(Protocol):
    """What :class:`SharedBaseRewardModel` scores with: a :class:`RewardRole`, or PPO's ``SharedBaseRoles``."""

    model: PeftModel
    pad_token_id: int | None

    def reward_scores(self, input_ids: Tensor, attention_mask: Tensor, answer_starts: Tensor | None = None) -> Tensor:
        ...


class SharedBaseRewardModel:
    """The reward stage's model as a scorer, running as the ``reward`` role of a shared base (``scorer``: a
    :class:`RewardRole`, or PPO's ``SharedBaseRoles``).

    Answers are rendered exactly as in reward training (chat template, last ``max_length`` tokens kept),
    padded with the id the head pooled with and scored where it read them in training
    (:mod:`lightalign.models.score_position`), whatever the tokenizer's pad token; where each answer starts is
    passed along, for a reward model that also reads the answer's likelihood (:mod:`lightalign.score_mix`).
    Usable as a ``ScoreFn`` by eval hooks: scoring leaves the model's active adapter as it found it.

    Example::

        reward = SharedBaseRewardModel(RewardRole.attach(policy_model, reward_dir), tokenizer)
        reward(["What is 7 + 5?"], ["12."])   # -> [1.83]
    """

    accepts_messages = True

    def __init__(
        self, scorer: RewardScorer, tokenizer: PreTrainedTokenizerBase, *, max_length: int = 512, batch_size: int = 8
    ) -> None:
        self.scorer = scorer
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size

    def _batches(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """``(input_ids, attention_mask, answer_starts)`` of each batch, right-padded, on the model's device."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        encoded = [encode_scored_exchange(self.tokenizer, as_messages(p), r, self.max_length)
                   for p, r in zip(prompts, responses, strict=True)]
        device = next(self.scorer.model.parameters()).device
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start : start + self.batch_size]
            batch = pad_sequences([ids for ids, _ in chunk], self.scorer.pad_token_id)
            starts = torch.tensor([answer_start for _, answer_start in chunk], device=device)
            yield batch["input_ids"].to(device), batch["attention_mask"].to(device), starts

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        scores: list[float] = []
        for ids, mask, starts in self._batches(prompts, responses):
            scores += self.scorer.reward_scores(ids, mask, starts).tolist()
        return scores

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """One score per (prompt, response): higher is better (as :meth:`RewardModel.score`)."""
        return self(prompts, responses)

    def score_parts(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> tuple[list[float], list[float]]:
        """Unmixed: the head's score and the answer's mean log-probability per token, for each (prompt, response)
        (:meth:`RewardRole.score_parts`; what :func:`lightalign.score_mix.fit_score_mix` fits the mix on)."""
        if not isinstance(self.scorer, RewardRole):
            raise TypeError(f"score_parts needs a RewardRole scorer, not {type(self.scorer).__name__}")
        heads: list[float] = []
        likelihoods: list[float] = []
        for ids, mask, starts in self._batches(prompts, responses):
            head, likelihood = self.scorer.score_parts(ids, mask, starts)
            heads += head.tolist()
            likelihoods += likelihood.tolist()
        return heads, likelihoods


def load_reward_on_causal_lm(run: StageRun, *, batch_size: int = 8) -> SharedBaseRewardModel:
    """A reward stage's model on its base loaded as a causal LM (the reward adapter its one adapter, the head
    and the score mix read from it), as a :class:`SharedBaseRewardModel`: how policy stages score, without a
    policy. Its output layer lets it read answer likelihoods (:mod:`lightalign.score_mix`)."""
    source = replace(ModelSource.of_run(run), head="causal-lm", adapter=None)
    tokenizer = source.load_tokenizer()
    base = source.load_base()
    config = PeftConfig.from_pretrained(str(run.adapter_dir))
    # The trunk's LoRA only: the head is read separately (load_score_head), the causal LM has no `score` module.
    config = replace(config, task_type="CAUSAL_LM", modules_to_save=None)
    model = PeftModel.from_pretrained(base, str(run.adapter_dir), adapter_name=REWARD, config=config)
    model.eval()
    return SharedBaseRewardModel(RewardRole.of_loaded(model, run.adapter_dir), tokenizer,
                                 max_length=run.setting("data.max_length", 512), batch_size=batch_size)
