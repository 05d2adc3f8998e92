"""rlhf_lab/dpo.py on the tiny GPT-2: DPO's invariants at the start, what trains, resume, the whole stage.

The loss itself (DPO, IPO, implicit rewards) is pinned on hand-made tensors in test_ppo_math.py; here
the trainer around it runs on a real model, on pairs of the tiny model's own samples ranked by gold.
"""

import copy
import json
import math

import pytest
import torch

from rlhf_lab.dpo import (DPOConfig, DPOTrainer, collate_responses, dpo_config, encode_response, load_dpo,
                          reward_model_split, sequence_logps, train_dpo)
from rlhf_lab.ppo import POLICY, TrunkRewardModel, add_policy_adapter, forward_response
from rlhf_lab.reward_model import RewardConfig, RewardModel, add_reward_adapter, load_reward_model, new_reward_head, \
    save_reward_model
from rlhf_lab.utils import ConfigError, LabError, set_seed


@pytest.fixture(scope="module")
def gold_pairs(tiny):
    """(train, held_out): K = 4 samples of the tiny model for 48 prompts, ranked by the gold labeler
    (a perfect annotator), as pairs; 8 whole prompts held out."""
    from rlhf_lab.gold import gold_score
    from rlhf_lab.loading import load_prompts
    from rlhf_lab.pipeline import sample_items
    from rlhf_lab.rankings import rankings_to_pairs
    from rlhf_lab.reward_model import split_by_prompt

    model, tokenizer = tiny
    items = sample_items(model, tokenizer, load_prompts("tiny", "train")["prompt"][:48], K=4, seed=0,
                         max_new_tokens=24)
    records = [{"prompt": it["prompt"], "completions": it["completions"],
                "ranking": sorted(range(4), key=lambda i: -gold_score(it["prompt"] + it["completions"][i]))}
               for it in items]
    return split_by_prompt(rankings_to_pairs(records), 1 / 6, seed=0)


def make_trainer(tiny, gold_pairs, out_dir=None, with_reward=None, **overrides):
    """A DPO trainer on a copy of the tiny model (the "SFT trunk" here), with a reward model on it if given."""
    model, tokenizer = tiny
    cfg = dpo_config(**(dict(epochs=2, batch_size=24, eval_every=4, checkpoint_every=2, device="cpu") | overrides))
    set_seed(cfg.seed)
    policy = add_policy_adapter(copy.deepcopy(model), cfg)
    reward = (TrunkRewardModel(load_reward_model(with_reward, trunk=policy, tokenizer=tokenizer))
              if with_reward is not None else None)
    return DPOTrainer(cfg, policy, tokenizer, *gold_pairs, out_dir=out_dir), reward


def snapshot(module):
    return {name: p.detach().clone() for name, p in module.named_parameters()}


@pytest.fixture(scope="module")
def reward_dir(tiny, tmp_path_factory):
    """A saved reward model on the bare tiny trunk, its adapter moved off zero so it matters."""
    model, tokenizer = tiny
    set_seed(123)
    peft_model = add_reward_adapter(copy.deepcopy(model), RewardConfig())
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    reward_model = RewardModel(peft_model, head=new_reward_head(model.config.n_embd), tokenizer=tokenizer)
    return save_reward_model(reward_model, tmp_path_factory.mktemp("reward") / "rm",
                             RewardConfig(trunk="tiny", sft_adapter=None))


# -----------------------------------------------------------------------------
# the batch: the rollouts' layout, one log-prob per response


def test_sequence_logps_are_the_response_tokens_summed(tiny):
    model, tokenizer = tiny
    items = [encode_response(tokenizer, "The plot", " was dull."), encode_response(tokenizer, "I", " loved it.")]
    assert items[0][1][-1] == tokenizer.eos_token_id  # the response ends with EOS: the policy writes it
    batch = collate_responses(items, tokenizer.pad_token_id, "cpu")
    assert batch["attention_mask"][1, 0] == 0 and batch["mask"].sum(1).tolist() == [len(r) for _, r in items]
    with torch.no_grad():
        got = sequence_logps(model, batch)                                          # (2,)
        for i, (prompt, response) in enumerate(items):  # each sequence alone, no padding
            ids = torch.tensor([prompt + response])
            logits = model(ids).logits[0, len(prompt) - 1:-1]                       # (T, V)
            alone = torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None]).sum()
            assert got[i].item() == pytest.approx(alone.item(), abs=1e-4)


# -----------------------------------------------------------------------------
# the invariants at the start


def test_loss_is_log_2_and_implicit_rewards_0_before_training(tiny, gold_pairs):
    trainer, _ = make_trainer(tiny, gold_pairs)
    held_out = trainer.evaluate_pairs()
    assert held_out["loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert held_out["chosen_reward"] == 0.0 and held_out["rejected_reward"] == 0.0 and held_out["margin"] == 0.0
    assert held_out["accuracy"] == 0.0 and held_out["gold_accuracy"] == 0.0  # ties count as wrong
    assert held_out["n_pairs"] == len(gold_pairs[1]) > 30
    first = trainer.step()  # the reference runs on the very same batch: policy = reference to the bit
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-7) and first["margin"] == 0.0
    assert trainer.step()["loss"] != pytest.approx(math.log(2), abs=1e-6)  # the policy moved


def test_ipo_starts_at_its_margin_squared(tiny, gold_pairs):
    trainer, _ = make_trainer(tiny, gold_pairs, loss_type="ipo", beta=0.1)
    assert trainer.evaluate_pairs()["loss"] == pytest.approx((1 / (2 * 0.1)) ** 2)  # (0 - 1 / (2 tau))^2 = 25
    losses = [trainer.step()["loss"] for _ in range(6)]
    assert losses[0] == pytest.approx(25.0) and losses[-1] < losses[0] - 0.5


def test_update_changes_the_policy_adapter_only(tiny, gold_pairs, reward_dir):
    trainer, reward = make_trainer(tiny, gold_pairs, with_reward=reward_dir)
    before, head_before = snapshot(trainer.model), snapshot(reward.reward_model.head)
    trainer.step()
    trainer.step()
    after = snapshot(trainer.model)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and any("lora_B" in name for name in changed)
    assert all(f".{POLICY}." in name for name in changed), sorted(changed)[:3]  # trunk, reward adapter: bit-identical
    assert all(torch.equal(head_before[k], v) for k, v in snapshot(reward.reward_model.head).items())
    assert trainer.model.active_adapter == POLICY


# -----------------------------------------------------------------------------
# it learns: the pairs, then the samples


def test_dpo_orders_held_out_pairs_and_raises_the_gold_score_above_sft(tiny, gold_pairs):
    """Two epochs on ~250 gold-ranked pairs, in seconds: the implicit reward orders held-out pairs as gold
    does more often than not, and the policy's samples score higher on gold than the SFT model's."""
    from rlhf_lab.evaluation import compare_with_sft
    from rlhf_lab.loading import load_prompts

    trainer, _ = make_trainer(tiny, gold_pairs, lr=3e-3)
    history = trainer.train(progress=False)
    assert history[0]["step"] == 0 and history[0]["eval_loss"] == pytest.approx(math.log(2), abs=1e-7)
    final = history[-1]
    assert final["step"] == trainer.total_steps == len(trainer.batches)
    assert final["eval_gold_accuracy"] > 0.5 and final["eval_loss"] < math.log(2) - 0.03
    summary, samples = compare_with_sft(trainer.model, trainer.tokenizer,
                                        load_prompts("tiny", "validation", limit=64)["prompt"], name="dpo",
                                        max_new_tokens=24, batch_size=32)
    assert summary["gold_score_dpo"] > summary["gold_score_sft"] + 0.25, summary
    assert 0.0 < summary["kl"] < 20.0 and {r["model"] for r in samples} == {"sft", "dpo"}


# -----------------------------------------------------------------------------
# checkpoints and the whole stage


def test_resume_continues_to_the_same_numbers(tiny, gold_pairs, tmp_path):
    straight, _ = make_trainer(tiny, gold_pairs, out_dir=tmp_path / "straight")
    straight.train(steps=9, progress=False)
    first, _ = make_trainer(tiny, gold_pairs, out_dir=tmp_path / "killed")
    first.train(steps=6, progress=False)  # "killed" after 6 steps; checkpoint at 6
    resumed, _ = make_trainer(tiny, gold_pairs, out_dir=tmp_path / "killed")
    assert resumed.load_checkpoint() and resumed.step_count == 6
    resumed.train(steps=9, progress=False)
    timing = {"seconds", "pairs_per_second"}
    for a, b in zip(straight.history, resumed.history, strict=True):
        assert {k: v for k, v in a.items() if k not in timing} == pytest.approx(
            {k: v for k, v in b.items() if k not in timing}, abs=1e-6)
    for (name, p), (_, q) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    for run in ("straight", "killed"):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == list(range(10))  # step 0: the held-out pairs
    other, _ = make_trainer(tiny, gold_pairs, out_dir=tmp_path / "killed", beta=0.2)
    with pytest.raises(LabError, match="beta=0.3"):
        other.load_checkpoint()


@pytest.fixture(scope="module")
def sft_dir(tiny, tmp_path_factory):
    """An SFT adapter on disk (untrained: B = 0, so the trunk is the tiny model itself)."""
    from rlhf_lab.sft import SFTConfig, SFTResult, add_lora, save_sft

    model, tokenizer = tiny
    set_seed(0)
    peft_model = add_lora(copy.deepcopy(model), SFTConfig())
    return save_sft(SFTResult(model=peft_model, tokenizer=tokenizer, config=SFTConfig()),
                    tmp_path_factory.mktemp("sft") / "adapter")


def test_train_dpo_writes_a_run_that_loads(tiny, gold_pairs, sft_dir, reward_dir, tmp_path):
    import shutil

    rm = shutil.copytree(reward_dir, tmp_path / "rm")  # the test reward model, recorded as on sft_dir's trunk
    meta = json.loads((rm / "reward_model.json").read_text())
    meta["trunk"] = {"model": "tiny", "sft_adapter": str(sft_dir)}
    (rm / "reward_model.json").write_text(json.dumps(meta))
    cfg = dpo_config(sft=str(sft_dir), reward_model=str(rm), epochs=1, batch_size=24, eval_prompts=8,
                     eval_batch_size=8, max_new_tokens=12, checkpoint_every=4, device="cpu")
    result = train_dpo(cfg, *gold_pairs, out_dir=tmp_path / "dpo", progress=False)
    s = result.summary
    assert s["algo"] == "dpo" and s["steps"] == result.trainer.total_steps
    assert s["train_pairs"] == len(gold_pairs[0]) and s["eval_pairs"] == len(gold_pairs[1])
    assert s["heldout_loss_before"] == pytest.approx(math.log(2), abs=1e-7) and s["heldout_accuracy_before"] == 0.0
    for key in ("gold_score_sft", "gold_score_dpo", "gold_std_sft", "reward_score_sft", "reward_score_dpo", "kl",
                "gold_gain_in_sft_std", "heldout_loss", "heldout_gold_accuracy", "pairs_per_second", "seconds"):
        assert isinstance(s[key], float) and math.isfinite(s[key]), key
    assert s["parameter_memory"]["backbone"] == sum(p.numel() * p.element_size() for p in tiny[0].parameters())
    for name in ("adapter_config.json", "adapter_model.safetensors", "dpo_config.json", "dpo_result.json",
                 "metrics.jsonl", "checkpoint/trainer_state.pt"):
        assert (tmp_path / "dpo" / name).is_file(), name
    assert {r["model"] for r in result.samples} == {"sft", "dpo"} and len(result.samples) == 16

    model, tokenizer, reward = load_dpo(tmp_path / "dpo", device="cpu", with_reward=True)
    assert model.active_adapter == POLICY and set(model.peft_config) == {POLICY, "reward"}
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        expected, _ = forward_response(result.trainer.model, ids, torch.ones_like(ids), 2)
        got, _ = forward_response(model, ids, torch.ones_like(ids), 2)
    assert torch.allclose(expected, got, atol=1e-5)


def test_reward_model_split_is_the_reward_models(tmp_path):
    """DPO's pairs are those the reward model trained on: its eval_fraction and seed, at most 2,000."""
    from rlhf_lab.pipeline import reward_model_pairs
    from rlhf_lab.preferences import load_preferences

    rankings = tmp_path / "rankings.jsonl"
    rankings.write_text("".join(json.dumps({"prompt": f"Review {i}:", "completions": [" great.", " dull.", " fine."],
                                            "ranking": [0, 2, 1], "annotator": "test",
                                            "time": "2026-01-01T00:00:00+00:00"}) + "\n" for i in range(20)))
    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "reward_model.json").write_text(json.dumps({"config": {"eval_fraction": 0.25, "seed": 3}}))
    train, held_out = reward_model_split(rm, rankings)
    expected_train, expected_held_out = reward_model_pairs(load_preferences(rankings),
                                                           RewardConfig(eval_fraction=0.25, seed=3))
    assert train["prompt"] == expected_train["prompt"] and held_out["prompt"] == expected_held_out["prompt"]
    assert len(held_out) == 15 and len(train) == 45 and not set(train["prompt"]) & set(held_out["prompt"])


def test_config_errors_speak_to_the_learner(tiny, gold_pairs):
    with pytest.raises(LabError, match="no field 'kl_coef'"):
        dpo_config(kl_coef=0.1)
    with pytest.raises(ConfigError, match="DPOConfig.beta = 0: it must be > 0"):
        DPOConfig(beta=0)
    with pytest.raises(ConfigError, match="one of sigmoid, ipo"):
        DPOConfig(loss_type="hinge")
    train, _ = gold_pairs
    with pytest.raises(LabError, match="no training pairs"):
        make_trainer(tiny, (train.select([]), None))
    with pytest.raises(LabError, match="lack the columns"):
        make_trainer(tiny, (train.remove_columns("rejected"), None))
