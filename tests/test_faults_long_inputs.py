"""Issue 12, class 6: inputs longer than the model. Prompt length + max_new_tokens is checked against
the model's positions before sampling, empty prompts are refused, max_length above n_positions is
refused, and the reward model truncates from the left, counting cut pairs and leaving out, with a
count, pairs that become the same token sequence."""

import copy

import datasets
import pytest

from rlhf_lab.generation import check_fits, model_positions, sample
from rlhf_lab.reward_model import encode, fit_pairs, reward_config, train_reward_model
from rlhf_lab.sft import sft_config, train_sft
from rlhf_lab.utils import ConfigError, LabError

LONG = " ".join(["the film was long and the plot was thin"] * 30)  # ~270 tokens of the tiny world


def test_the_tiny_model_has_128_positions(tiny):
    assert model_positions(tiny[0]) == 128


def test_a_prompt_over_the_context_is_refused_before_sampling(tiny):
    model, tokenizer = tiny
    n = len(tokenizer(LONG)["input_ids"])
    with pytest.raises(LabError) as error:
        sample(model, tokenizer, ["The plot", LONG], max_new_tokens=8)
    assert str(error.value) == (f"the prompt {LONG[:40]!r} is {n} tokens long, and with max_new_tokens=8 that "
                                f"makes {n + 8} positions, more than the model's 128 (n_positions): shorten the "
                                "prompts to at most 120 tokens.")


def test_the_fix_names_both_ways_when_both_work(tiny):
    model, tokenizer = tiny
    prompt = " ".join(["good"] * 100)
    n = len(tokenizer(prompt)["input_ids"])
    with pytest.raises(LabError, match=rf"shorten the prompts to at most 78 tokens, or lower max_new_tokens to "
                                       rf"{128 - n} or less\.$"):
        check_fits(model, tokenizer, [prompt], max_new_tokens=50)
    check_fits(model, tokenizer, [prompt], max_new_tokens=128 - n)  # exactly fits: no error


def test_an_empty_prompt_is_refused(tiny):
    model, tokenizer = tiny
    with pytest.raises(LabError, match=r"^prompt 1 of 3 is empty: the model needs at least one token to continue"):
        sample(model, tokenizer, ["The plot", "", "I"], max_new_tokens=4)
    with pytest.raises(LabError, match="prompt 0 of 1 is empty"):
        sample(model, tokenizer, [""], max_new_tokens=4)  # all empty: was a crash on a (B, 0) batch


def test_sft_max_length_above_n_positions_is_refused_before_training(tiny):
    cfg = sft_config(fast=True, max_length=129, device="cpu")
    with pytest.raises(ConfigError) as error:
        train_sft(cfg, model=tiny[0], tokenizer=tiny[1], train=[{"prompt": "a", "completion": " b"}],
                  eval=[{"prompt": "a", "completion": " b"}], progress=False)
    assert str(error.value) == ("max_length=129 is more than the model's 128 positions (n_positions); set it to "
                                "128 or less.")
    assert error.value.fields == ("max_length",) and error.value.config == "SFTConfig"


def test_reward_model_max_length_above_n_positions_is_refused(tiny):
    pairs = datasets.Dataset.from_list([{"prompt": "P", "chosen": " good.", "rejected": " bad."}] * 2)
    with pytest.raises(ConfigError, match=r"^max_length=500 is more than the model's 128 positions") as error:
        train_reward_model(reward_config(max_length=500, device="cpu"), pairs, trunk=tiny[0], tokenizer=tiny[1],
                           eval_pairs=pairs, progress=False)
    assert error.value.config == "RewardConfig"


def test_encode_cuts_the_prompt_from_the_left_and_keeps_the_response(tiny):
    _, tokenizer = tiny
    prompt_ids = tokenizer(LONG, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(" superb.", add_special_tokens=False)["input_ids"]
    ids = encode(tokenizer, LONG, " superb.", max_length=20)
    assert len(ids) == 20
    assert ids == (prompt_ids + response_ids + [tokenizer.eos_token_id])[-20:]
    assert ids[-len(response_ids) - 1:] == response_ids + [tokenizer.eos_token_id]  # the judged text, whole


def test_fit_pairs_counts_the_cut_pairs_and_leaves_out_identical_ones(tiny):
    _, tokenizer = tiny
    rows = [{"prompt": "Short.", "chosen": " good.", "rejected": " bad."},             # fits
            {"prompt": LONG, "chosen": " good.", "rejected": " bad."},                # cut, still different
            {"prompt": "Q", "chosen": " A" + LONG, "rejected": " B" + LONG},           # cut: the same once cut
            {"prompt": "R", "chosen": " C" + LONG, "rejected": " D" + LONG}]           # likewise
    with pytest.warns(UserWarning) as caught:
        kept = fit_pairs(datasets.Dataset.from_list(rows), tokenizer, max_length=32, what="training pairs")
    assert kept["prompt"] == ["Short.", LONG]
    message = str(caught[0].message)
    assert message.startswith("3 of 4 training pairs are longer than max_length=32 tokens: their prompts were cut "
                              "from the start")
    assert "; 2 of them became the same token sequence on both sides and are left out" in message


def test_fit_pairs_refuses_when_nothing_can_be_told_apart(tiny):
    _, tokenizer = tiny
    rows = [{"prompt": "Q", "chosen": " A" + LONG, "rejected": " B" + LONG}] * 3
    with pytest.warns(UserWarning), pytest.raises(LabError) as error:
        fit_pairs(datasets.Dataset.from_list(rows), tokenizer, max_length=32, what="training pairs")
    assert str(error.value).startswith("none of the 3 training pairs can be told apart within max_length=32 tokens")
    with pytest.warns(UserWarning):  # held-out pairs may all go: the run trains, without an eval curve
        assert len(fit_pairs(datasets.Dataset.from_list(rows), tokenizer, 32, "held-out pairs", required=False)) == 0


def test_the_tiny_worlds_pairs_are_never_cut(tiny):
    """The change to left truncation moves no number of the lab's own runs: nothing is that long."""
    from rlhf_lab.loading import load_prompts

    _, tokenizer = tiny
    prompts = list(load_prompts("tiny", "train")["prompt"]) + list(load_prompts("tiny", "validation")["prompt"])
    longest = max(len(ids) for ids in tokenizer(prompts)["input_ids"])
    # a ranked sample is a prompt + at most 48 sampled tokens (pipeline.sample_items) + EOS
    assert longest + 48 + 1 <= reward_config().max_length
