"""Issue 12, class 4: blow-ups are detected. A run that goes non-finite (rewards, losses, gradients)
stops with the quantity, the step and what to try; KL past a bound warns once, or stops on request;
NaN scores are not called "every sample got the same score"."""

import copy
import warnings

import pytest
import torch
from faults import PPO, copy_run, one_line_error

from rlhf_lab.loading import load_prompts
from rlhf_lab.ppo import (GoldReward, KLBoundWarning, PPOConfig, PPOTrainer, TrunkRewardModel, add_policy_adapter,
                          ppo_config)
from rlhf_lab.utils import LabError, TrainingDiverged, set_seed


@pytest.fixture(scope="module")
def prompts():
    return load_prompts("tiny", "train")["prompt"][:32]


class BrokenReward:
    """A reward that returns `value` for some responses (a division by zero in a learner's reward)."""

    name = "broken reward"
    normalised = True

    def __init__(self, value=float("nan"), every=3):
        self.value, self.every = value, every

    def score(self, prompts, completions, rollout=None):
        scores = torch.tensor([float(len(c)) / 10 for c in completions])
        scores[:: self.every] = self.value
        return scores


def make_trainer(tiny, prompts, reward=None, **overrides):
    model, tokenizer = tiny
    settings = dict(steps=2, batch_size=8, minibatch_size=4, ppo_epochs=2, max_new_tokens=12, norm_episodes=16,
                    device="cpu", lr=1e-3)
    cfg = ppo_config(**(settings | overrides))
    set_seed(cfg.seed)
    policy = add_policy_adapter(copy.deepcopy(model), cfg)
    return PPOTrainer(cfg, policy, tokenizer, reward if reward is not None else GoldReward(), prompts)


def adapter_weights(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_reward_stops_ppo_at_that_step(tiny, prompts, value):
    trainer = make_trainer(tiny, prompts, BrokenReward(value))
    before = adapter_weights(trainer)
    with pytest.raises(TrainingDiverged) as error:
        trainer.step()
    message = str(error.value)
    assert message.startswith("PPO stopped at step 1 of 2: the reward (broken reward) (e.g. for the response ")
    assert "is not a finite number (3 of 8 values are NaN or infinite)" in message
    assert "Check the reward function (a division by zero? a log of 0?)" in message
    assert trainer.history == [] and trainer.step_count == 0
    assert all(torch.equal(before[n], p) for n, p in adapter_weights(trainer).items())  # no update happened


def test_nan_scores_are_not_called_the_same_score(tiny, prompts):
    class NotNormalised(BrokenReward):
        normalised = False  # so the trainer fits a gain and bias on the initial policy first

    trainer = make_trainer(tiny, prompts, NotNormalised())
    with pytest.raises(TrainingDiverged) as error:
        trainer.step()
    message = str(error.value)
    assert message.startswith("PPO stopped before training, fitting the score normalisation: the reward's scores "
                              "(broken reward) of the initial policy's samples is not a finite number (6 of 16")
    assert "same score" not in message


def test_a_nan_gradient_stops_before_the_optimizer_step(tiny, prompts):
    trainer = make_trainer(tiny, prompts)
    before = adapter_weights(trainer)
    trainer.policy_params[0].register_hook(lambda grad: grad * float("nan"))
    with pytest.raises(TrainingDiverged) as error:
        trainer.step()
    assert str(error.value).startswith("PPO stopped at step 1 of 2, PPO epoch 1: the gradient norm is not a finite "
                                       "number (it is NaN or infinite). The policy's update blew up: try a lower lr")
    assert all(torch.equal(before[n], p) for n, p in adapter_weights(trainer).items())


def test_a_blown_up_value_head_is_named(tiny, prompts):
    trainer = make_trainer(tiny, prompts)
    with torch.no_grad():
        trainer.value_head.bias.fill_(float("inf"))
    with pytest.raises(TrainingDiverged, match=r"^PPO stopped at step 1 of 2: the value head's values is not a "
                                               r"finite number \((\d+) of \1 values are NaN or infinite\)"):
        trainer.step()  # every value of every response token


def test_kl_past_the_bound_warns_once_and_a_fixed_zero_beta_runs_to_the_end(tiny, prompts):
    """beta = 0 with a large lr: a legitimate lesson (the KL runs away), so it warns and goes on."""
    trainer = make_trainer(tiny, prompts, steps=3, adaptive_kl=False, kl_coef=0.0, lr=0.05, kl_bound=0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train(progress=False)
    kl_warnings = [w for w in caught if issubclass(w.category, KLBoundWarning)]
    assert len(trainer.history) == 3 and len(kl_warnings) == 1
    assert max(m["kl"] for m in trainer.history) > 0.05
    message = str(kl_warnings[0].message)
    assert "nats per response, past the bound of 0.05 (kl_bound)" in message and "Training goes on" in message


def test_kl_past_the_bound_stops_when_asked(tiny, prompts):
    trainer = make_trainer(tiny, prompts, steps=3, adaptive_kl=False, kl_coef=0.0, lr=0.05, kl_bound=0.05,
                           stop_at_kl_bound=True)
    with pytest.raises(TrainingDiverged) as error:
        trainer.train(progress=False)
    message = str(error.value)
    assert message.startswith("PPO stopped at step ") and "past the bound of 0.05 (kl_bound)" in message
    assert "(stop_at_kl_bound is on; switch it off to only warn.)" in message
    assert trainer.history and all(m["kl"] <= 0.05 for m in trainer.history)  # the step past it is not counted


def test_the_default_bound_is_three_times_the_target():
    assert PPOConfig().kl_bound_value == 12.0
    assert PPOConfig(kl_target=1.5).kl_bound_value == 4.5
    assert PPOConfig(kl_bound=40.0).kl_bound_value == 40.0


def test_sft_stops_on_a_nan_loss(monkeypatch):
    import rlhf_lab.sft as sft

    real = sft.completion_loss
    monkeypatch.setattr(sft, "completion_loss", lambda logits, labels, reduction="mean":
                        real(logits, labels, reduction) * float("nan"))
    cfg = sft.sft_config(fast=True, n_train=16, n_eval=8, device="cpu")
    with pytest.raises(TrainingDiverged) as error:
        sft.train_sft(cfg, progress=False)
    assert str(error.value) == ("SFT stopped at step 1 of 1: the loss is nan, not a finite number, so the weights "
                                "would turn to NaN; try a lower lr (--sft-lr).")


def test_the_reward_model_stops_on_a_nan_loss(tiny, monkeypatch):
    import datasets

    import rlhf_lab.reward_model as rm

    monkeypatch.setattr(rm, "pairwise_loss", lambda chosen, rejected: (chosen - rejected).mean() * float("nan"))
    pairs = datasets.Dataset.from_list([{"prompt": f"P{i}", "chosen": " good.", "rejected": " bad."} for i in range(8)])
    cfg = rm.reward_config(epochs=1, batch_size=4, device="cpu")
    with pytest.raises(TrainingDiverged, match=r"^The reward model stopped at step 1 of 2: the loss is nan"):
        rm.train_reward_model(cfg, pairs, trunk=tiny[0], tokenizer=tiny[1], eval_pairs=pairs.select([]),
                              progress=False)


def test_normalise_on_nan_scores_says_nan_not_same_score(tiny):
    from rlhf_lab.reward_model import RewardModel, add_reward_adapter, new_reward_head

    model, tokenizer = tiny
    reward_model = RewardModel(add_reward_adapter(copy.deepcopy(model), rm_config()), head=new_reward_head(128),
                               tokenizer=tokenizer)
    with torch.no_grad():
        reward_model.head.bias.fill_(float("nan"))
    samples = [{"prompt": "The plot", "completion": " was fine."}, {"prompt": "I", "completion": " liked it."}]
    with pytest.raises(LabError) as error:
        reward_model.normalise_on(samples)
    assert str(error.value).startswith("2 of 2 samples got a score that is NaN or infinite")
    assert "same" not in str(error.value)


def rm_config():
    from rlhf_lab.reward_model import RewardConfig
    return RewardConfig()


def test_the_command_line_shows_a_blow_up_in_one_line(capsys, tiny_run, tmp_path, monkeypatch):
    run = copy_run(tiny_run, tmp_path)
    (run / "04_ppo" / "ppo_result.json").unlink()
    monkeypatch.setattr(TrunkRewardModel, "score", lambda self, p, c, r: torch.full((len(p),), float("nan")))
    line = one_line_error(capsys, "ppo", "--fast", *PPO, "--out", run)
    assert line.startswith("rlhf-lab: error: PPO stopped at step 1 of 2: the reward (reward model) (e.g. for the ")
    assert "(8 of 8 values are NaN or infinite)" in line
