"""rlhf_lab/ppo.py on the tiny GPT-2: the PPO invariants, the shared trunk, checkpoints.

The loss math itself (GAE, clipped losses, KL-shaped reward) is pinned on hand-made tensors in
test_ppo_math.py; here the loop around it is checked on a real model, a few episodes at a time.
"""

import copy
import json
import math
import shutil

import pytest
import torch
from peft import PeftModel

from rlhf_lab.generation import generate_tokens
from rlhf_lab.loading import load_prompts
from rlhf_lab.ppo import (
    POLICY,
    GoldReward,
    PPOTrainer,
    TrunkRewardModel,
    add_policy_adapter,
    causal_lm,
    forward_response,
    parameter_memory,
    ppo_config,
    sample_from,
    sample_models,
    sample_responses,
    use_adapter,
)
from rlhf_lab.ppo_math import logprobs_from_logits
from rlhf_lab.reward_model import (
    RewardConfig,
    RewardModel,
    add_reward_adapter,
    load_reward_model,
    new_reward_head,
    save_reward_model,
)
from rlhf_lab.utils import LabError, cxx_compiler, set_seed


@pytest.fixture(scope="module")
def prompts():
    return load_prompts("tiny", "train")["prompt"][:64]


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
    reward_model = RewardModel(peft_model, head=new_reward_head(model.config.n_embd), gain=2.0, bias=-0.5,
                               tokenizer=tokenizer)
    return save_reward_model(reward_model, tmp_path_factory.mktemp("reward") / "rm",
                             RewardConfig(trunk="tiny", sft_adapter=None))


def make_trainer(tiny, prompts, reward_dir=None, out_dir=None, **overrides):
    """A trainer on a copy of the tiny model: policy adapter + (reward adapter and head, or gold)."""
    model, tokenizer = tiny
    settings = dict(steps=2, batch_size=8, minibatch_size=4, ppo_epochs=2, max_new_tokens=12, norm_episodes=16,
                    checkpoint_every=1, device="cpu", lr=1e-3)
    cfg = ppo_config(**(settings | overrides))
    set_seed(cfg.seed)
    policy = add_policy_adapter(copy.deepcopy(model), cfg)
    if reward_dir is not None:
        reward = TrunkRewardModel(load_reward_model(reward_dir, trunk=policy, tokenizer=tokenizer))
    else:
        reward = GoldReward()
    return PPOTrainer(cfg, policy, tokenizer, reward, prompts, out_dir=out_dir)


def snapshot(module):
    return {name: p.detach().clone() for name, p in module.named_parameters()}


# -----------------------------------------------------------------------------
# the invariants of the first step


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_first_minibatch_ratio_is_one_and_kl_is_zero(tiny, prompts, reward_dir, temperature):
    trainer = make_trainer(tiny, prompts, reward_dir, temperature=temperature)
    # LoRA's B starts at 0: the policy is the reference, token for token
    batch = trainer.rollout(trainer.batch_prompts(0))
    assert torch.equal(batch.logprobs, batch.ref_logprobs)
    metrics = trainer.step()
    assert metrics["kl"] == 0.0
    first = trainer.minibatch_stats[0]
    assert first["epoch"] == 0
    assert abs(first["ratio_mean"] - 1.0) < 1e-6 and abs(first["ratio_max"] - 1.0) < 1e-6
    assert abs(first["approx_kl"]) < 1e-7 and first["clipfrac"] == 0.0
    # after the first gradient step the policy has moved: later minibatches see ratios != 1
    assert max(abs(s["ratio_max"] - 1.0) for s in trainer.minibatch_stats[1:]) > 1e-6


def test_left_padded_batch_logprobs_equal_each_sequence_alone(tiny, prompts):
    trainer = make_trainer(tiny, prompts, max_new_tokens=10)
    with torch.no_grad():  # a non-zero policy adapter, so that LoRA is in the computation
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
        for p in trainer.value_head.parameters():
            p.normal_(0.0, 0.1)
    chosen = ["The plot", "I had heard good things about this film and", "Although the acting"]
    batch = trainer.rollout(chosen)
    assert (batch.attention_mask[:, 0] == 0).any(), "the batch should be left-padded"
    for i, prompt in enumerate(chosen):
        n = int(batch.mask[i].sum())
        query = trainer.tokenizer(prompt, return_tensors="pt")["input_ids"]                     # (1, Tq_i)
        ids = torch.cat([query, batch.response[i:i + 1, :n]], dim=1)                          # (1, Tq_i + n)
        with torch.no_grad():
            logits, values = forward_response(trainer.model, ids, torch.ones_like(ids), query.shape[1],
                                              trainer.value_head)
            alone = logprobs_from_logits(logits, batch.response[i:i + 1, :n])                 # (1, n)
            with use_adapter(trainer.model, None):
                ref_logits, _ = forward_response(trainer.model, ids, torch.ones_like(ids), query.shape[1])
        assert torch.allclose(batch.logprobs[i, :n], alone[0], atol=1e-5)
        assert torch.allclose(batch.values[i, :n], values[0], atol=1e-5)
        ref_alone = logprobs_from_logits(ref_logits, batch.response[i:i + 1, :n])             # (1, n)
        assert torch.allclose(batch.ref_logprobs[i, :n], ref_alone[0], atol=1e-5)


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_fused_first_pass_is_the_separate_pass(tiny, prompts, reward_dir, algo, monkeypatch):
    """One minibatch per epoch: step() takes the old log-probs, values and entropy from the update's first
    forward pass (fused_first_pass) instead of a no-grad pass of its own. Same update, same numbers as
    with the separate pass, and the ratio on that first minibatch is exactly 1."""
    extra = {"algo": algo, "group_size": 4} if algo == "grpo" else {}
    runs = {}
    for fused in (True, False):
        trainer = make_trainer(tiny, prompts, reward_dir, minibatch_size=8, **extra)
        if not fused:
            monkeypatch.setattr(trainer, "fused_first_pass", lambda: False)
        assert trainer.fused_first_pass() is fused
        trainer.train(progress=False)
        first = trainer.minibatch_stats  # of the last step; the first step's are in history
        runs[fused] = (trainer.history, snapshot(trainer.model), first)
    (fused_history, fused_weights, _), (plain_history, plain_weights, _) = runs[True], runs[False]
    for a, b in zip(fused_history, plain_history):
        assert a["ratio_max"] >= 1.0
        for key in ("kl", "entropy", "pg_loss", "approx_kl", "gold", "score", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    for name in plain_weights:
        assert torch.allclose(fused_weights[name], plain_weights[name], atol=1e-6), name
    trainer = make_trainer(tiny, prompts, reward_dir, minibatch_size=8, **extra)
    trainer.step()
    assert trainer.minibatch_stats[0]["ratio_max"] == 1.0 and trainer.minibatch_stats[0]["ratio_mean"] == 1.0
    assert trainer.minibatch_stats[0]["approx_kl"] == 0.0
    # more than one minibatch per epoch, or micro-batches: the separate pass
    assert not make_trainer(tiny, prompts, reward_dir, minibatch_size=4).fused_first_pass()
    assert not make_trainer(tiny, prompts, reward_dir, minibatch_size=8, micro_batch_size=4).fused_first_pass()


def test_stored_logprobs_are_those_of_the_sampling_distribution(tiny, prompts):
    """At temperature T the rollout's log-probs are log softmax(logits / T): the distribution the
    tokens were drawn from (N details), as the KV-cache sampling loop saw it."""
    trainer = make_trainer(tiny, prompts, temperature=0.7)
    with torch.no_grad():  # a non-zero policy adapter, so that LoRA is in the computation
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    chosen = list(prompts[:6]) + ["The plot", "I had heard good things about this film and"]  # padding
    torch.manual_seed(0)
    rollout, sampled = sample_responses(trainer.model, trainer.tokenizer, chosen, trainer.cfg.max_new_tokens,
                                        temperature=0.7, return_logprobs=True)
    torch.manual_seed(0)
    batch = trainer.rollout(chosen)  # the same draws again, then the one-pass recomputation
    assert torch.equal(batch.response, rollout.response)
    mask = batch.mask.bool()
    assert torch.allclose(batch.logprobs[mask], sampled[mask], atol=1e-5)
    # had the log-probs forgotten the temperature, they would be far off
    with torch.no_grad():
        logits, _ = forward_response(trainer.model, batch.input_ids, batch.attention_mask, batch.query_length)
    at_1 = logprobs_from_logits(logits, batch.response, temperature=1.0)
    assert (at_1[mask] - sampled[mask]).abs().max() > 0.05


def test_sampling_loop_continues_as_generate_does(tiny):
    """Near temperature 0 the loop is greedy: it must continue left-padded prompts exactly as
    transformers' generate() does (KV cache, position ids from the mask, cut at EOS)."""
    model, tokenizer = tiny
    chosen = ["The plot", "I had heard good things about this film and", "Although the acting"]
    ours = sample_responses(model, tokenizer, chosen, max_new_tokens=20, temperature=1e-4)
    theirs = generate_tokens(model, tokenizer, chosen, max_new_tokens=20, greedy=True)
    T = theirs.response.shape[1]
    assert torch.equal(ours.response_mask[:, :T], theirs.response_mask)
    assert torch.equal(ours.response[:, :T][ours.response_mask[:, :T].bool()],
                       theirs.response[theirs.response_mask.bool()])


def test_sample_from_draws_the_given_distribution():
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2]]).repeat(20000, 1)  # (B, V)
    torch.manual_seed(0)
    counts = torch.bincount(sample_from(probs), minlength=4).float() / 20000
    assert counts[1] == 0.0  # a token of probability 0 is never drawn
    assert torch.allclose(counts, probs[0], atol=0.015)  # ~4 standard errors


# -----------------------------------------------------------------------------
# what trains and what stays frozen


def test_update_changes_the_policy_adapter_only(tiny, prompts, reward_dir):
    trainer = make_trainer(tiny, prompts, reward_dir)
    reward_model = trainer.reward.reward_model
    before = snapshot(trainer.model)
    head_before = snapshot(reward_model.head)
    value_before = snapshot(trainer.value_head)
    trainer.step()
    trainer.step()
    after = snapshot(trainer.model)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed, "the update changed nothing"
    assert all(f".{POLICY}." in name for name in changed), sorted(changed)[:3]  # trunk and reward untouched
    assert any("lora_B" in name for name in changed)
    assert not any(".reward." in name for name in changed)
    assert all(torch.equal(head_before[k], v) for k, v in snapshot(reward_model.head).items())
    assert any(not torch.equal(value_before[k], v) for k, v in snapshot(trainer.value_head).items())


def test_reward_scoring_leaves_the_policy_trainable_and_the_reward_frozen(tiny, prompts, reward_dir):
    trainer = make_trainer(tiny, prompts, reward_dir)
    with torch.no_grad():  # make the policy different from the trunk, so a wrong adapter would show
        for name, p in trainer.model.named_parameters():
            if f"lora_B.{POLICY}" in name:
                p.normal_(0.0, 0.05)
    rollout = generate_tokens(trainer.model, trainer.tokenizer, list(prompts[:5]), max_new_tokens=10)
    shared = trainer.reward.score(None, None, rollout)                                       # (B,)
    for name, p in trainer.model.named_parameters():
        assert p.requires_grad == (f".{POLICY}." in name), name
    assert trainer.model.active_adapter == POLICY
    assert not any(p.requires_grad for p in trainer.reward.reward_model.head.parameters())
    # the same reward model on a trunk of its own scores the same: the "reward" adapter was active
    alone = load_reward_model(reward_dir, trunk=copy.deepcopy(tiny[0]), tokenizer=trainer.tokenizer)
    with torch.no_grad():
        ids = torch.cat([rollout.query, rollout.response], 1)
        mask = torch.cat([rollout.query_mask, rollout.response_mask], 1)
        expected = alone.normalised(alone(ids, mask))
    assert torch.allclose(shared, expected, atol=1e-5)


def test_use_adapter_switches_and_restores_every_flag(tiny, prompts, reward_dir):
    trainer = make_trainer(tiny, prompts, reward_dir)
    model = trainer.model
    model.set_adapter(POLICY, inference_mode=True)  # e.g. a loaded policy, only sampled from
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    ids = torch.tensor([[5, 6, 7, 8]])
    for adapter in ("reward", None):
        with use_adapter(model, adapter):
            assert model.active_adapter == (adapter or POLICY)
            assert not any(p.requires_grad for p in model.parameters())  # nothing may train here
            forward_response(model, ids, torch.ones_like(ids), 2)
        assert model.active_adapter == POLICY
        assert {name: p.requires_grad for name, p in model.named_parameters()} == flags


def test_fused_gelu_computes_what_gelu_new_computes(tiny):
    from rlhf_lab.ppo import use_fused_gelu

    model = copy.deepcopy(tiny[0])
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        before = model(ids).logits
        assert use_fused_gelu(model) == model.config.n_layer
        after = model(ids).logits
    assert torch.allclose(before, after, atol=1e-4) and not torch.equal(before, after)


def test_one_copy_of_the_backbone(tiny, prompts, reward_dir):
    trainer = make_trainer(tiny, prompts, reward_dir)
    reward_model = trainer.reward.reward_model
    one_gpt2 = sum(p.numel() * p.element_size() for p in tiny[0].parameters())  # tied wte/lm_head once
    memory = parameter_memory(trainer.model, heads=[trainer.value_head, reward_model.head])
    assert memory["backbone"] == one_gpt2
    lora = sum(p.numel() * 4 for n, p in trainer.model.named_parameters() if "lora_" in n)
    assert memory["adapters"] == lora and memory["heads"] == 2 * (128 + 1) * 4
    # policy, reference and reward model read the very same storages
    policy_ptrs = {p.data_ptr() for p in trainer.model.parameters()}
    reward_ptrs = {p.data_ptr() for p in reward_model.parameters()}
    assert reward_ptrs - policy_ptrs == {p.data_ptr() for p in reward_model.head.parameters()}
    assert causal_lm(reward_model.peft_model) is causal_lm(trainer.model)


# -----------------------------------------------------------------------------
# the KL controller, the no-EOS score, normalisation


def test_adaptive_controller_moves_beta_the_right_way(tiny, prompts, reward_dir):
    trainer = make_trainer(tiny, prompts, reward_dir, kl_coef=0.2, kl_target=1.0, kl_horizon=80, lr=1e-2)
    B = trainer.cfg.batch_size

    def expected(beta, kl, target):
        return beta * (1 + min(max(kl / target - 1, -0.2), 0.2) * B / 80)

    m1 = trainer.step()  # KL = 0 < target: beta goes down
    assert m1["kl"] == 0.0 and m1["kl_coef"] == 0.2
    assert trainer.kl_ctl.value == pytest.approx(expected(0.2, 0.0, 1.0)) and trainer.kl_ctl.value < 0.2
    trainer.kl_ctl.target = 1e-3  # now the policy has moved: KL > target, beta goes up
    beta = trainer.kl_ctl.value
    m2 = trainer.step()
    assert m2["kl"] > 1e-3, "the policy should have moved away from the reference after an update"
    assert m2["kl_coef"] == beta
    assert trainer.kl_ctl.value == pytest.approx(expected(beta, m2["kl"], 1e-3)) and trainer.kl_ctl.value > beta


def test_micro_batches_make_the_same_update(tiny, prompts, reward_dir):
    """Gradient accumulation over micro-batches is the same update as one pass over the minibatch."""
    whole = make_trainer(tiny, prompts, reward_dir, minibatch_size=8)
    m1 = whole.step()
    parts = make_trainer(tiny, prompts, reward_dir, minibatch_size=8, micro_batch_size=3)  # 3 + 3 + 2
    m2 = parts.step()  # (each trainer seeds the RNG: same prompts, same samples)
    for key in ("kl", "approx_kl", "clipfrac", "ratio_mean", "ratio_max", "pg_loss", "vf_loss", "grad_norm"):
        assert m1[key] == pytest.approx(m2[key], abs=1e-5), key
    for (name, p), (_, q) in zip(whole.model.named_parameters(), parts.model.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


@pytest.mark.slow
@pytest.mark.skipif(cxx_compiler() is None, reason="torch.compile on the CPU needs a C++ compiler (apt: g++)")
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inductor imports
def test_compiled_forward_makes_the_same_update(tiny, prompts, reward_dir):
    """compile=True (torch.compile of the policy's forward pass) is the same run as without it: the first
    minibatch's ratio is 1, and the metrics and the adapter after a step agree with eager to float noise."""
    eager = make_trainer(tiny, prompts, reward_dir)
    m1 = eager.step()
    compiled = make_trainer(tiny, prompts, reward_dir, compile=True)
    m2 = compiled.step()  # (each trainer seeds the RNG: same prompts, same samples)
    first = compiled.minibatch_stats[0]
    assert abs(first["ratio_max"] - 1.0) < 1e-6 and abs(first["approx_kl"]) < 1e-7
    for key in ("kl", "approx_kl", "ratio_mean", "ratio_max", "pg_loss", "vf_loss", "grad_norm"):
        assert m1[key] == pytest.approx(m2[key], abs=1e-5), key
    for (name, p), (_, q) in zip(eager.model.named_parameters(), compiled.model.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    assert max(abs(s["ratio_max"] - 1.0) for s in compiled.minibatch_stats[1:]) > 1e-6  # and it trained


def test_compile_without_a_compiler_says_what_to_install(tiny, prompts, monkeypatch):
    from rlhf_lab.utils import ConfigError

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match=r"needs a C\+\+ compiler.*apt install g\+\+.*--ppo-compile off"):
        make_trainer(tiny, prompts, compile=True)


def test_fixed_kl_coef_stays(tiny, prompts, reward_dir):
    trainer = make_trainer(tiny, prompts, reward_dir, adaptive_kl=False, kl_coef=0.3)
    trainer.train(progress=False)
    assert [m["kl_coef"] for m in trainer.history] == [0.3, 0.3] and trainer.kl_ctl.value == 0.3


def test_responses_without_eos_get_the_fixed_score(tiny, prompts, reward_dir):
    trainer = make_trainer(tiny, prompts, reward_dir, max_new_tokens=3, no_eos_score=-1.0)
    batch = trainer.rollout(trainer.batch_prompts(0))
    assert (~batch.ended).any()
    assert torch.all(batch.scores[~batch.ended] == -1.0)
    assert torch.allclose(batch.scores[batch.ended], batch.raw_scores[batch.ended])  # the RM is normalised


def test_gold_reward_is_normalised_on_the_initial_policy(tiny, prompts):
    trainer = make_trainer(tiny, prompts, norm_episodes=32)
    fit = trainer.fit_score_normalisation()
    assert fit["fitted"] and fit["n"] == 32
    assert trainer.score_gain == pytest.approx(1 / fit["raw_std"])
    assert trainer.score_bias == pytest.approx(-fit["raw_mean"] / fit["raw_std"])


# -----------------------------------------------------------------------------
# checkpoints, saving, comparisons


def test_resume_continues_at_the_right_step_with_identical_state(tiny, prompts, reward_dir, tmp_path):
    straight = make_trainer(tiny, prompts, reward_dir, out_dir=tmp_path / "straight", steps=3)
    straight.train(progress=False)

    first = make_trainer(tiny, prompts, reward_dir, out_dir=tmp_path / "killed", steps=3)
    first.train(steps=2, progress=False)  # "killed" after 2 updates; checkpoint at 2
    resumed = make_trainer(tiny, prompts, reward_dir, out_dir=tmp_path / "killed", steps=3)
    assert resumed.load_checkpoint()
    assert resumed.step_count == 2 and resumed.kl_ctl.value == first.kl_ctl.value
    resumed.train(progress=False)

    assert resumed.step_count == 3
    timing = {"seconds", "seconds_rollout", "seconds_update", "episodes_per_second"}
    for a, b in zip(straight.history, resumed.history, strict=True):
        assert {k: v for k, v in a.items() if k not in timing} == pytest.approx(
            {k: v for k, v in b.items() if k not in timing}, abs=1e-6)
    for (name, p), (_, q) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    assert torch.allclose(straight.value_head.weight, resumed.value_head.weight, atol=1e-6)
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]


def test_resume_refuses_other_settings(tiny, prompts, reward_dir, tmp_path):
    make_trainer(tiny, prompts, reward_dir, out_dir=tmp_path, steps=1).train(progress=False)
    other = make_trainer(tiny, prompts, reward_dir, out_dir=tmp_path, batch_size=16)
    with pytest.raises(LabError, match="batch_size"):
        other.load_checkpoint()


def test_saved_policy_adapter_loads_with_peft(tiny, prompts, reward_dir, tmp_path):
    trainer = make_trainer(tiny, prompts, reward_dir, out_dir=tmp_path)
    trainer.train(progress=False)
    trainer.save(tmp_path)
    assert (tmp_path / "adapter_config.json").is_file() and (tmp_path / "ppo_config.json").is_file()
    loaded = PeftModel.from_pretrained(copy.deepcopy(tiny[0]), str(tmp_path), adapter_name=POLICY)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        expected, _ = forward_response(trainer.model, ids, torch.ones_like(ids), 2)
        got, _ = forward_response(loaded, ids, torch.ones_like(ids), 2)
    assert torch.allclose(expected, got, atol=1e-5)


def test_sample_models_same_seed_same_prompts(tiny, prompts, reward_dir):
    trainer = make_trainer(tiny, prompts, reward_dir)
    models = {"base": tiny[0], "sft": (trainer.model, None), "ppo": (trainer.model, POLICY)}
    rows = sample_models(models, list(prompts[:4]), trainer.tokenizer, seed=1, max_new_tokens=10,
                         reward=trainer.reward)
    assert [r["model"] for r in rows[:3]] == ["base", "sft", "ppo"] and len(rows) == 12
    # before any update all three are the same network: same seed, same samples
    by_model = {m: [r["completion"] for r in rows if r["model"] == m] for m in models}
    assert by_model["base"] == by_model["sft"] == by_model["ppo"]
    assert all(isinstance(r["gold"], float) and isinstance(r["reward"], float) for r in rows)
    assert trainer.model.active_adapter == POLICY


def test_config_errors_speak_to_the_learner(tiny, prompts):
    with pytest.raises(LabError, match="no field 'beta'"):
        ppo_config(beta=0.1)
    with pytest.raises(LabError, match="multiple of minibatch_size"):
        make_trainer(tiny, prompts, batch_size=8, minibatch_size=3)
    with pytest.raises(LabError, match="micro_batch_size"):
        make_trainer(tiny, prompts, minibatch_size=4, micro_batch_size=5)


# -----------------------------------------------------------------------------
# the whole stage: train_ppo with an SFT adapter and a reward model on disk


@pytest.fixture(scope="module")
def sft_dir(tiny, tmp_path_factory):
    """An SFT adapter on disk (untrained: B = 0, so the trunk is the tiny model itself)."""
    from rlhf_lab.sft import SFTConfig, SFTResult, add_lora, save_sft

    model, tokenizer = tiny
    set_seed(0)
    peft_model = add_lora(copy.deepcopy(model), SFTConfig())
    return save_sft(SFTResult(model=peft_model, tokenizer=tokenizer, config=SFTConfig()),
                    tmp_path_factory.mktemp("sft") / "adapter")


@pytest.fixture(scope="module")
def reward_on_sft_dir(reward_dir, sft_dir, tmp_path_factory):
    """The test reward model, recorded as trained on the trunk of sft_dir."""
    import shutil

    path = tmp_path_factory.mktemp("reward-on-sft") / "rm"
    shutil.copytree(reward_dir, path)
    meta = json.loads((path / "reward_model.json").read_text())
    meta["trunk"] = {"model": "tiny", "sft_adapter": str(sft_dir)}
    (path / "reward_model.json").write_text(json.dumps(meta))
    return path


def test_reward_model_fits_a_copied_sft_adapter_by_fingerprint(tiny, sft_dir, reward_dir, tmp_path):
    """A run folder copied elsewhere still pairs its reward model with its SFT adapter (the weights'
    fingerprint decides, not the path); an adapter with other weights does not fit."""
    import shutil

    from safetensors.torch import load_file, save_file

    from rlhf_lab.ppo import reward_fits_sft
    from rlhf_lab.sft import adapter_fingerprint

    model, tokenizer = tiny
    loaded = load_reward_model(reward_dir, trunk=copy.deepcopy(model), tokenizer=tokenizer)
    rm = save_reward_model(loaded, tmp_path / "rm", RewardConfig(trunk="tiny", sft_adapter=str(sft_dir)))
    meta = json.loads((rm / "reward_model.json").read_text())
    assert meta["trunk"]["sft_fingerprint"] == adapter_fingerprint(sft_dir)
    moved = shutil.copytree(sft_dir, tmp_path / "moved" / "adapter")
    assert len(meta["trunk"]["sft_fingerprint"]) == 16
    assert reward_fits_sft(rm, sft_dir) and reward_fits_sft(rm, moved)

    other = shutil.copytree(sft_dir, tmp_path / "other")
    weights = load_file(str(other / "adapter_model.safetensors"))
    name = next(k for k in weights if "lora_B" in k)
    weights[name] = weights[name] + 0.01
    save_file(weights, str(other / "adapter_model.safetensors"))
    assert not reward_fits_sft(rm, other)
    assert adapter_fingerprint(tmp_path / "nowhere") is None

    # saved before fingerprints: the path decides
    del meta["trunk"]["sft_fingerprint"]
    (rm / "reward_model.json").write_text(json.dumps(meta))
    assert reward_fits_sft(rm, sft_dir) and not reward_fits_sft(rm, moved)


def test_train_ppo_writes_a_run_and_resumes_it(tiny, sft_dir, reward_on_sft_dir, tmp_path):
    from rlhf_lab.ppo import load_policy, train_ppo

    settings = dict(sft=str(sft_dir), reward="rm", reward_model=str(reward_on_sft_dir), batch_size=8,
                    minibatch_size=8, ppo_epochs=1, max_new_tokens=10, eval_prompts=8, checkpoint_every=1,
                    device="cpu")
    result = train_ppo(ppo_config(steps=2, **settings), out_dir=tmp_path, progress=False)
    s = result.summary
    for key in ("gold_score_sft", "gold_score_ppo", "gold_std_sft", "reward_score_ppo", "kl",
                "episodes_per_second", "seconds", "gold_gain_in_sft_std"):
        assert isinstance(s[key], float) and s[key] == s[key], key  # a finite number, not nan
    assert s["parameter_memory"]["backbone"] == sum(p.numel() * p.element_size() for p in tiny[0].parameters())
    for name in ("adapter_config.json", "adapter_model.safetensors", "value_head.safetensors", "ppo_config.json",
                 "ppo_result.json", "metrics.jsonl", "checkpoint/trainer_state.pt"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "ppo_config.json").read_text())["sft"] == str(sft_dir)
    assert {r["model"] for r in result.samples} == {"sft", "ppo"} and len(result.samples) == 16

    again = train_ppo(ppo_config(steps=3, **settings), out_dir=tmp_path, resume=True, progress=False)
    assert [m["step"] for m in again.history] == [1, 2, 3]
    assert again.history[:2] == result.history  # the first two updates were not redone

    model, tokenizer, reward = load_policy(tmp_path, device="cpu", with_reward=True)
    assert model.active_adapter == POLICY and set(model.peft_config) == {POLICY, "reward"}
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        expected, _ = forward_response(again.trainer.model, ids, torch.ones_like(ids), 2)
        got, _ = forward_response(model, ids, torch.ones_like(ids), 2)
    assert torch.allclose(expected, got, atol=1e-5)


def test_a_reward_model_of_another_trunk_is_refused(sft_dir, reward_dir):
    from rlhf_lab.ppo import train_ppo

    cfg = ppo_config(sft=str(sft_dir), reward="rm", reward_model=str(reward_dir), device="cpu")
    with pytest.raises(LabError, match="trained on the trunk"):
        train_ppo(cfg, progress=False)


def test_figures_draw_a_history():
    import matplotlib

    matplotlib.use("Agg")
    from rlhf_lab.ppo import PPOResult, plot_diagnostics, plot_history, plot_kl_tradeoff

    keys = ("score_normalised", "gold", "kl", "kl_coef", "entropy", "approx_kl", "clipfrac",
            "explained_variance", "response_length", "eos_share")
    history = [{"step": i + 1} | {k: 0.1 * i for k in keys} for i in range(5)]
    assert len(plot_history(history, kl_target=6.0).axes) == 3
    assert len(plot_diagnostics(history).axes) == 5  # four panels and the EOS share's twin axis
    summary = {"kl": 1.0, "gold_score_ppo": 0.5, "gold_std_ppo": 0.4, "gold_score_sft": 0.0, "gold_std_sft": 0.8}
    runs = {"beta = 0.1": PPOResult(trainer=None, config=None, history=history, summary=summary,
                                    samples=[{"model": "ppo"}] * 4)}
    assert len(plot_kl_tradeoff(runs).axes) == 2


@pytest.fixture
def bf16():
    """Forward passes under bf16 autocast (on the CPU here; "auto" picks it on a CUDA GPU with bf16)."""
    from rlhf_lab.utils import precision

    with precision("bf16"):
        yield


def test_bf16_autocast_keeps_the_first_step_invariants(tiny, prompts, reward_dir, bf16):
    """Mixed precision as on a GPU: the trunk runs in bf16, weights and log-probs stay fp32, and PPO's
    invariants still hold: policy == reference before training, ratio 1 on the first minibatch."""
    trainer = make_trainer(tiny, prompts, reward_dir)
    batch = trainer.rollout(trainer.batch_prompts(0))
    logits, values = forward_response(trainer.model, batch.input_ids, batch.attention_mask, batch.query_length,
                                      trainer.value_head)
    assert logits.dtype == torch.bfloat16 and values.dtype == torch.float32
    assert batch.logprobs.dtype == torch.float32 and torch.equal(batch.logprobs, batch.ref_logprobs)
    assert all(p.dtype == torch.float32 for p in trainer.params)
    metrics = trainer.step()
    assert metrics["kl"] == 0.0
    first = trainer.minibatch_stats[0]
    assert abs(first["ratio_mean"] - 1.0) < 1e-6 and abs(first["ratio_max"] - 1.0) < 1e-6
    assert all(math.isfinite(metrics[k]) for k in ("pg_loss", "vf_loss", "grad_norm", "entropy"))


def test_reward_scores_with_its_adapter_even_inside_disable_adapter(tiny, prompts, reward_dir):
    """The SFT model is sampled on the shared trunk with every adapter off; a reward call made inside
    that block must still run the reward adapter (sample_models scores the SFT rows there), and leave
    the block as it found it: adapters off, the policy active, the same requires_grad flags."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    def adapters_off(model):
        return all(m.disable_adapters for m in model.modules() if isinstance(m, BaseTunerLayer))

    trainer = make_trainer(tiny, prompts, reward_dir)
    rollout, completions = trainer.sample(prompts[:8], None)
    outside = trainer.reward.score(prompts[:8], completions, rollout)
    flags = [p.requires_grad for p in trainer.model.parameters()]
    with use_adapter(trainer.model, None):
        assert adapters_off(trainer.model)
        inside = trainer.reward.score(prompts[:8], completions, rollout)
        assert adapters_off(trainer.model)
    assert torch.allclose(inside, outside, atol=1e-6)
    assert not adapters_off(trainer.model) and trainer.model.active_adapter == POLICY
    assert [p.requires_grad for p in trainer.model.parameters()] == flags
    rows = sample_models({"sft": (trainer.model, None)}, prompts[:8], trainer.tokenizer, reward=trainer.reward,
                         max_new_tokens=12)
    assert len(rows) == 8 and len({round(r["reward"], 4) for r in rows}) > 1


# -----------------------------------------------------------------------------
# RLOO and GRPO: the same loop, k samples per prompt, no value head


class ConstantReward:
    """The same score for every response: nothing to learn, so every critic-free advantage is 0."""

    name, normalised = "constant", True

    def score(self, prompts, completions, rollout):
        return torch.full((len(completions),), 0.7)


@pytest.mark.parametrize("algo", ["rloo", "grpo"])
def test_critic_free_first_minibatch_ratio_is_one_and_groups_share_a_prompt(tiny, prompts, reward_dir, algo):
    trainer = make_trainer(tiny, prompts, reward_dir, algo=algo, group_size=4)
    assert trainer.value_head is None and trainer.name == algo.upper()
    assert len(trainer.params) == len(trainer.policy_params)  # no value head to train
    chosen = trainer.batch_prompts(0)
    assert len(chosen) == 8 and chosen[:4] == [chosen[0]] * 4 and chosen[4:] == [chosen[4]] * 4
    assert chosen[0] != chosen[4]
    metrics = trainer.step()
    assert metrics["kl"] == 0.0
    first = trainer.minibatch_stats[0]
    assert first["epoch"] == 0
    assert abs(first["ratio_mean"] - 1.0) < 1e-6 and abs(first["ratio_max"] - 1.0) < 1e-6
    assert abs(first["approx_kl"]) < 1e-7 and first["clipfrac"] == 0.0
    assert max(abs(s["ratio_max"] - 1.0) for s in trainer.minibatch_stats[1:]) > 1e-6
    assert not {"vf_loss", "vf_clipfrac", "explained_variance"} & set(metrics)
    if algo == "grpo":
        assert first["kl_loss"] == 0.0 and metrics["kl_coef"] == 0.2 and metrics["non_score_reward"] == 0.0
        assert metrics["kl_loss"] > 0.0  # the policy moved after the first minibatch
    else:
        assert metrics["kl_coef"] == 0.15


@pytest.mark.parametrize("algo", ["rloo", "grpo"])
def test_critic_free_updates_change_the_policy_adapter_only(tiny, prompts, reward_dir, algo):
    trainer = make_trainer(tiny, prompts, reward_dir, algo=algo, group_size=4)
    head_before = snapshot(trainer.reward.reward_model.head)
    before = snapshot(trainer.model)
    trainer.step()
    trainer.step()
    after = snapshot(trainer.model)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and any("lora_B" in name for name in changed)
    assert all(f".{POLICY}." in name for name in changed), sorted(changed)[:3]  # trunk, reward adapter: bit-identical
    assert all(torch.equal(head_before[k], v) for k, v in snapshot(trainer.reward.reward_model.head).items())


@pytest.mark.parametrize("algo", ["rloo", "grpo"])
def test_critic_free_with_equal_rewards_has_nothing_to_learn(tiny, prompts, algo):
    """Every group ties: every advantage is 0, so is every gradient (GRPO's KL term has a zero gradient
    while the policy is the reference), and Adam's step of a zero gradient is 0."""
    model, tokenizer = tiny
    cfg = ppo_config(algo=algo, group_size=4, steps=1, batch_size=8, minibatch_size=4, ppo_epochs=2,
                     max_new_tokens=12, normalize_scores=False, no_eos_score=None, device="cpu")
    set_seed(cfg.seed)
    trainer = PPOTrainer(cfg, add_policy_adapter(copy.deepcopy(model), cfg), tokenizer, ConstantReward(), prompts)
    before = snapshot(trainer.model)
    metrics = trainer.step()
    assert metrics["pg_loss"] == 0.0 and metrics["grad_norm"] == 0.0 and metrics["kl"] == 0.0
    assert all(torch.equal(before[name], p) for name, p in snapshot(trainer.model).items())


@pytest.mark.parametrize("algo", ["rloo", "grpo"])
def test_critic_free_resume_continues_with_identical_state(tiny, prompts, reward_dir, tmp_path, algo):
    settings = dict(algo=algo, group_size=4, steps=3)
    straight = make_trainer(tiny, prompts, reward_dir, out_dir=tmp_path / "straight", **settings)
    straight.train(progress=False)
    first = make_trainer(tiny, prompts, reward_dir, out_dir=tmp_path / "killed", **settings)
    first.train(steps=2, progress=False)  # "killed" after 2 updates; checkpoint at 2
    assert not (tmp_path / "killed" / "checkpoint" / "value_head.safetensors").exists()
    resumed = make_trainer(tiny, prompts, reward_dir, out_dir=tmp_path / "killed", **settings)
    assert resumed.load_checkpoint() and resumed.step_count == 2
    resumed.train(progress=False)
    timing = {"seconds", "seconds_rollout", "seconds_update", "episodes_per_second"}
    for a, b in zip(straight.history, resumed.history, strict=True):
        assert {k: v for k, v in a.items() if k not in timing} == pytest.approx(
            {k: v for k, v in b.items() if k not in timing}, abs=1e-6)
    for (name, p), (_, q) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    # a checkpoint of one algorithm does not continue another
    other = make_trainer(tiny, prompts, reward_dir, out_dir=tmp_path / "killed", steps=3)
    with pytest.raises(LabError, match="algo"):
        other.load_checkpoint()


@pytest.mark.parametrize("algo", ["ppo", "rloo", "grpo"])
def test_each_algo_raises_the_gold_score_above_sft(tiny, algo):
    """Six updates against the gold labeler, in seconds: the policy's held-out samples score higher on
    gold than the SFT model's (the tiny pretrained model here) on the same prompts and seed."""
    from rlhf_lab.ppo import evaluate_policy

    model, tokenizer = tiny
    cfg = ppo_config(algo=algo, steps=6, batch_size=32, minibatch_size=16, ppo_epochs=2, max_new_tokens=24,
                     norm_episodes=32, reward="gold", device="cpu")
    set_seed(cfg.seed)
    trainer = PPOTrainer(cfg, add_policy_adapter(copy.deepcopy(model), cfg), tokenizer, GoldReward(),
                         load_prompts("tiny", "train")["prompt"])
    trainer.train(progress=False)
    summary, samples = evaluate_policy(trainer, load_prompts("tiny", "validation", limit=64)["prompt"])
    assert summary["gold_score_ppo"] > summary["gold_score_sft"] + 0.25, summary  # ~0.2 SFT std and more
    assert 0.0 < summary["kl"] < 4.0
    assert {r["model"] for r in samples} == {"sft", "ppo"} and len(samples) == 128


def test_algo_config_errors_speak_to_the_learner(tiny, prompts):
    from rlhf_lab.utils import ConfigError

    assert ppo_config(algo="rloo").samples_per_prompt == 4 and ppo_config().samples_per_prompt == 1
    with pytest.raises(ConfigError, match="needs group_size >= 2"):
        ppo_config(algo="grpo", group_size=1)
    with pytest.raises(ConfigError, match="not a multiple of group_size=3"):
        ppo_config(algo="rloo", group_size=3)
    with pytest.raises(ConfigError, match="one of ppo, rloo, grpo"):
        ppo_config(algo="dqn")


def test_ppo_from_the_pretrained_model_skips_sft(reward_dir, monkeypatch):
    """build_trainer(start="pretrained"): the policy and its reference are the pretrained trunk itself (no SFT
    merged: the same weights as load_model), and the reward model scores texts on a trunk of its own."""
    from rlhf_lab.loading import load_model
    from rlhf_lab.ppo import SeparateRewardModel, build_trainer

    cfg = ppo_config(fast=True, steps=1, batch_size=8, minibatch_size=8, max_new_tokens=8, norm_episodes=16,
                     eval_prompts=8, device="cpu", reward_model=str(reward_dir))
    monkeypatch.setattr("rlhf_lab.pipeline.ensure_sft", lambda *a, **k: pytest.fail("no SFT may be made"))
    trainer = build_trainer(cfg, start="pretrained")
    assert isinstance(trainer.reward, SeparateRewardModel) and cfg.sft is None
    pretrained, _ = load_model("tiny", device="cpu")
    with use_adapter(trainer.model, None):
        base = causal_lm(trainer.model)
        assert torch.equal(base.transformer.h[0].mlp.c_fc.base_layer.weight, pretrained.transformer.h[0].mlp.c_fc.weight)
    metrics = trainer.step()
    assert metrics["kl"] == 0.0 and math.isfinite(metrics["score"])
    with pytest.raises(LabError, match="start='nothing': use 'sft'"):
        build_trainer(cfg, start="nothing")


def test_a_fresh_reward_model_on_its_own_trunk_gets_the_trainers_normalisation(tiny, prompts, reward_dir):
    """SeparateRewardModel(normalised=False): raw scores, and the trainer fits gain and bias on the initial
    policy's samples (as for any reward not normalised in stage 2); normalised=True keeps the model's own."""
    from rlhf_lab.ppo import SeparateRewardModel

    rm = load_reward_model(reward_dir, device="cpu")
    texts = (["The film was", "I"], [" superb.", " dull."])
    assert SeparateRewardModel(rm, normalised=False).score(*texts).tolist() == pytest.approx(
        rm.score_texts(*texts, normalised=False))
    assert SeparateRewardModel(rm).score(*texts).tolist() == pytest.approx(rm.score_texts(*texts))
    model, tokenizer = tiny
    cfg = ppo_config(steps=1, batch_size=8, minibatch_size=8, max_new_tokens=8, norm_episodes=16, device="cpu")
    trainer = PPOTrainer(cfg, add_policy_adapter(copy.deepcopy(model), cfg), tokenizer,
                         SeparateRewardModel(rm, normalised=False), prompts)
    assert trainer.fit_score_normalisation()["fitted"] and trainer.score_gain != 1.0
