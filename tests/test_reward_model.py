"""The scoring API: batched scores equal one-by-one scores; prompts as strings or messages; truncation kept."""

import pytest

from lightalign.errors import ConfigError
from lightalign.models import LoraSettings, Quantization, apply_lora, load_base_model
from lightalign.reward_model import RewardModel, score_sequences


@pytest.fixture(scope="module")
def reward_model(tiny_model_dir, tiny_tokenizer):
    model = load_base_model(str(tiny_model_dir), Quantization(), head="score")
    model = apply_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0), task_type="SEQ_CLS", modules_to_save=["score"])
    return RewardModel(model, tiny_tokenizer, max_length=64, batch_size=2)


def test_padding_does_not_change_a_score(reward_model):
    short, long = [5, 6, 7], [5, 6, 7, 8, 9, 10, 11]
    alone = score_sequences(reward_model.model, [short])
    batched = score_sequences(reward_model.model, [short, long])
    assert batched[0] == pytest.approx(alone[0], abs=1e-4)
    assert batched[1] != pytest.approx(batched[0], abs=1e-6)


def test_string_prompts_are_user_turns(reward_model):
    answers = ["Tokyo.", "Kyoto, I think."]
    as_text = reward_model.score(["Capital of Japan?"] * 2, answers)
    as_messages = reward_model([[{"role": "user", "content": "Capital of Japan?"}]] * 2, answers)
    assert as_text == pytest.approx(as_messages) and len(as_text) == 2
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        reward_model.score(["a", "b"], ["x"])


def test_long_exchanges_keep_their_end_and_are_counted(reward_model):
    before = reward_model.truncated
    ids = reward_model.encode("word " * 40, "The end.")
    assert len(ids) == 64 and reward_model.tokenizer.decode(ids).endswith("The end.<|im_end|>\n")
    assert reward_model.truncated == before + 1


def test_only_a_reward_stage_loads(reward_model, tmp_path):
    reward_model.model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(ConfigError, match="has no config.yaml beside its adapter"):
        RewardModel.load(tmp_path)
    (tmp_path / "config.yaml").write_text("stage: sft\n")
    with pytest.raises(ConfigError, match="output of a 'sft' stage, not of a reward stage"):
        RewardModel.load(tmp_path / "adapter")
