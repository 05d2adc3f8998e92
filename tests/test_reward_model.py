"""rlhf_lab/reward_model.py: the pairwise loss on hand values, last-token reading under left and right
padding, a few training steps on an easy toy set, normalisation, save/load, the shared trunk."""

import copy
import math

import datasets
import pytest
import torch
from peft import LoraConfig, get_peft_model

from rlhf_lab.loading import load_tokenizer
from rlhf_lab.ppo_math import pairwise_accuracy, pairwise_loss
from rlhf_lab.reward_model import (
    ADAPTER_NAME,
    HEAD_FILE,
    META_FILE,
    RewardModel,
    add_reward_adapter,
    encode,
    evaluate_pairs,
    gold_order,
    load_reward_model,
    pad_batch,
    reward_config,
    save_reward_model,
    split_by_prompt,
    train_reward_model,
    using_adapter,
)

PROMPTS = ["The film was", "I thought it", "The acting", "This movie is", "Overall the plot", "The music"]
GOOD = [" great and superb.", " wonderful and moving.", " a superb, great film.", " great acting, superb music."]
BAD = [" awful and boring.", " dull and awful.", " a boring, awful mess.", " awful acting, boring plot."]


def toy_pairs() -> datasets.Dataset:
    """Every (good, bad) combination for each prompt: 6 prompts x 16 pairs, easy to separate."""
    return datasets.Dataset.from_list([{"prompt": p, "chosen": g, "rejected": b}
                                       for p in PROMPTS for g in GOOD for b in BAD])


def toy_cfg(**overrides):
    return reward_config(fast=True, device="cpu", **({"epochs": 3, "batch_size": 16, "eval_fraction": 0.34,
                                                       "eval_every": 100} | overrides))


@pytest.fixture(scope="module")
def trained(tiny):
    """A reward model trained a few steps on the toy set, on the bare tiny GPT-2 as trunk."""
    model, tokenizer = tiny
    return train_reward_model(toy_cfg(), toy_pairs(), trunk=model, tokenizer=tokenizer, progress=False)


def fresh_reward_model(tiny, tokenizer=None, seed=0) -> RewardModel:
    """An untrained reward model on a copy of the tiny GPT-2 (head random, adapter B = 0)."""
    model, tiny_tokenizer = tiny
    torch.manual_seed(seed)
    peft_model = add_reward_adapter(copy.deepcopy(model), reward_config(device="cpu"))
    reward_model = RewardModel(peft_model, tokenizer=tokenizer or tiny_tokenizer)
    return reward_model.eval()


# -----------------------------------------------------------------------------
# the loss on hand values (through ppo_math)


def test_pairwise_loss_and_accuracy_on_hand_values():
    chosen = torch.tensor([2.0, 0.0, -1.0, 3.0])
    rejected = torch.tensor([1.0, 0.0, 1.0, -2.0])
    # -log sigmoid(d) = log(1 + exp(-d)) for d = 1, 0, -2, 5
    expected = (math.log1p(math.exp(-1)) + math.log(2) + math.log1p(math.exp(2)) + math.log1p(math.exp(-5))) / 4
    assert pairwise_loss(chosen, rejected).item() == pytest.approx(expected, abs=1e-6)
    assert pairwise_accuracy(chosen, rejected).item() == pytest.approx(0.5)  # the tie counts as wrong
    # equal rewards: the loss is log 2, the loss of a coin flip
    assert pairwise_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(math.log(2))


# -----------------------------------------------------------------------------
# reading the score at the last real token


def test_encode_appends_eos_and_pad_batch_masks_by_position(tiny):
    _, tokenizer = tiny
    ids = encode(tokenizer, "The film was", " great.")
    assert ids[-1] == tokenizer.eos_token_id
    assert ids[:-1] == (tokenizer("The film was", add_special_tokens=False)["input_ids"]
                        + tokenizer(" great.", add_special_tokens=False)["input_ids"])
    input_ids, mask = pad_batch([[5, 6, 7], [8]], pad_token_id=0, padding_side="left")
    assert input_ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    input_ids, mask = pad_batch([[5, 6, 7], [8]], pad_token_id=0, padding_side="right")
    assert input_ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def _scores_three_ways(reward_model):
    prompts = ["The film was", "I", "The acting and the music were"]
    responses = [" great and superb, a moving story.", " hated it.", " fine."]  # different lengths
    with torch.no_grad():
        right = reward_model(*reward_model.encode_batch(prompts, responses, padding_side="right"))
        left = reward_model(*reward_model.encode_batch(prompts, responses, padding_side="left"))
        alone = torch.cat([reward_model(*reward_model.encode_batch([p], [r])) for p, r in zip(prompts, responses)])
    return right, left, alone


def test_left_and_right_padding_give_the_same_scores_as_scoring_alone(tiny):
    reward_model = fresh_reward_model(tiny)
    right, left, alone = _scores_three_ways(reward_model)
    assert right.shape == (3,)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-5)
    assert alone.std() > 1e-3  # the three texts really score differently: the test could fail


def test_hub_gpt2_tokenizer_with_pad_equal_to_eos(tiny, gpt2_like_tokenizer_dir):
    tokenizer = load_tokenizer(gpt2_like_tokenizer_dir)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # as the hub's GPT-2 after load_tokenizer
    reward_model = fresh_reward_model(tiny, tokenizer=tokenizer)
    right, left, alone = _scores_three_ways(reward_model)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-5)
    # the score is read at the text's own EOS, not at the first pad/EOS id of a padded row: a row
    # right-padded with EOS ids scores as without them
    ids = encode(tokenizer, "The film was", " great.")
    input_ids, mask = pad_batch([ids, ids + [0, 0, 0]], tokenizer.pad_token_id)
    with torch.no_grad():
        scores = reward_model(input_ids, mask)
    torch.testing.assert_close(scores[0], alone.new_tensor(reward_model.score_texts(
        ["The film was"], [" great."], normalised=False)[0]), atol=1e-5, rtol=1e-5)


# -----------------------------------------------------------------------------
# training


def test_a_few_steps_separate_an_easy_toy_set(trained):
    assert trained.metrics["accuracy"] == 1.0  # held-out prompts
    assert trained.metrics["gold_accuracy"] == 1.0  # the gold labeler agrees with the toy labels
    assert trained.metrics["margin"] > 1.0
    losses = [h["loss"] for h in trained.history if "loss" in h]
    assert losses[-1] < 0.5 * losses[0]
    assert trained.history[0]["eval_loss"] == pytest.approx(math.log(2), abs=0.3)  # B = 0: near chance
    held_out = set(trained.eval_pairs["prompt"])
    assert held_out and not held_out & set(trained.train_pairs["prompt"])  # whole prompts held out
    rm = trained.reward_model
    good, bad = rm.score_texts(["The film was"] * 2, [" superb and great.", " boring and awful."])
    assert good > bad


def test_training_changes_only_the_adapter_and_head(tiny, trained):
    model, _ = tiny
    trunk = trained.reward_model.peft_model.base_model.model
    before = dict(model.named_parameters())
    changed_lora, n_base = 0, 0
    for name, param in trunk.named_parameters():
        if "lora_" in name:
            changed_lora += "lora_B" in name and param.abs().sum().item() > 0  # B starts at 0
            continue
        original = before[name.replace(".base_layer", "")]
        assert torch.equal(param, original), f"{name} changed"
        n_base += 1
    assert n_base == len(before) and changed_lora > 0
    assert not any("lora_" in n for n, _ in model.named_parameters())


def test_training_is_seeded(tiny, trained):
    model, tokenizer = tiny
    again = train_reward_model(toy_cfg(), toy_pairs(), trunk=model, tokenizer=tokenizer, progress=False)
    assert [h["loss"] for h in again.history if "loss" in h] == \
        pytest.approx([h["loss"] for h in trained.history if "loss" in h], abs=1e-5)


def test_split_by_prompt_and_gold_order():
    pairs = toy_pairs()
    train, eval = split_by_prompt(pairs, 0.34, seed=1)
    assert len(train) + len(eval) == len(pairs) and len(eval) == 2 * 16
    assert not set(train["prompt"]) & set(eval["prompt"])
    flipped = datasets.Dataset.from_list([{"prompt": "The film was", "chosen": BAD[0], "rejected": GOOD[0]},
                                          {"prompt": "The film was", "chosen": GOOD[0], "rejected": GOOD[0] + " "}])
    assert gold_order(flipped)[0] == -1 and gold_order(flipped)[1] == 0


def test_accuracy_against_gold_counts_untied_pairs_only(trained):
    rm = trained.reward_model
    pairs = datasets.Dataset.from_list([
        {"prompt": "The film was", "chosen": GOOD[0], "rejected": BAD[0]},  # labels agree with gold
        {"prompt": "The film was", "chosen": BAD[1], "rejected": GOOD[1]},  # a noisy label: gold disagrees
        {"prompt": "The film was", "chosen": GOOD[2], "rejected": GOOD[2] + " "},  # a gold tie
    ])
    metrics = evaluate_pairs(rm, pairs)
    assert metrics["n_gold_pairs"] == 2
    assert metrics["gold_accuracy"] == 1.0  # the RM ranks good over bad in both untied pairs
    assert metrics["label_gold_agreement"] == 0.5


# -----------------------------------------------------------------------------
# normalisation, saving, loading, the shared trunk


SAMPLES = [{"prompt": p, "completion": r} for p in PROMPTS for r in GOOD[:2] + BAD[:2] + [" it was a film."]]


def test_normalisation_gives_mean_0_std_1_on_the_samples(trained):
    rm = copy.deepcopy(trained.reward_model)
    stats = rm.normalise_on(SAMPLES)
    scores = torch.tensor(rm.score_texts([s["prompt"] for s in SAMPLES], [s["completion"] for s in SAMPLES]))
    assert scores.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert scores.std().item() == pytest.approx(1.0, abs=1e-5)
    assert stats["gain"] == pytest.approx(1 / stats["raw_std"])
    raw = rm.score_texts(["The film was"], [" great."], normalised=False)[0]
    assert rm.score_texts(["The film was"], [" great."])[0] == pytest.approx(stats["gain"] * raw + stats["bias"], abs=1e-5)


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    rm = copy.deepcopy(trained.reward_model)
    rm.normalise_on(SAMPLES)
    path = save_reward_model(rm, tmp_path_factory.mktemp("rm"), trained.config, trained.metrics)
    return rm, path


def test_save_then_load_gives_identical_scores(tiny, saved):
    rm, path = saved
    for name in ("adapter_config.json", "adapter_model.safetensors", HEAD_FILE, META_FILE):
        assert (path / name).is_file(), name
    loaded = load_reward_model(path, device="cpu")  # trunk rebuilt from reward_model.json ("tiny")
    prompts, responses = [s["prompt"] for s in SAMPLES], [s["completion"] for s in SAMPLES]
    assert loaded.score_texts(prompts, responses) == pytest.approx(rm.score_texts(prompts, responses), abs=1e-5)
    assert (loaded.gain, loaded.bias) == (rm.gain, rm.bias)
    assert not any(p.requires_grad for p in loaded.parameters())


@pytest.mark.filterwarnings("ignore::FutureWarning")  # peft on transformers 5: nothing to act on
def test_loading_into_a_shared_trunk_adds_no_second_backbone(tiny, saved):
    model, tokenizer = tiny
    rm, path = saved
    # stage 3's trunk: the policy's own LoRA adapter on the (here: bare) SFT model
    torch.manual_seed(1)
    trunk = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"],
                                                            fan_in_fan_out=True, task_type="CAUSAL_LM"),
                           adapter_name="policy")
    with torch.no_grad():  # a policy that has moved: its adapter must not leak into the reward
        for name, p in trunk.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    policy_flags = [(p, p.requires_grad) for p in trunk.parameters()]  # by tensor: loading renames modules
    params_before = {p.data_ptr() for p in trunk.parameters()}
    n_before = sum(p.numel() for p in trunk.parameters())

    shared = load_reward_model(path, trunk=trunk)
    assert shared.peft_model is trunk
    reward_params = {n: p for n, p in trunk.named_parameters() if f".{ADAPTER_NAME}." in n}
    n_reward_lora = sum(p.numel() for p in reward_params.values())
    assert n_reward_lora > 0
    # the RM's parameters are the trunk's (same storage) plus the reward adapter and the head: no copy
    assert sum(p.numel() for p in shared.parameters()) == n_before + n_reward_lora + shared.head.weight.numel() + 1
    assert params_before <= {p.data_ptr() for p in shared.parameters()}

    prompts, responses = [s["prompt"] for s in SAMPLES], [s["completion"] for s in SAMPLES]
    assert shared.score_texts(prompts, responses) == pytest.approx(rm.score_texts(prompts, responses), abs=1e-5)
    # scoring leaves the policy active and its trainability as it was
    assert trunk.active_adapter == "policy"
    assert all(p.requires_grad == flag for p, flag in policy_flags)
    assert any(flag for _, flag in policy_flags)  # the policy's adapter is trainable, and stays so
    with torch.no_grad():
        with trunk.disable_adapter():
            ref_logits = trunk(input_ids=torch.tensor([[5, 6, 7]])).logits
        assert torch.equal(ref_logits, model(input_ids=torch.tensor([[5, 6, 7]])).logits)


def test_score_texts_turns_dropout_off_and_restores_each_modules_mode(tiny):
    reward_model = fresh_reward_model(tiny)
    reward_model.peft_model.train()  # e.g. a policy sharing the trunk, in training mode
    reward_model.head.eval()
    first = reward_model.score_texts(["The film was"] * 2, [" great.", " awful."])
    assert first == reward_model.score_texts(["The film was"] * 2, [" great.", " awful."])  # no dropout noise
    assert all(m.training for m in reward_model.peft_model.modules()) and not reward_model.head.training


def test_using_adapter_restores_the_active_adapter_and_grad_flags(tiny):
    model, _ = tiny
    peft_model = add_reward_adapter(copy.deepcopy(model), reward_config(device="cpu"))
    peft_model.add_adapter("policy", LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    peft_model.set_adapter("policy")  # policy trainable, reward frozen
    flags = {n: p.requires_grad for n, p in peft_model.named_parameters()}
    with using_adapter(peft_model, ADAPTER_NAME):
        assert peft_model.active_adapter == ADAPTER_NAME
        assert {n: p.requires_grad for n, p in peft_model.named_parameters()} == flags
    assert peft_model.active_adapter == "policy"
    assert {n: p.requires_grad for n, p in peft_model.named_parameters()} == flags


def test_load_reward_model_explains_a_wrong_folder(tmp_path):
    with pytest.raises(Exception, match="not a saved reward model"):
        load_reward_model(tmp_path)


# -----------------------------------------------------------------------------
# rlhf_lab.pipeline: the simulated annotators top up a rankings file; the pairs for training


def test_top_up_rankings_fills_the_file_once_and_leaves_excluded_prompts(tiny, tmp_path):
    from rlhf_lab import pipeline

    model, tokenizer = tiny
    path = tmp_path / "rankings.jsonl"
    prompts = ["The film was", "The acting was", "I watched this", "The music is"]
    new = pipeline.top_up_rankings(path, model, tokenizer, 3, K=2, prompts=prompts,
                                   exclude_prompts=["The acting was"], seed=0)
    assert len(new) == 3 and pipeline.count_rankings(path) == 3
    assert [r["prompt"] for r in new] == ["The film was", "I watched this", "The music is"]
    assert len({r["annotator"] for r in new}) == 3  # the panel takes turns
    assert all(len(r["completions"]) == 2 and sorted(r["ranking"]) == [0, 1] for r in new)
    assert pipeline.top_up_rankings(path, model, tokenizer, 3, K=2, prompts=prompts) == []  # already full


def test_reward_model_pairs_holds_out_whole_prompts_and_caps_training_pairs():
    from rlhf_lab import pipeline

    train, held_out = pipeline.reward_model_pairs(toy_pairs(), reward_config(eval_fraction=0.34), max_pairs=40)
    assert len(train) == 40 and len(held_out) == 2 * 16
    assert not set(train["prompt"]) & set(held_out["prompt"])


def test_bf16_autocast_scores_close_to_fp32_and_head_stays_fp32(trained):
    """Under bf16 autocast (a GPU's default here, forced on the CPU for the test) the trunk runs in
    bf16; the head reads an fp32 hidden state, and the scores stay close to fp32's."""
    from rlhf_lab.utils import precision

    rm = trained.reward_model
    prompts, responses = [s["prompt"] for s in SAMPLES], [s["completion"] for s in SAMPLES]
    fp32 = torch.tensor(rm.score_texts(prompts, responses, normalised=False))
    with precision("bf16"):
        bf16 = torch.tensor(rm.score_texts(prompts, responses, normalised=False))
    assert not torch.equal(bf16, fp32)  # autocast did run
    assert (bf16 - fp32).abs().max().item() < 0.05 * fp32.abs().max().item() + 0.05
    assert rm.head.weight.dtype == torch.float32


# -----------------------------------------------------------------------------
# the reward-model stage: one copy of the backbone; normalised on the run's own prompts (issue 13)


def test_train_reward_model_can_wrap_the_trunk_itself(tiny):
    """copy_trunk=False puts the reward adapter on the given model (no copy of the backbone), as stage 3 shares one
    trunk; by default the trunk is copied and left as it was."""
    model, tokenizer = tiny
    trunk = copy.deepcopy(model)
    result = train_reward_model(toy_cfg(epochs=1), toy_pairs(), trunk=trunk, tokenizer=tokenizer, progress=False,
                                copy_trunk=False)
    assert result.reward_model.peft_model.base_model.model is trunk
    assert any("lora_" in n for n, _ in trunk.named_parameters())


def test_the_rm_stage_holds_one_copy_of_the_trunk(tiny_run, tmp_path, capsys, monkeypatch):
    """`rlhf-lab rm`: the merged SFT model is the only GPT-2 alive while the reward model trains (before: the SFT
    model, its merged copy, and train_reward_model's copy of that: three)."""
    import gc

    from faults import RM, cli, copy_run
    from transformers import GPT2LMHeadModel

    import rlhf_lab.reward_model as rm_lib

    def alive():
        gc.collect()
        return sum(type(o) is GPT2LMHeadModel for o in gc.get_objects())

    run = copy_run(tiny_run, tmp_path)
    import shutil
    shutil.rmtree(run / "03_reward_model")
    counts, add = [], rm_lib.add_reward_adapter
    monkeypatch.setattr(rm_lib, "add_reward_adapter", lambda *a, **k: counts.append(alive()) or add(*a, **k))
    before = alive()
    code, _, err = cli(capsys, "rm", "--fast", *RM, "--out", run)
    assert code == 0, err
    assert counts == [before + 1]
    norm = rm_lib.reward_model_info(run / "03_reward_model" / "reward_model")["metrics"]["normalisation"]
    assert norm["prompts"] == "tiny" and norm["n"] == 64


def test_normalisation_samples_the_runs_own_held_out_prompts(tiny, tmp_path):
    from rlhf_lab import pipeline
    from rlhf_lab.loading import load_prompts

    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(f'{{"text": "Zebra review {i} says the film was fine."}}\n' for i in range(30)))
    samples = pipeline.normalisation_samples(*tiny, 5, seed=0, prompts=str(data))
    held_out = set(load_prompts(data, "validation")["prompt"])
    assert len(samples) == 5 and {s["prompt"] for s in samples} <= held_out
    assert all(s["prompt"].startswith("Zebra") for s in samples)


def test_gold_pairs_keep_every_untied_pair_in_golds_order():
    from rlhf_lab.gold import gold_score
    from rlhf_lab.reward_model import gold_pairs

    items = [{"prompt": "The film was", "completions": [" superb.", " awful.", " superb.", " fine."]}]
    pairs = gold_pairs(items)
    # 6 pairs of 4 completions, less the identical pair (" superb." twice: a tie)
    assert len(pairs) == 5
    for row in pairs:
        assert gold_score(row["prompt"] + row["chosen"]) > gold_score(row["prompt"] + row["rejected"])
    assert gold_order(pairs) == [1] * 5


def test_size_study_trains_each_trunk_and_a_random_start(tiny):
    """rm_lib.size_study: the first blocks of the pretrained trunk, and the same shape from random weights,
    on the same pairs; a random trunk is not the pretrained one, and the trunk given is never changed."""
    from rlhf_lab.reward_model import random_trunk, size_study

    model, tokenizer = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = random_trunk(model, seed=0)
    assert not torch.equal(fresh.transformer.h[0].attn.c_attn.weight, model.transformer.h[0].attn.c_attn.weight)
    assert torch.equal(random_trunk(model, seed=0).transformer.wte.weight, fresh.transformer.wte.weight)  # seeded
    train, held_out = split_by_prompt(toy_pairs(), 0.34, seed=0)
    rows = size_study(toy_cfg(epochs=1), train, held_out, model, tokenizer, layers=(1, 2), seeds=(3,),
                      progress=False)
    assert [(r["init"], r["layers"], r["seed"]) for r in rows] == [("pretrained", 1, 3), ("pretrained", 2, 3),
                                                                   ("random", 2, 3)]
    assert rows[0]["trunk parameters"] < rows[1]["trunk parameters"] == rows[2]["trunk parameters"]
    assert all(0 <= r["gold_accuracy"] <= 1 and r["eval_pairs"] == len(held_out) for r in rows)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_size_study_trains_other_trunks_as_given(tiny):
    """size_study(others=...): a trunk it cannot make by truncating (here: the tiny GPT-2 itself, standing in
    for a larger pretrained one) is trained with every seed under its own label, from a copy; a trunk whose
    vocabulary does not cover the tokenizer is refused before any training, with the command that makes one."""
    from rlhf_lab.reward_model import size_study, truncate_trunk
    from rlhf_lab.utils import LabError

    model, tokenizer = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train, held_out = split_by_prompt(toy_pairs(), 0.34, seed=0)
    rows = size_study(toy_cfg(epochs=1), train, held_out, model, tokenizer, layers=(1,), seeds=(3, 4),
                      random_init=False, others={"pretrained, no SFT": [truncate_trunk(model, 2), model]},
                      progress=False)
    assert [(r["init"], r["layers"], r["seed"]) for r in rows] == [
        ("pretrained", 1, 3), ("pretrained", 1, 4), ("pretrained, no SFT", 2, 3), ("pretrained, no SFT", 2, 4),
        ("pretrained, no SFT", model.config.n_layer, 3), ("pretrained, no SFT", model.config.n_layer, 4)]
    assert rows[-1]["trunk parameters"] == sum(p.numel() for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())

    small_vocab = truncate_trunk(model, 1)
    small_vocab.config.vocab_size = len(tokenizer) - 1
    with pytest.raises(LabError, match=r"vocabulary of .* smaller than the tokenizer's .*--n-layer"):
        size_study(toy_cfg(epochs=1), train, held_out, model, tokenizer, layers=(1,), seeds=(3,),
                   random_init=False, others={"pretrained, no SFT": [small_vocab]}, progress=False)
