"""Batched answer generation with a progress bar: used by eval hooks, PPO rollouts and ``chat``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightalign.data.collators import pad_prompts
from lightalign.data.tokenize import encode_prompt
from lightalign.data.types import Message
from lightalign.models.modes import eval_mode
from lightalign.progress import progress_bar


@dataclass
class Answer:
    text: str
    num_tokens: int
    ended_with_eos: bool


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS plus the chat template's end-of-turn token when it differs (``<|im_end|>``, ``<|eot_id|>``)."""
    ids = {tokenizer.eos_token_id}
    for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        token_id = tokenizer.convert_tokens_to_ids(marker) if marker in tokenizer.get_vocab() else None
        if token_id is not None:
            ids.add(token_id)
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[Message]],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    desc: str = "generating",
) -> list[Answer]:
    """Answer each prompt (greedy when ``temperature == 0``), in batches of left-padded prompts."""
    stops = stop_token_ids(tokenizer)
    device = next(model.parameters()).device
    answers: list[Answer] = []
    sampling = temperature > 0
    with eval_mode(model), progress_bar(len(prompts), desc, unit="prompt") as bar:
        for start in range(0, len(prompts), batch_size):
            encoded = [encode_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
            batch = {k: v.to(device) for k, v in pad_prompts(encoded, tokenizer.pad_token_id).items()}
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=sampling,
                temperature=temperature if sampling else None,
                top_k=top_k if sampling and top_k else None,
                top_p=top_p if sampling else None,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
            )
            for row in output[:, batch["input_ids"].shape[1] :].tolist():
                cut = next((i for i, t in enumerate(row) if t in stops), None)
                tokens = row if cut is None else row[:cut]
                text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
                answers.append(Answer(text, len(tokens) + (cut is not None), cut is not None))
            bar.update(len(encoded))
    return answers
