"""The preference trainers' pieces that are ours (InstructGPT's ranking loss), and the TRL internals they use."""

import inspect
import math

import pytest
import torch
from trl import DPOTrainer, RewardTrainer

from lightalign.config.schema import DPO_LOSS_TYPES
from lightalign.data.collators import pad_ranked_groups
from lightalign.trainers import RankedRewardTrainer, TokenizedDPOTrainer, TrlInternals, ranking_loss


def test_ranking_loss_of_one_pair_is_minus_log_sigmoid_of_the_margin():
    loss = ranking_loss(torch.tensor([1.0, 0.0]), torch.tensor([0]), torch.tensor([1]), torch.tensor([1.0]))
    assert loss.item() == pytest.approx(0.313262, abs=1e-6)  # -log σ(1), worked by hand


def test_ranking_loss_averages_each_prompts_pairs_then_the_prompts():
    # prompt A: 3 answers scored 2 > 1 > 0 (pairs with margins 1, 2, 1); prompt B: 2 answers scored equally
    rows = [
        {"input_ids": [[1], [1], [1]], "chosen_index": [0, 0, 1], "rejected_index": [1, 2, 2],
         "pair_weight": [1 / 3] * 3},
        {"input_ids": [[1], [1]], "chosen_index": [0], "rejected_index": [1], "pair_weight": [1.0]},
    ]
    batch = pad_ranked_groups(rows, pad_token_id=0)
    rewards = torch.tensor([2.0, 1.0, 0.0, 0.0, 0.0])
    loss = ranking_loss(rewards, batch["chosen_index"], batch["rejected_index"], batch["pair_weight"])
    # (mean(-log σ(1), -log σ(2), -log σ(1)) + ln 2) / 2, by hand: ((0.313262·2 + 0.126928) / 3 + 0.693147) / 2
    assert loss.item() == pytest.approx(0.472149, abs=1e-5)
    # the plain mean over the 4 pairs would let prompt A's three pairs outweigh prompt B's one
    plain = -torch.nn.functional.logsigmoid(torch.tensor([1.0, 2.0, 1.0, 0.0])).mean().item()
    assert abs(plain - loss.item()) > 0.05 and math.isclose(plain, 0.36165, abs_tol=1e-4)


def test_ranking_loss_has_gradients_towards_the_preference():
    rewards = torch.zeros(2, requires_grad=True)
    ranking_loss(rewards, torch.tensor([0]), torch.tensor([1]), torch.tensor([1.0])).backward()
    assert rewards.grad[0] < 0 < rewards.grad[1]  # descending raises the chosen score, lowers the rejected


@pytest.mark.parametrize(("ours", "trl"), [(RankedRewardTrainer, RewardTrainer), (TokenizedDPOTrainer, DPOTrainer)])
def test_the_private_trl_api_we_use_is_still_there(ours, trl):
    # TrlInternals overrides and writes these names: a TRL upgrade that renames or reshapes one fails here
    assert ours._prepare_dataset is TrlInternals._prepare_dataset  # ours wins over TRL's tokenisation
    assert list(inspect.signature(trl._prepare_dataset).parameters) == [
        "self", "dataset", "processing_class", "args", "dataset_name"]
    init = inspect.getsource(trl.__init__)
    assert "self._prepare_dataset(" in init  # the call that tokenises: ours hands the rows back as they are
    assert "self._metrics = {" in init and "self._total_train_tokens = 0" in init
    assert "self._metrics[mode]" in inspect.getsource(trl.log)  # what each logged row averages


def test_every_dpo_loss_type_we_accept_is_a_loss_of_trls_dpo_trainer():
    source = inspect.getsource(DPOTrainer)
    assert [name for name in DPO_LOSS_TYPES if f'loss_type == "{name}"' not in source] == []


def test_the_ranked_reward_trainer_logs_its_metrics_through_trl(tmp_path, tiny_model_dir, tiny_tokenizer):
    from datasets import Dataset
    from trl import RewardConfig

    from lightalign.config.schema import LoraSettings, TrainerSettings
    from lightalign.data.collators import RankedGroupCollator
    from lightalign.models import apply_lora, load_base_model, resolve_precision
    from lightalign.training import build_trl_args

    model = apply_lora(load_base_model(str(tiny_model_dir), None, head="score"), LoraSettings(r=4, alpha=8),
                       task_type="SEQ_CLS", modules_to_save=["score"])
    rows = [{"input_ids": [[5, 6, 7], [5, 6]], "chosen_index": [0], "rejected_index": [1], "pair_weight": [1.0]}]
    collator = RankedGroupCollator(tiny_tokenizer.pad_token_id)
    args = build_trl_args(RewardConfig, TrainerSettings(), tmp_path, resolve_precision("fp32"), max_length=None)
    trainer = RankedRewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=collator,
                                  processing_class=tiny_tokenizer)
    trainer.model.train()
    for _ in range(2):
        trainer.compute_loss(trainer.model, collator(rows))
    logs = {"loss": 0.5}
    trainer.log(logs)
    assert set(logs) >= {"loss", "accuracy", "margin", "mean_reward", "num_tokens"}
    assert logs["num_tokens"] == 2 * 5  # five tokens a step: the two answers' attention masks
