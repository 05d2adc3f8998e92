"""rlhf_lab/checks.py: each check passes the reference, fails each usual mistake with the right hint,
and plugged_in really routes the package's training code through the learner's function."""

import copy
import json
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from rlhf_lab import checks, ppo, ppo_math, rankings, reward_model, sft
from rlhf_lab.checks import EXERCISES, ExerciseNotReady, plugged_in, require_passed, usual_mistake
from rlhf_lab.utils import LabError

REFERENCES = {
    "completion_loss": sft.completion_loss,
    "pairs_from_ranking": rankings.pairs_from_ranking,
    "pairwise_loss": ppo_math.pairwise_loss,
    "last_token_index": ppo_math.last_token_index,
    "kl_shaped_rewards": ppo_math.kl_shaped_rewards,
    "gae": ppo_math.gae,
    "policy_loss": ppo_math.policy_loss,  # returns (loss, stats): the check accepts that too
    "value_loss": ppo_math.value_loss,
    "AdaptiveKLController": ppo_math.AdaptiveKLController,
}
CHECKS = {e.name: e.check for e in EXERCISES}


# -----------------------------------------------------------------------------
# every check passes the reference, and names each of its own usual mistakes


@pytest.mark.parametrize("name", list(REFERENCES))
def test_each_check_passes_the_reference(name, capsys):
    result = CHECKS[name](REFERENCES[name])
    assert result.passed and bool(result)
    assert result.n_passed == result.n_cases >= 5
    assert result.mistake is None
    assert "\u2713" in capsys.readouterr().out


@pytest.mark.parametrize("exercise, mistake", [(e, m) for e in EXERCISES for m in e.mistakes],
                         ids=[f"{e.name}-{m.tag}-{i}" for e in EXERCISES for i, m in enumerate(e.mistakes)])
def test_each_written_out_mistake_is_diagnosed_as_itself(exercise, mistake):
    call = checks._call_controller if exercise.name == "AdaptiveKLController" else checks._call_function
    for case in exercise.cases():
        call(mistake.fn, case)  # a wrong implementation that raised would agree with any learner who raises
    result = exercise.check(mistake.fn, verbose=False)
    assert not result.passed
    assert (result.mistake, result.hint) == (mistake.tag, mistake.hint)


# -----------------------------------------------------------------------------
# the usual mistakes of the issue, written the way a learner would write them


def sft_loss_mask_forgotten(logits, labels):
    logprobs = torch.log_softmax(logits[:, :-1], -1)
    targets = labels[:, 1:].clamp(min=0)
    return -logprobs.gather(-1, targets.unsqueeze(-1)).mean()


def pairs_ranks_read_in_reverse(prompt, completions, ranking):
    worst_first = [completions[i] for i in reversed(ranking)]
    return [{"prompt": prompt, "chosen": worst_first[i], "rejected": worst_first[j]}
            for i in range(len(worst_first)) for j in range(i + 1, len(worst_first))
            if worst_first[i] != worst_first[j]]


def pairwise_loss_sign_flipped(chosen, rejected):
    return -F.logsigmoid(rejected - chosen).mean()


def kl_rewards_sign_flipped(scores, logprobs, ref_logprobs, mask, kl_coef, kl_kind="k1"):
    kl = (logprobs - ref_logprobs) * mask
    rewards = kl_coef * kl  # + instead of -
    last = mask.long().sum(1) - 1
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, kl


def kl_rewards_over_padding(scores, logprobs, ref_logprobs, mask, kl_coef, kl_kind="k1"):
    kl = logprobs - ref_logprobs  # padding included
    rewards = -kl_coef * kl
    last = mask.long().sum(1) - 1
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, kl


def kl_rewards_score_in_last_column(scores, logprobs, ref_logprobs, mask, kl_coef, kl_kind="k1"):
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    rewards[:, -1] += scores  # the last column, a pad token under right padding
    return rewards, kl


def kl_rewards_score_after_eos(scores, logprobs, ref_logprobs, mask, kl_coef, kl_kind="k1"):
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    after = (mask.long().sum(1)).clamp(max=mask.shape[1] - 1)  # one slot after the last token
    rewards[torch.arange(len(scores)), after] += scores
    return rewards, kl


def gae_off_by_one(rewards, values, mask, gamma=1.0, lam=0.95):
    values, rewards = values * mask, rewards * mask
    T = values.shape[1]
    advantages = torch.zeros_like(values)
    running = torch.zeros(values.shape[0])
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * values[:, t] - values[:, t]  # V(s_t) where V(s_{t+1}) belongs
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, advantages + values


def gae_mask_forgotten(rewards, values, mask, gamma=1.0, lam=0.95):
    T = values.shape[1]
    advantages = torch.zeros_like(values)
    running = torch.zeros(values.shape[0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else 0.0
        running = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * running
        advantages[:, t] = running
    return advantages, advantages + values


def policy_loss_min_instead_of_max(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    ratio = (logprobs - old_logprobs).exp()
    losses = torch.min(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range))
    return (losses * mask).sum() / mask.sum()


def policy_loss_clip_wrong_way(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    ratio = (logprobs - old_logprobs).exp()
    losses = torch.max(-advantages * ratio, -advantages * ratio.clamp(-clip_range, clip_range))
    return (losses * mask).sum() / mask.sum()


def policy_loss_sign_flipped(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    ratio = (logprobs - old_logprobs).exp()
    losses = torch.max(advantages * ratio, advantages * ratio.clamp(1 - clip_range, 1 + clip_range))
    return (losses * mask).sum() / mask.sum()


def policy_loss_mask_forgotten(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    ratio = (logprobs - old_logprobs).exp()
    return torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)).mean()


def value_loss_min_instead_of_max(values, old_values, returns, mask, clip_range_value=0.2):
    clipped = old_values + (values - old_values).clamp(-clip_range_value, clip_range_value)
    losses = torch.min((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * (losses * mask).sum() / mask.sum()


def value_loss_clip_wrong_way(values, old_values, returns, mask, clip_range_value=0.2):
    clipped = values.clamp(-clip_range_value, clip_range_value)  # around 0, not around the old values
    losses = torch.max((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * (losses * mask).sum() / mask.sum()


# issue 16: the mistakes whose verdict was misleading or empty


def pairwise_loss_hinge(chosen, rejected):
    return torch.clamp(1 - (chosen - rejected), min=0).mean()  # a margin loss, not Bradley-Terry


def pairwise_loss_margin_ranking(chosen, rejected):
    return F.margin_ranking_loss(chosen, rejected, torch.ones_like(chosen))  # margin 0 by default


def gae_whitened(rewards, values, mask, gamma=1.0, lam=0.95):
    advantages, returns = ppo_math.gae(rewards, values, mask, gamma, lam)
    return ppo_math.masked_whiten(advantages, mask), returns  # raises on a one-token batch


def gae_whitened_with_torch_std(rewards, values, mask, gamma=1.0, lam=0.95):
    advantages, _ = ppo_math.gae(rewards, values, mask, gamma, lam)
    advantages = (advantages - advantages.mean()) / (advantages.std(correction=0) + 1e-8)  # padding included
    return advantages, advantages + values


def gae_whitened_per_response(rewards, values, mask, gamma=1.0, lam=0.95):
    advantages, returns = ppo_math.gae(rewards, values, mask, gamma, lam)
    rows = []
    for a, m in zip(advantages, mask.bool()):
        mean, std = a[m].mean(), a[m].std(unbiased=False)
        rows.append(torch.where(m, (a - mean) / (std + 1e-8), 0.0))
    return torch.stack(rows), returns


def policy_loss_ratio_of_logprobs(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    ratio = logprobs / old_logprobs  # log-probs divided, as if they were probabilities
    losses = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range))
    return (losses * mask).sum() / mask.sum()


def policy_loss_per_response_mean(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    ratio = (logprobs - old_logprobs).exp()
    losses = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range))
    return ((losses * mask).sum(1) / mask.sum(1)).mean()  # each response's mean, then their mean


def value_loss_per_response_mean(values, old_values, returns, mask, clip_range_value=0.2):
    clipped = old_values + (values - old_values).clamp(-clip_range_value, clip_range_value)
    losses = torch.max((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * ((losses * mask).sum(1) / mask.sum(1)).mean()


class ControllerSignFlipped:
    def __init__(self, init_kl_coef, target, horizon):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl, n_steps):
        error = max(-0.2, min(0.2, current_kl / self.target - 1))
        self.value *= 1 - error * n_steps / self.horizon


class ControllerClipWrongWay(ControllerSignFlipped):
    def update(self, current_kl, n_steps):
        error = max(-0.2, min(0.2, current_kl)) / self.target - 1  # clips the KL, not the error
        self.value *= 1 + error * n_steps / self.horizon


ISSUE_MISTAKES = [  # (check, wrong implementation, tag, a word the hint must hold)
    ("completion_loss", sft_loss_mask_forgotten, "mask_forgotten", "-100"),
    ("pairs_from_ranking", pairs_ranks_read_in_reverse, "ranks_read_in_reverse", "best first"),
    ("pairwise_loss", pairwise_loss_sign_flipped, "sign_flipped", "chosen minus rejected"),
    ("kl_shaped_rewards", kl_rewards_sign_flipped, "sign_flipped", "penalty"),
    ("kl_shaped_rewards", kl_rewards_over_padding, "kl_over_padding", "mask is 0"),
    ("kl_shaped_rewards", kl_rewards_score_in_last_column, "score_wrong_position", "last response token"),
    ("kl_shaped_rewards", kl_rewards_score_after_eos, "score_wrong_position", "not one slot after"),
    ("gae", gae_off_by_one, "off_by_one", "V(s_{t+1})"),
    ("gae", gae_mask_forgotten, "mask_forgotten", "padding"),
    ("policy_loss", policy_loss_min_instead_of_max, "min_instead_of_max", "max"),
    ("policy_loss", policy_loss_clip_wrong_way, "clip_wrong_way", "around 1"),
    ("policy_loss", policy_loss_sign_flipped, "sign_flipped", "negative"),
    ("policy_loss", policy_loss_mask_forgotten, "mask_forgotten", "mask"),
    ("value_loss", value_loss_min_instead_of_max, "min_instead_of_max", "max"),
    ("value_loss", value_loss_clip_wrong_way, "clip_wrong_way", "old_values"),
    ("AdaptiveKLController", ControllerSignFlipped, "sign_flipped", "larger"),
    ("AdaptiveKLController", ControllerClipWrongWay, "clip_wrong_way", "not the KL itself"),
    # issue 16
    ("pairwise_loss", pairwise_loss_hinge, "hinge_loss", "hinge"),
    ("pairwise_loss", pairwise_loss_margin_ranking, "hinge_loss", "not Bradley-Terry"),
    ("gae", gae_whitened, "whitened_inside_gae", "raw advantages"),
    ("gae", gae_whitened_with_torch_std, "whitened_inside_gae", "raw advantages"),
    ("gae", gae_whitened_per_response, "whitened_inside_gae", "raw advantages"),
    ("policy_loss", policy_loss_ratio_of_logprobs, "ratio_of_logprobs", "exp(logprobs - old_logprobs)"),
    ("policy_loss", policy_loss_per_response_mean, "mean_of_means", "not per response"),
    ("value_loss", value_loss_per_response_mean, "mean_of_means", "not per response"),
]


@pytest.mark.parametrize("name, wrong, tag, word", ISSUE_MISTAKES,
                         ids=[f"{n}-{w.__name__}" for n, w, _, _ in ISSUE_MISTAKES])
def test_a_learners_usual_mistake_fails_with_the_right_hint(name, wrong, tag, word, capsys):
    result = CHECKS[name](wrong)
    out = capsys.readouterr().out
    assert not result.passed and not bool(result)
    assert result.mistake == tag
    assert word in result.hint
    assert "\u2717" in out and "First failing case" in out and "Likely mistake" in out and result.hint in out


@pytest.mark.parametrize("name, wrong, what, fix", [
    ("completion_loss", lambda logits, labels: sft.completion_loss(logits, labels).item(), "a Python float",
     ".item()"),
    ("pairwise_loss", lambda c, r: float(-F.logsigmoid(c - r).detach().mean()), "a Python float", ".item()"),
    ("policy_loss", lambda *a, **k: (ppo_math.policy_loss(*a, **k)[0].item(), {}), "a Python float", ".item()"),
    ("value_loss", lambda *a, **k: ppo_math.value_loss(*a, **k)[0].detach().numpy(), "a NumPy array", ".numpy()"),
    ("gae", lambda *a, **k: tuple(x.numpy() for x in ppo_math.gae(*a, **k)), "a NumPy array", ".numpy()"),
    ("last_token_index", lambda mask: ppo_math.last_token_index(mask).tolist(), "a Python list", "torch"),
])
def test_a_float_or_array_instead_of_a_tensor_is_named_as_such(name, wrong, what, fix, capsys):
    result = CHECKS[name](wrong)
    out = capsys.readouterr().out
    assert not result.passed and result.mistake == "not_a_tensor"
    assert f"your {name} returned {what}" in result.hint and fix in result.hint
    assert "Its value is right: only the type is wrong." in result.hint  # the values match the reference's
    assert f"Mistake (not a tensor): {result.hint}" in out
    assert "off by one" not in out and "sign flipped" not in out  # no misleading hint from the first case


def test_a_wrong_value_and_a_float_asks_to_fix_the_type_first():
    result = checks.check_pairwise_loss(lambda c, r: F.logsigmoid(c - r).mean().item(), verbose=False)
    assert result.mistake == "not_a_tensor" and "differs from the reference too" in result.hint


def test_a_mistake_no_written_out_one_fits_still_gets_a_hint():
    def policy_loss(logprobs, old_logprobs, advantages, mask, clip_range=0.2):  # wrong on big batches only
        loss = ppo_math.policy_loss(logprobs, old_logprobs, advantages, mask, clip_range)[0]
        return loss * 1.1 if logprobs.shape[0] > 2 else loss

    result = checks.check_policy_loss(policy_loss, verbose=False)
    assert not result.passed and result.failed_case.startswith("random batch")
    assert "none of the usual mistakes fits" in result.hint and "random batch" in result.hint


def test_the_verdict_shows_the_case_expected_and_got(capsys):
    checks.check_gae(gae_mask_forgotten)
    out = capsys.readouterr().out
    assert "padding after the last token" in out  # the first failing case, by name
    assert "mask = [[1, 1, 0, 0]]" in out  # its inputs
    assert "expected advantages [[0.475, 0.5, 0.0, 0.0]]" in out  # hand-checkable: 1 - 0.5, 0 + 0.5 - 0.5 + 0.95 * 0.5
    assert "got advantages" in out


def test_an_unwritten_exercise_says_so(capsys):
    def gae(rewards, values, mask, gamma=1.0, lam=0.95):
        raise NotImplementedError("Exercise 5: gae is not written yet")

    result = checks.check_gae(gae)
    assert not result.passed and result.mistake == "not_written"
    assert "not written yet" in capsys.readouterr().out


def test_an_error_in_the_learners_code_is_reported_not_raised(capsys):
    def last_token_index(mask):
        return mask.sum(dim=2)  # IndexError: a (B, T) mask has no dim 2

    result = checks.check_last_token_index(last_token_index)
    out = capsys.readouterr().out
    assert not result.passed and result.mistake == "error"
    assert "raised IndexError" in out


def test_changing_an_input_in_place_is_caught(capsys):
    def gae(rewards, values, mask, gamma=1.0, lam=0.95):
        values *= mask  # changes the rollout's values, which PPO reuses for the value loss
        return ppo_math.gae(rewards, values, mask, gamma, lam)

    result = checks.check_gae(gae)
    assert not result.passed and result.mistake == "modified_input"
    assert "in place" in capsys.readouterr().out


def test_a_loss_cut_from_the_graph_fails():
    def pairwise_loss(chosen, rejected):
        return torch.tensor(-F.logsigmoid(chosen - rejected).mean().item())

    result = checks.check_pairwise_loss(pairwise_loss, verbose=False)
    assert not result.passed and result.failed_case.startswith("the gradient")


def test_a_float_index_fails_and_a_bool_mask_is_fine():
    result = checks.check_last_token_index(lambda mask: ppo_math.last_token_index(mask).float(), verbose=False)
    assert not result.passed and "integers" in result.message
    assert checks.check_last_token_index(lambda mask: ppo_math.last_token_index(mask.bool()), verbose=False)


def test_a_learner_function_returning_loss_and_stats_is_accepted():
    assert checks.check_value_loss(lambda *a, **k: (ppo_math.value_loss(*a, **k)[0], {}), verbose=False)


def test_not_a_function():
    result = checks.check_gae(None, verbose=False)
    assert not result.passed and result.mistake == "not_a_function"


def test_require_passed_stops_with_one_line():
    require_passed(checks.check_gae(ppo_math.gae, verbose=False))  # nothing happens
    failed = checks.check_gae(gae_off_by_one, verbose=False)
    with pytest.raises(ExerciseNotReady, match="Exercise 5: gae does not pass its check yet") as info:
        require_passed(failed)
    assert info.value._render_traceback_() == [f"\u2192 {info.value}"]  # IPython shows this, not a traceback
    with pytest.raises(ExerciseNotReady, match="result of a check"):
        require_passed(True)


def test_usual_mistake_gives_the_written_out_wrong_function():
    wrong = usual_mistake("last_token_index", "assumes_right_padding")
    assert wrong(torch.tensor([[0, 1, 1]])).tolist() == [1]  # not 2: the mistake, on purpose
    with pytest.raises(LabError, match="has no usual mistake"):
        usual_mistake("gae", "no_such_mistake")
    with pytest.raises(LabError, match="no exercise"):
        usual_mistake("nothing", "x")


# -----------------------------------------------------------------------------
# plugged_in: patch every binding, restore on exit


def test_plugged_in_patches_every_module_that_bound_the_name_and_restores_them():
    original = ppo_math.gae

    def mine(*args, **kwargs):
        return original(*args, **kwargs)

    with plugged_in(gae=mine) as where:
        assert ppo_math.gae is mine and ppo.gae is mine
        assert where["gae"] == ["rlhf_lab.ppo", "rlhf_lab.ppo_math"]
    assert ppo_math.gae is original and ppo.gae is original


def test_plugged_in_restores_after_an_error_and_refuses_unknown_names():
    original = ppo_math.pairwise_loss
    with pytest.raises(RuntimeError):
        with plugged_in(pairwise_loss=lambda c, r: 0):
            assert reward_model.pairwise_loss is not original
            raise RuntimeError("a cell failed")
    assert reward_model.pairwise_loss is original and ppo_math.pairwise_loss is original
    with pytest.raises(LabError, match="does not know 'masked_mean'"):
        with plugged_in(gae=lambda *a: None, masked_mean=lambda *a: None):
            pass
    assert ppo.gae is ppo_math.gae and ppo_math.gae.__name__ == "gae" and ppo_math.gae.__module__ == "rlhf_lab.ppo_math"
    with pytest.raises(LabError, match="needs a function"):
        with plugged_in(gae=3):
            pass


def test_plugged_in_nests_and_restores_a_module_imported_inside_the_block():
    original = ppo_math.gae

    def outer(*a, **k):
        return original(*a, **k)

    def inner(*a, **k):
        return original(*a, **k)

    with plugged_in(gae=outer):
        with plugged_in(gae=inner):
            assert ppo.gae is inner
            late = types.ModuleType("rlhf_lab._late_import")
            late.gae = ppo_math.gae  # as `from .ppo_math import gae` in a module first imported now
            sys.modules[late.__name__] = late
        assert ppo.gae is outer and late.gae is outer
    try:
        assert ppo.gae is original and late.gae is original
    finally:
        del sys.modules[late.__name__]


def test_plugged_in_adapters_keep_the_package_contracts():
    logits, labels = torch.randn(2, 5, 7), torch.tensor([[-100, 1, 2, 3, 4], [-100, -100, 5, 6, -100]])
    with plugged_in(completion_loss=lambda l, y: torch.tensor(42.0)):
        assert sft.completion_loss(logits, labels).item() == 42.0  # training: the learner's
        reference_sum = sft.completion_loss(logits, labels, reduction="sum")  # evaluation: the reference
    assert torch.allclose(reference_sum, sft.completion_loss(logits, labels, reduction="sum"))
    args = (torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1, 3), torch.ones(1, 3))
    with plugged_in(policy_loss=lambda *a, **k: torch.tensor(1.5)):
        loss, stats = ppo.policy_loss(*args, 0.2)
    assert loss.item() == 1.5 and {"approx_kl", "clipfrac", "ratio_mean", "ratio_max"} <= set(stats)
    with plugged_in(last_token_index=lambda mask: mask.float().sum(1) - 1):
        assert reward_model.last_token_index(torch.tensor([[1, 1, 0]])).dtype == torch.long


# -----------------------------------------------------------------------------
# plugged_in routes the real training code through the learner's function


class Counting:
    """A wrapper around a reference function that counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.mark.slow
def test_plugged_in_routes_sft_training(tiny):
    model, tokenizer = tiny
    reference = REFERENCES["completion_loss"]  # not sft.completion_loss: inside the block that is `mine`
    mine = Counting(lambda logits, labels: reference(logits, labels))
    cfg = sft.sft_config(n_train=16, n_eval=8, batch_size=8, epochs=1, eval_every=1, device="cpu")
    with plugged_in(completion_loss=mine):
        result = sft.train_sft(cfg, model=model, tokenizer=tokenizer, progress=False)
    assert mine.calls == 2  # one per training step; evaluation keeps the reference's "sum"
    assert result.eval_loss_after < result.eval_loss_before
    assert sft.completion_loss.__name__ == "completion_loss" and sft.completion_loss.__module__ == "rlhf_lab.sft"


@pytest.mark.slow
def test_plugged_in_routes_the_reward_model_training_and_its_pairs(tiny):
    from rlhf_lab.reward_model import reward_config, train_reward_model

    model, tokenizer = tiny
    records = [{"prompt": f"Review {i}:", "completions": [" great fun.", " dull.", " fine.", " awful."],
                "ranking": [0, 2, 1, 3], "annotator": "test", "time": "2025-01-01T00:00:00+00:00"} for i in range(6)]
    pairs_fn = Counting(rankings.pairs_from_ranking)
    loss_fn = Counting(ppo_math.pairwise_loss)
    index_fn = Counting(ppo_math.last_token_index)
    with plugged_in(pairs_from_ranking=pairs_fn, pairwise_loss=loss_fn, last_token_index=index_fn):
        pairs = rankings.rankings_to_pairs(records)
        cfg = reward_config(epochs=1, batch_size=12, eval_fraction=0.34, eval_every=1, device="cpu")
        result = train_reward_model(cfg, pairs, trunk=model, tokenizer=tokenizer, progress=False)
    assert pairs_fn.calls == 6 and len(pairs) == 36
    assert loss_fn.calls >= result.metrics["steps"] >= 1  # training steps, and the evaluations' loss
    assert index_fn.calls >= 2 * result.metrics["steps"]  # every forward pass of the reward model
    assert reward_model.last_token_index is ppo_math.last_token_index
    assert rankings.pairs_from_ranking.__module__ == "rlhf_lab.rankings"


@pytest.mark.slow
def test_plugged_in_routes_a_ppo_step(tiny):
    from rlhf_lab.loading import load_prompts

    model, tokenizer = tiny
    cfg = ppo.ppo_config(steps=1, batch_size=8, minibatch_size=4, ppo_epochs=2, max_new_tokens=8, norm_episodes=8,
                         device="cpu")
    policy = ppo.add_policy_adapter(copy.deepcopy(model), cfg)
    counted = {name: Counting(REFERENCES[name]) for name in ("kl_shaped_rewards", "gae", "value_loss")}
    policy_calls = []

    def my_policy_loss(*args, **kwargs):  # a learner's version: the loss alone, no stats
        policy_calls.append(1)
        return REFERENCES["policy_loss"](*args, **kwargs)[0]  # the original: ppo_math's is this one now

    class MyController(ppo_math.AdaptiveKLController):
        updates = 0

        def update(self, current_kl, n_steps):
            MyController.updates += 1
            return super().update(current_kl, n_steps)

    with plugged_in(policy_loss=my_policy_loss, AdaptiveKLController=MyController, **counted):
        trainer = ppo.PPOTrainer(cfg, policy, tokenizer, ppo.GoldReward(), load_prompts("tiny", "train")["prompt"][:16])
        metrics = trainer.step()
    assert counted["kl_shaped_rewards"].calls == 1 and counted["gae"].calls == 1
    assert counted["value_loss"].calls == len(policy_calls) == cfg.ppo_epochs * cfg.batch_size // cfg.minibatch_size
    assert isinstance(trainer.kl_ctl, MyController) and MyController.updates == 1
    assert 0.0 <= metrics["clipfrac"] <= 1.0  # the stats the learner's loss did not return came from the reference
    assert ppo.gae is ppo_math.gae and ppo.AdaptiveKLController is ppo_math.AdaptiveKLController
    assert ppo.policy_loss.__module__ == "rlhf_lab.ppo_math"


# -----------------------------------------------------------------------------
# grading


def test_grade_a_namespace_scores_one_point_per_passing_function(capsys):
    namespace = {"gae": ppo_math.gae, "policy_loss": policy_loss_min_instead_of_max,
                 "pairwise_loss": ppo_math.pairwise_loss}
    report = checks.grade(namespace)
    assert (report.score, report.total) == (2, 3)
    rows = {r["function"]: r for r in report.rows()}
    assert rows["policy_loss"]["mistake"] == "min_instead_of_max" and not rows["policy_loss"]["passed"]
    assert "2 / 3" in str(report)
    missing = checks.grade(namespace, names=["gae", "value_loss"])
    assert (missing.score, missing.total) == (1, 2)
    assert {r["function"]: r["mistake"] for r in missing.rows()}["value_loss"] == "missing"


def test_grade_a_notebook_runs_only_its_exercise_cells(tmp_path, capsys):
    def cell(source, tags=()):
        return {"cell_type": "code", "metadata": {"tags": list(tags)}, "source": source, "outputs": [],
                "execution_count": None}

    nb = {"cells": [cell("raise SystemExit('a training cell must not run')"),
                    cell("from rlhf_lab.ppo_math import gae as _g\n"
                         "def gae(*a, **k):\n    return _g(*a, **k)", ["exercise"]),
                    cell("def kl_shaped_rewards(*a):\n    raise NotImplementedError", ["exercise"]),
                    cell("def broken(:", ["exercise"])],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "03_rewards_advantages.ipynb"
    path.write_text(json.dumps(nb))
    report = checks.grade(path)
    assert [r["function"] for r in report.rows()] == ["kl_shaped_rewards", "gae"]  # the notebook's exercises
    assert report.score == 1
    assert {r["function"]: r["mistake"] for r in report.rows()}["kl_shaped_rewards"] == "not_written"
    assert len(report.errors) == 1 and "SyntaxError" in report.errors[0]
    out_json = tmp_path / "scores.json"
    assert checks.main([str(path), "--json", str(out_json)]) == 0
    assert json.loads(out_json.read_text())[0]["score"] == 1
