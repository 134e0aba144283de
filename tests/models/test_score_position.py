"""One scored position for reward training, RewardModel.score and PPO, on the case where they used to differ:
a chat template that ends with EOS, a config without a pad id, and a tokenizer whose pad is not EOS."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from lightalign.data.collators import pad_ranked_groups
from lightalign.data.tokenize import encode_exchange
from lightalign.models import LoraSettings, load_base_model, load_tokenizer
from lightalign.models.score_position import score_pad_token_id, scored_positions
from lightalign.models.tiny import build_tiny_tokenizer
from lightalign.ppo.roles import load_shared_base_roles
from lightalign.reward_model import RewardModel, SharedBaseRewardModel
from lightalign.trainers import RankedRewardTrainer

# ChatML without the newline after each turn: a rendered exchange ends with <|im_end|>, the EOS.
EOS_LAST_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
PROMPTS = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "What is 7 + 5?"}]]
ANSWERS = ["Hello there, how are you?", "12"]  # different lengths: the second row gets padded


def test_scored_position_is_the_last_attended_token_that_is_not_the_pad_id():
    ids = torch.tensor([[5, 6, 2, 0, 0], [5, 6, 7, 2, 2], [0, 0, 5, 6, 7]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    assert scored_positions(ids, mask, pad_token_id=2).tolist() == [1, 2, 4]


def test_score_pad_id_is_the_configs_pad_else_its_first_eos():
    assert score_pad_token_id(LlamaConfig(pad_token_id=0, eos_token_id=2)) == 0
    assert score_pad_token_id(LlamaConfig(pad_token_id=None, eos_token_id=2)) == 2
    assert score_pad_token_id(LlamaConfig(pad_token_id=None, eos_token_id=[7, 2])) == 7


@pytest.fixture(scope="module")
def eos_last_model(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny model folder (config without pad id; tokenizer pad <|endoftext|> != EOS <|im_end|>; template
    ending with EOS) and a random reward adapter with its score head trained on it."""
    folder = tmp_path_factory.mktemp("eos_last")
    tokenizer = build_tiny_tokenizer()
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.chat_template = EOS_LAST_TEMPLATE
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=0,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=None)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    torch.manual_seed(1)
    reward = get_peft_model(load_base_model(str(folder / "model"), None, head="score"),
                            LoraConfig(r=4, target_modules="all-linear", task_type="SEQ_CLS",
                                       modules_to_save=["score"], init_lora_weights=False))
    # a score head far from zero, so that reading another token changes the score visibly
    torch.nn.init.normal_(reward.base_model.model.score.modules_to_save["default"].weight, std=1.0)
    reward.save_pretrained(folder / "reward")
    return folder / "model", folder / "reward"


def test_training_reward_model_and_ppo_read_the_same_token(eos_last_model):
    model_dir, reward_dir = eos_last_model
    tokenizer = load_tokenizer(str(model_dir))
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    sequences = [encode_exchange(tokenizer, p, a) for p, a in zip(PROMPTS, ANSWERS, strict=True)]
    assert all(s[-1] == tokenizer.eos_token_id for s in sequences)  # the template ends with EOS

    classifier = PeftModel.from_pretrained(load_base_model(str(model_dir), None, head="score"), reward_dir).eval()
    assert classifier.config.pad_token_id == tokenizer.eos_token_id  # what the head pools with
    with torch.no_grad():  # each sequence alone, unpadded: no pad id to disagree about
        alone = [classifier(input_ids=torch.tensor([s])).logits[0, 0].item() for s in sequences]
        hidden = classifier.get_base_model().model(input_ids=torch.tensor([sequences[0]])).last_hidden_state
        head = classifier.base_model.model.score
        # ... read at the token before the final EOS, the rule of lightalign.models.score_position
        assert alone[0] == pytest.approx(head(hidden[0, -2]).item(), abs=1e-5)
        assert alone[0] != pytest.approx(head(hidden[0, -1]).item(), abs=1e-3)

    # Reward training: a batch padded by the recipe's collator (the tokenizer's pad id) and its compute_loss.
    batch = pad_ranked_groups([{"input_ids": sequences, "chosen_index": [0], "rejected_index": [1],
                                "pair_weight": [1.0]}], tokenizer.pad_token_id)
    trainer = SimpleNamespace(model=classifier, args=SimpleNamespace(center_rewards_coefficient=None),
                              record_metrics=lambda mode, values, tokens: None)
    with torch.no_grad():
        _, outputs = RankedRewardTrainer.compute_loss(trainer, classifier, batch, return_outputs=True)
    assert outputs.logits[:, 0].tolist() == pytest.approx(alone, abs=1e-5)

    # RewardModel.score, batched.
    assert RewardModel(classifier, tokenizer).score(PROMPTS, ANSWERS) == pytest.approx(alone, abs=1e-5)

    # PPO: the reward role on the causal LM, whose config has no pad id.
    base = load_base_model(str(model_dir), None)
    assert base.config.pad_token_id is None
    roles = load_shared_base_roles(base, None, reward_dir, lora=LoraSettings(r=4))
    assert SharedBaseRewardModel(roles, tokenizer)(PROMPTS, ANSWERS) == pytest.approx(alone, abs=1e-5)
