"""Issue 12, class 3: what was accepted silently is refused, or said: impossible settings (in Python as
on the command line), max_new_tokens beyond the context, contradictory duplicate rankings, and HH
dialogues with one newline per turn (read as TRL rows with an empty prompt)."""

import copy
import dataclasses
import json

import pytest
from faults import one_line_error

from rlhf_lab.config_args import check_config
from rlhf_lab.ppo import PPOConfig, PPOTrainer, add_policy_adapter, GoldReward, ppo_config
from rlhf_lab.preferences import PreferenceFileError, load_preferences
from rlhf_lab.rankings import RankingStore, rankings_to_pairs
from rlhf_lab.reward_model import RewardConfig, reward_config
from rlhf_lab.sft import SFTConfig, sft_config, train_sft
from rlhf_lab.utils import ConfigError

# -----------------------------------------------------------------------------
# settings that cannot work are refused where the config is made


@pytest.mark.parametrize("make, message", [
    (lambda: ppo_config(steps=0), "PPOConfig.steps = 0: it must be >= 1."),
    (lambda: ppo_config(steps=-1), "PPOConfig.steps = -1: it must be >= 1."),
    (lambda: ppo_config(lr=0.0), "PPOConfig.lr = 0.0: it must be > 0."),
    (lambda: ppo_config(kl_target=-1.0), "PPOConfig.kl_target = -1.0: it must be > 0."),
    (lambda: PPOConfig(kl_kind="k4"), "PPOConfig.kl_kind = 'k4': it must be one of k1, k2, k3."),
    (lambda: PPOConfig(reward="human"), "PPOConfig.reward = 'human': it must be one of rm, gold."),
    (lambda: PPOConfig(eval_prompts=1), "PPOConfig.eval_prompts = 1: it must be >= 2."),
    (lambda: reward_config(epochs=-1), "RewardConfig.epochs = -1: it must be >= 1."),
    (lambda: RewardConfig(eval_fraction=1.0), "RewardConfig.eval_fraction = 1.0: it must be >= 0 and < 1."),
    (lambda: sft_config(n_train=0), "SFTConfig.n_train = 0: it must be >= 1."),
    (lambda: SFTConfig(lr=float("nan")), "SFTConfig.lr = nan: it must be a finite number (> 0)."),
    (lambda: SFTConfig(device="banana"), "SFTConfig.device = 'banana': it must be auto, cpu, cuda, cuda:N or mps"),
    (lambda: SFTConfig(epochs=2.5), "SFTConfig.epochs = 2.5: it must be a whole number."),
])
def test_impossible_settings_are_refused_naming_the_field(make, message):
    with pytest.raises(ConfigError) as error:
        make()
    assert str(error.value).startswith(message)


def test_a_field_set_after_the_config_was_made_is_checked_before_training():
    cfg = sft_config(fast=True)
    cfg.lr = 0.0  # a notebook cell may do this
    with pytest.raises(ConfigError, match=r"SFTConfig.lr = 0.0: it must be > 0"):
        train_sft(cfg, progress=False)
    cfg = ppo_config()
    cfg.minibatch_size = 48
    with pytest.raises(ConfigError, match="batch_size=64 is not a multiple of minibatch_size=48") as error:
        check_config(cfg)
    assert error.value.fields == ("batch_size", "minibatch_size")


def test_the_command_line_refuses_them_too(capsys):
    for argv, option in ((["ppo", "--steps", "0"], "--steps"), (["ppo", "--ppo-lr", "0"], "--ppo-lr"),
                         (["ppo", "--kl-target=-1"], "--kl-target"), (["rm", "--rm-epochs", "-1"], "--rm-epochs")):
        assert f"argument {option}: got" in one_line_error(capsys, *argv)


def test_max_new_tokens_beyond_the_context_is_refused_before_step_one(tiny):
    model, tokenizer = tiny
    cfg = ppo_config(max_new_tokens=130, batch_size=8, minibatch_size=8, device="cpu")
    policy = add_policy_adapter(copy.deepcopy(model), cfg)
    with pytest.raises(ConfigError) as error:
        PPOTrainer(cfg, policy, tokenizer, GoldReward(), ["The plot", "I had heard good things about"])
    message = str(error.value)
    assert "'I had heard good things about' is 8 tokens long" in message
    assert "with max_new_tokens=130 that makes 138 positions, more than the model's 128 (n_positions)" in message
    assert message.endswith(": lower max_new_tokens to 120 or less.") and error.value.fields == ("max_new_tokens",)


# -----------------------------------------------------------------------------
# contradictory duplicate rankings


def ranking(prompt, order, annotator="learner"):
    return {"prompt": prompt, "completions": ["a", "b", "c"], "ranking": order, "annotator": annotator}


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_the_same_item_ranked_two_ways_by_one_annotator_is_refused(tmp_path):
    path = write(tmp_path / "r.jsonl", [ranking("P", [0, 1, 2]), ranking("Q", [1, 0, 2]), ranking("P", [2, 1, 0])])
    with pytest.raises(PreferenceFileError) as error:
        load_preferences(path)
    assert str(error.value).startswith(f"{path}: line 1 and line 3 rank the same prompt and completions "
                                       "differently ([0, 1, 2] and [2, 1, 0]), both by annotator 'learner'")
    with pytest.raises(PreferenceFileError, match="line 1 and line 3 rank the same prompt"):
        rankings_to_pairs(RankingStore(path))
    with pytest.raises(PreferenceFileError, match="record 1 and record 3 rank the same prompt"):
        rankings_to_pairs([ranking("P", [0, 1, 2]), ranking("Q", [1, 0, 2]), ranking("P", [2, 1, 0])])


def test_skip_bad_drops_both_contradicting_rankings(tmp_path):
    path = write(tmp_path / "r.jsonl", [ranking("P", [0, 1, 2]), ranking("Q", [1, 0, 2]), ranking("P", [2, 1, 0])])
    with pytest.warns(UserWarning, match="dropped 2 rankings of items that one annotator ranked in two different"):
        pairs = load_preferences(path, skip_bad=True)
    assert set(pairs["prompt"]) == {"Q"} and len(pairs) == 3


def test_the_same_ranking_twice_counts_once(tmp_path):
    path = write(tmp_path / "r.jsonl", [ranking("P", [0, 1, 2]), ranking("P", [0, 1, 2])])
    with pytest.warns(UserWarning, match="1 rankings appear twice .* each is counted once"):
        pairs = load_preferences(path)
    assert len(pairs) == 3  # not 6


def test_different_annotators_may_disagree(tmp_path):
    path = write(tmp_path / "r.jsonl", [ranking("P", [0, 1, 2], "ada"), ranking("P", [2, 1, 0], "bob")])
    pairs = load_preferences(path)
    assert len(pairs) == 6  # real disagreement is data: both rankings stay


# -----------------------------------------------------------------------------
# HH dialogues with one newline per turn


def test_hh_with_single_newlines_is_split_not_an_empty_prompt(tmp_path):
    record = {"chosen": "Human: Name a colour.\nAssistant: Blue.", "rejected": "Human: Name a colour.\nAssistant: No."}
    data = load_preferences(write(tmp_path / "hh.jsonl", [record]))
    assert data[0] == {"prompt": "Human: Name a colour.\nAssistant:", "chosen": " Blue.", "rejected": " No."}
    assert data[0]["prompt"] + data[0]["chosen"] == record["chosen"]


def test_a_trl_row_without_prompt_and_without_dialogue_keeps_its_empty_prompt(tmp_path):
    data = load_preferences(write(tmp_path / "trl.jsonl", [{"chosen": "Paris is in France.", "rejected": "No."}]))
    assert data[0]["prompt"] == ""
