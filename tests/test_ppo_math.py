"""Pure unit tests of rlhf_lab/ppo_math.py on hand-made tensors: every assertion is a real number."""

import math

import pytest
import torch

import rlhf_lab.ppo_math as ppo_math
from rlhf_lab.ppo_math import (
    AdaptiveKLController,
    FixedKLController,
    dpo_loss,
    entropy_from_logits,
    explained_variance,
    gae,
    grpo_advantages,
    implicit_rewards,
    kl_estimate,
    kl_loss,
    kl_shaped_rewards,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    pairwise_accuracy,
    pairwise_loss,
    policy_loss,
    rloo_advantages,
    value_loss,
)
from rlhf_lab.utils import LabError


def close(actual, expected, tol=1e-6):
    return torch.allclose(torch.as_tensor(actual, dtype=torch.float64),
                          torch.as_tensor(expected, dtype=torch.float64), atol=tol, rtol=0)


# ragged right-padded response mask: lengths 3, 1, 4, 2
MASK = torch.tensor([[1, 1, 1, 0],
                     [1, 0, 0, 0],
                     [1, 1, 1, 1],
                     [1, 1, 0, 0]], dtype=torch.float32)  # (B, T)


# -----------------------------------------------------------------------------
# log-probs and entropy


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
def test_logprobs_match_manual_softmax(temperature):
    logits = torch.tensor([[[1.0, 2.0, 0.5, -1.0], [0.0, 0.0, 3.0, 1.0], [-2.0, 1.0, 1.0, 0.0]],
                           [[0.3, -0.7, 2.2, 1.1], [5.0, 1.0, 0.0, -5.0], [0.0, 0.0, 0.0, 0.0]]])
    # (B, T, V) = (2, 3, 4)
    tokens = torch.tensor([[1, 2, 0], [3, 0, 2]])  # (2, 3)
    expected = torch.empty(2, 3)
    for b in range(2):
        for t in range(3):
            z = [float(v) / temperature for v in logits[b, t]]
            expected[b, t] = z[tokens[b, t]] - math.log(sum(math.exp(v) for v in z))
    got = logprobs_from_logits(logits, tokens, temperature=temperature)
    assert got.shape == (2, 3)
    assert close(got, expected)
    # uniform logits: every token has log-prob log(1/4) at any temperature
    assert close(got[1, 2], math.log(0.25))


def test_logprobs_upcast_and_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, requires_grad=True)  # (B, T, V)
    tokens = torch.randint(0, 5, (2, 3))  # (B, T)
    logprobs = logprobs_from_logits(logits, tokens)
    logprobs.sum().backward()
    # d log p_k / d z_j = 1[j = k] - p_j, so each row of the gradient sums to 0
    assert close(logits.grad.sum(-1), torch.zeros(2, 3))
    half = logprobs_from_logits(logits.detach().bfloat16(), tokens)
    assert half.dtype == torch.float32


def test_logprobs_gradient_by_hand_equals_autograd_across_chunks(monkeypatch):
    """_TokenLogprobs writes its gradient by hand, a few rows of the batch at a time: it must equal
    autograd's log_softmax + gather, at any temperature, whether the batch is one chunk or many."""
    import rlhf_lab.ppo_math as ppo_math
    torch.manual_seed(0)
    logits = torch.randn(5, 4, 7, dtype=torch.float64, requires_grad=True)  # (B, T, V)
    tokens = torch.randint(0, 7, (5, 4))                                     # (B, T)
    weights = torch.randn(5, 4, dtype=torch.float64)                         # an arbitrary upstream gradient
    for chunk in (1 << 20, 28, 1):  # the whole batch, one row of 4 x 7, fewer elements than a row
        monkeypatch.setattr(ppo_math, "CHUNK_ELEMENTS", chunk)
        for temperature in (1.0, 0.7):
            expected = torch.log_softmax(logits / temperature, -1).gather(-1, tokens[..., None]).squeeze(-1)
            got = logprobs_from_logits(logits, tokens, temperature)
            assert torch.allclose(got, expected, atol=1e-12)
            (grad_expected,) = torch.autograd.grad((expected * weights).sum(), logits)
            (grad_got,) = torch.autograd.grad((got * weights).sum(), logits)
            assert torch.allclose(grad_got, grad_expected, atol=1e-12)
        assert torch.autograd.gradcheck(lambda x: logprobs_from_logits(x, tokens, 0.7), (logits,))
    # the entropy in chunks is the entropy of the whole batch at once
    monkeypatch.setattr(ppo_math, "CHUNK_ELEMENTS", 1)
    p = torch.softmax(logits.detach(), -1)
    assert torch.allclose(entropy_from_logits(logits.detach()), -(p * p.log()).sum(-1), atol=1e-12)


def test_logprobs_from_hidden_are_those_of_the_logits(monkeypatch):
    """The LM head and the log-softmax taken together (_HeadTokenLogprobs, the logits never whole): the same
    log-probs as logprobs_from_logits(hidden @ W.T), and the same gradients for the hidden states and, when
    it trains, the head; in any number of chunks."""
    from rlhf_lab.ppo_math import entropy_from_hidden, logprobs_from_hidden
    torch.manual_seed(1)
    hidden = torch.randn(4, 3, 6, dtype=torch.float64, requires_grad=True)  # (B, T, C)
    weight = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)     # (V, C)
    tokens = torch.randint(0, 9, (4, 3))                                     # (B, T)
    weights = torch.randn(4, 3, dtype=torch.float64)
    for chunk in (1 << 20, 27, 1):  # one chunk, a row of 3 x 9 at a time, fewer elements than a row
        monkeypatch.setattr(ppo_math, "CHUNK_ELEMENTS", chunk)
        for temperature in (1.0, 0.7):
            expected = logprobs_from_logits(hidden @ weight.T, tokens, temperature)
            got = logprobs_from_hidden(hidden, weight, tokens, temperature)
            assert torch.allclose(got, expected, atol=1e-12)
            grads_expected = torch.autograd.grad((expected * weights).sum(), (hidden, weight))
            grads_got = torch.autograd.grad((got * weights).sum(), (hidden, weight))
            for a, b in zip(grads_got, grads_expected):
                assert torch.allclose(a, b, atol=1e-12)
            assert torch.allclose(entropy_from_hidden(hidden, weight, temperature),
                                  entropy_from_logits(hidden.detach() @ weight.detach().T, temperature), atol=1e-12)
        assert torch.autograd.gradcheck(lambda h, w: logprobs_from_hidden(h, w, tokens, 0.7), (hidden, weight))
        # with_entropy: the same log-probs and entropy_from_hidden's entropy, from one pass over the chunks
        both, entropy = logprobs_from_hidden(hidden, weight, tokens, 0.7, with_entropy=True)
        assert torch.equal(both, logprobs_from_hidden(hidden, weight, tokens, 0.7)) and not entropy.requires_grad
        assert torch.equal(entropy, entropy_from_hidden(hidden, weight, 0.7))
    # a frozen head (GPT-2's tied embedding in the lab) gets no gradient, and costs none
    frozen = weight.detach()
    (grad_hidden,) = torch.autograd.grad(logprobs_from_hidden(hidden, frozen, tokens).sum(), (hidden,))
    assert grad_hidden.shape == hidden.shape
    with pytest.raises(LabError, match="position t predicts"):
        logprobs_from_hidden(hidden, weight, tokens[:, :2])


def test_logprobs_errors_speak():
    with pytest.raises(LabError, match="predicts tokens"):
        logprobs_from_logits(torch.zeros(2, 4, 5), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(LabError, match="temperature"):
        logprobs_from_logits(torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), temperature=0)


def test_entropy():
    V = 7
    uniform = torch.randn(2, 3, 1).expand(2, 3, V)  # a constant per position is uniform after softmax
    assert close(entropy_from_logits(uniform), torch.full((2, 3), math.log(V)))
    assert close(entropy_from_logits(uniform, temperature=0.5), torch.full((2, 3), math.log(V)))
    peaked = torch.tensor([[[100.0, 0.0, 0.0]]])  # (1, 1, 3)
    assert close(entropy_from_logits(peaked), [[0.0]], tol=1e-6)
    logits = torch.tensor([[[1.0, 2.0, 3.0]]])
    for temperature in (1.0, 2.0):
        p = torch.softmax(logits / temperature, -1)
        assert close(entropy_from_logits(logits, temperature), -(p * p.log()).sum(-1))
    # a higher temperature flattens the distribution: more entropy
    assert entropy_from_logits(logits, 2.0) > entropy_from_logits(logits, 1.0)


# -----------------------------------------------------------------------------
# masked statistics


def test_masked_mean_and_var():
    x = torch.tensor([[1.0, 2.0, float("nan")], [3.0, 4.0, float("inf")]])  # (2, 3)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    assert close(masked_mean(x, mask), 2.5)  # nan / inf in the padding do not leak
    assert close(masked_mean(x, mask, dim=1), [1.5, 3.5])
    assert close(masked_var(x, mask), 5.0 / 3.0)  # squares 2.25 + 0.25 + 0.25 + 2.25, / 3
    assert close(masked_var(x, mask, unbiased=False), 1.25)
    with pytest.raises(LabError, match="at least 2"):
        masked_var(x, torch.tensor([[True, False, False], [False, False, False]]))


def test_masked_whiten():
    torch.manual_seed(0)
    x = 3.0 + 2.0 * torch.randn(4, 4)  # (B, T)
    x[MASK == 0] = 1000.0  # padding garbage must not shift the statistics
    whitened = masked_whiten(x, MASK)
    on_mask = whitened[MASK.bool()]
    assert close(on_mask.mean(), 0.0, tol=1e-6)
    assert close(on_mask.std(), 1.0, tol=1e-5)  # unbiased, as masked_var
    assert torch.all(whitened[~MASK.bool()] == 0)
    kept = masked_whiten(x, MASK, shift_mean=False)
    assert close(kept[MASK.bool()].mean(), x[MASK.bool()].mean(), tol=1e-5)
    assert close(kept[MASK.bool()].std(), 1.0, tol=1e-5)
    assert torch.all(kept[~MASK.bool()] == 0)


# -----------------------------------------------------------------------------
# KL estimators and the KL-shaped reward


def test_kl_estimators_on_hand_numbers():
    logprobs = torch.tensor([math.log(0.5), math.log(0.25), math.log(0.3)])
    ref_logprobs = torch.tensor([math.log(0.25), math.log(0.5), math.log(0.3)])
    log2 = math.log(2)
    assert close(kl_estimate(logprobs, ref_logprobs, "k1"), [log2, -log2, 0.0])
    assert close(kl_estimate(logprobs, ref_logprobs, "k2"), [0.5 * log2 ** 2, 0.5 * log2 ** 2, 0.0])
    # r = p_ref / p = 0.5, then 2: (r - 1) - log r
    assert close(kl_estimate(logprobs, ref_logprobs, "k3"), [-0.5 + log2, 1.0 - log2, 0.0])
    with pytest.raises(LabError, match="k1"):
        kl_estimate(logprobs, ref_logprobs, "k4")


def test_k3_is_nonnegative_and_unbiased():
    torch.manual_seed(0)
    logits = torch.randn(20)
    ref_logits = logits + 0.3 * torch.randn(20)
    logp, ref_logp = torch.log_softmax(logits, 0), torch.log_softmax(ref_logits, 0)
    a = torch.randn(1000, 50) * 3
    assert torch.all(kl_estimate(a, a + torch.randn(1000, 50), "k3") >= 0)
    # the exact expectation under p: both k1 and k3 equal KL(p || p_ref)
    p = logp.exp()
    true_kl = (p * (logp - ref_logp)).sum()
    assert close((p * kl_estimate(logp, ref_logp, "k1")).sum(), true_kl, tol=1e-6)
    assert close((p * kl_estimate(logp, ref_logp, "k3")).sum(), true_kl, tol=1e-6)


def test_kl_shaped_rewards_score_at_last_token():
    scores = torch.tensor([1.0, -2.0, 0.5, 3.0])  # (B,)
    torch.manual_seed(0)
    logprobs = torch.randn(4, 4)  # (B, T)
    rewards, kl = kl_shaped_rewards(scores, logprobs, logprobs.clone(), MASK, kl_coef=0.1)
    expected = torch.zeros(4, 4)
    expected[0, 2], expected[1, 0], expected[2, 3], expected[3, 1] = 1.0, -2.0, 0.5, 3.0
    assert torch.equal(kl, torch.zeros(4, 4))
    assert close(rewards, expected, tol=0)


def test_kl_shaped_rewards_hand_case():
    scores = torch.tensor([2.0, -1.0])  # (B,)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])  # (B, T)
    logprobs = torch.tensor([[-1.0, -2.0, float("nan")], [-0.5, -1.0, -3.0]])  # nan in the padding
    ref_logprobs = torch.tensor([[-1.5, -1.0, -7.0], [-0.5, -2.0, -2.0]])
    rewards, kl = kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.2)
    assert close(kl, [[0.5, -1.0, 0.0], [0.0, 1.0, -1.0]])
    assert close(rewards, [[-0.1, 0.2 + 2.0, 0.0], [0.0, -0.2, 0.2 - 1.0]])
    _, kl3 = kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.2, kl_kind="k3")
    assert close(kl3[0, :2], [math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0])
    with pytest.raises(LabError, match="all zeros"):
        kl_shaped_rewards(scores, logprobs, ref_logprobs, torch.tensor([[1, 0, 0], [0, 0, 0]]), 0.2)


# -----------------------------------------------------------------------------
# GAE


def gae_reference(rewards, values, mask, gamma, lam):
    """Plain Python double loop: A_t = sum_k (gamma lam)^(k - t) delta_k over the real tokens."""
    B, T = rewards.shape
    advantages = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        length = int(mask[b].sum())
        r, v = rewards[b].tolist(), values[b].tolist()
        for t in range(length):
            total = 0.0
            for k in range(t, length):
                next_value = v[k + 1] if k + 1 < length else 0.0  # the episode ends after EOS
                delta = r[k] + gamma * next_value - v[k]
                total += (gamma * lam) ** (k - t) * delta
            advantages[b, t] = total
    return advantages


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_double_loop(gamma, lam):
    torch.manual_seed(1)
    rewards, values = torch.randn(4, 4), torch.randn(4, 4)  # (B, T)
    advantages, returns = gae(rewards, values, MASK, gamma=gamma, lam=lam)
    expected = gae_reference(rewards, values, MASK, gamma, lam)
    assert close(advantages, expected, tol=1e-5)
    assert close(returns, (expected + values.double()) * MASK, tol=1e-5)
    assert torch.all(advantages[MASK == 0] == 0) and torch.all(returns[MASK == 0] == 0)


def test_gae_gamma_lam_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.1, -0.2, 1.0, 9.0], [0.5, 2.0, 9.0, 9.0]])  # 9.0s are padding
    values = torch.tensor([[0.3, 0.1, 0.7, 9.0], [-1.0, 0.4, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert close(advantages, [[0.9 - 0.3, 0.8 - 0.1, 1.0 - 0.7, 0.0], [2.5 + 1.0, 2.0 - 0.4, 0.0, 0.0]])
    assert close(returns, [[0.9, 0.8, 1.0, 0.0], [2.5, 2.0, 0.0, 0.0]])  # Monte Carlo returns


def test_gae_is_detached():
    values = torch.randn(2, 3, requires_grad=True)
    advantages, returns = gae(torch.randn(2, 3), values, torch.ones(2, 3))
    assert not advantages.requires_grad and not returns.requires_grad


# -----------------------------------------------------------------------------
# PPO losses


def test_policy_loss_at_ratio_one():
    torch.manual_seed(0)
    old_logprobs = torch.randn(4, 4)  # (B, T)
    logprobs = old_logprobs.clone().requires_grad_()
    advantages = torch.randn(4, 4)
    pg_loss, stats = policy_loss(logprobs, old_logprobs, advantages, MASK)
    assert close(pg_loss, -masked_mean(advantages, MASK))
    assert float(stats["clipfrac"]) == 0.0
    assert float(stats["approx_kl"]) == 0.0
    assert float(stats["ratio_mean"]) == 1.0 and float(stats["ratio_max"]) == 1.0
    pg_loss.backward()
    # at ratio 1 the gradient is -A / (number of response tokens): the policy gradient itself
    assert close(logprobs.grad, -advantages * MASK / MASK.sum())


def test_policy_loss_hand_case_with_clipping():
    ratio = torch.tensor([[1.5, 0.5, 0.9, 1.5, 3.0]])  # (1, 5); the last token is padding
    advantages = torch.tensor([[1.0, -1.0, 2.0, -1.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    old_logprobs = torch.full((1, 5), -2.0)
    logprobs = (old_logprobs + ratio.log()).requires_grad_()
    pg_loss, stats = policy_loss(logprobs, old_logprobs, advantages, mask, clip_range=0.2)
    # per token max(-A r, -A clip(r)): clipped -1.2, clipped 0.8, unclipped -1.8, unclipped 1.5
    assert close(pg_loss, (-1.2 + 0.8 - 1.8 + 1.5) / 4)
    assert close(stats["clipfrac"], 0.5)
    assert close(stats["ratio_mean"], (1.5 + 0.5 + 0.9 + 1.5) / 4)
    assert close(stats["ratio_max"], 1.5)  # the padding's 3.0 is not counted
    r = torch.tensor([1.5, 0.5, 0.9, 1.5], dtype=torch.float64)
    assert close(stats["approx_kl"], ((r - 1) - r.log()).mean())
    pg_loss.backward()
    # clipped tokens get no gradient; unclipped ones get -A r / n
    assert close(logprobs.grad, [[0.0, 0.0, -2.0 * 0.9 / 4, 1.5 / 4, 0.0]])


def test_value_loss_hand_case_with_clipping():
    values = torch.tensor([[0.5, -0.1, 1.3, 7.0]], requires_grad=True)  # (1, 4); last is padding
    old_values = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    returns = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    vf_loss, stats = value_loss(values, old_values, returns, mask, clip_range_value=0.2)
    # token 1: clipped 0.2 -> (0.2-1)^2 = 0.64 > 0.25; token 2: 0.01 both; token 3: 1.69 > 1.44
    assert close(vf_loss, 0.5 * (0.64 + 0.01 + 1.69) / 3)
    assert close(stats["vf_clipfrac"], 1 / 3)


def test_explained_variance():
    torch.manual_seed(0)
    returns = torch.randn(4, 4)
    assert close(explained_variance(returns.clone(), returns, MASK), 1.0)
    constant = torch.full_like(returns, float(masked_mean(returns, MASK)))
    assert close(explained_variance(constant, returns, MASK), 0.0, tol=1e-6)
    assert float(explained_variance(returns + 100 * (1 - MASK), returns, MASK)) == pytest.approx(1.0)
    assert math.isnan(float(explained_variance(returns, torch.ones(4, 4), MASK)))


# -----------------------------------------------------------------------------
# KL controllers


def test_adaptive_kl_controller():
    above = AdaptiveKLController(init_kl_coef=0.15, target=6.0, horizon=10000)
    assert above.update(6.6, n_steps=256) == pytest.approx(0.15 * (1 + 0.1 * 256 / 10000))
    below = AdaptiveKLController(0.15, 6.0, 10000)
    below.update(torch.tensor(5.4), n_steps=256)  # a tensor KL works too
    assert below.value == pytest.approx(0.15 * (1 - 0.1 * 256 / 10000))
    # errors beyond +-20 % are clipped
    far_above = AdaptiveKLController(0.15, 6.0, 10000)
    far_above.update(60.0, n_steps=256)
    assert far_above.value == pytest.approx(0.15 * (1 + 0.2 * 256 / 10000))
    far_below = AdaptiveKLController(0.15, 6.0, 10000)
    far_below.update(-3.0, n_steps=256)
    assert far_below.value == pytest.approx(0.15 * (1 - 0.2 * 256 / 10000))
    at_target = AdaptiveKLController()
    at_target.update(6.0, n_steps=256)
    assert at_target.value == 0.15


def test_fixed_kl_controller():
    controller = FixedKLController(0.05)
    assert controller.update(100.0, n_steps=256) == 0.05 and controller.value == 0.05


# -----------------------------------------------------------------------------
# reward model loss


def test_pairwise_loss_and_accuracy():
    assert close(pairwise_loss(torch.tensor([0.3, -2.0]), torch.tensor([0.3, -2.0])), math.log(2))
    assert close(pairwise_loss(torch.tensor([1.0]), torch.tensor([0.0])), math.log1p(math.exp(-1)))
    mixed = pairwise_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert close(mixed, (math.log1p(math.exp(-1)) + math.log1p(math.exp(1))) / 2)
    assert close(pairwise_loss(torch.tensor([-100.0]), torch.tensor([0.0])), 100.0, tol=1e-4)  # finite
    chosen = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    pairwise_loss(chosen, torch.zeros(3)).backward()
    assert torch.all(chosen.grad < 0)  # descending the loss raises the chosen rewards
    assert close(pairwise_accuracy(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 2.0, 4.0])), 1 / 3)


# -----------------------------------------------------------------------------
# critic-free advantages: RLOO and GRPO (k samples of each prompt, in a row)


def test_rloo_advantages_on_hand_numbers():
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0, 5.0, 5.0, 5.0, 5.0])  # two prompts, k = 4
    got = rloo_advantages(rewards, 4)
    # r_i minus the mean of the other three: 1 - 11/3, 2 - 10/3, 3 - 9/3, 6 - 6/3; a tied group gives 0
    assert close(got, [-8 / 3, -4 / 3, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0])
    assert torch.equal(got[4:], torch.zeros(4))
    assert close(rloo_advantages(torch.tensor([1.0, 3.0, -2.0, -2.0]), 2), [-2.0, 2.0, 0.0, 0.0])
    # the same as k / (k - 1) (r_i - group mean): sums to 0 within each group
    r = torch.randn(12)
    assert close(rloo_advantages(r, 3), 1.5 * (r.view(4, 3) - r.view(4, 3).mean(1, keepdim=True)).view(-1))
    assert close(rloo_advantages(r, 3).view(4, 3).sum(1), torch.zeros(4), tol=1e-5)


def test_grpo_advantages_on_hand_numbers():
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0, 5.0, 5.0, 5.0, 5.0])
    std = math.sqrt((4 + 1 + 0 + 9) / 3)  # the first group's std with Bessel's correction: 2.1602
    got = grpo_advantages(rewards, 4)
    assert close(got[:4], [-2 / (std + 1e-4), -1 / (std + 1e-4), 0.0, 3 / (std + 1e-4)])
    assert torch.equal(got[4:], torch.zeros(4))  # equal rewards: 0, not 0 / 0
    # Dr. GRPO (Liu et al. 2025): the mean removed, no division by the std
    assert close(grpo_advantages(rewards, 4, scale_by_std=False), [-2.0, -1.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0])
    # scale-free: a group's advantages do not change when its rewards are scaled
    assert close(grpo_advantages(10 * rewards[:4], 4), got[:4], tol=1e-4)
    assert not grpo_advantages(torch.randn(8, requires_grad=True), 4).requires_grad  # targets, not graph


def test_critic_free_advantages_refuse_bad_groups():
    with pytest.raises(LabError, match="k >= 2"):
        rloo_advantages(torch.ones(4), 1)
    with pytest.raises(LabError, match="multiple of group_size"):
        grpo_advantages(torch.ones(6), 4)
    with pytest.raises(LabError, match=r"\(B,\) tensor"):
        rloo_advantages(torch.ones(2, 4), 4)


def test_kl_loss_is_k3_averaged_over_response_tokens():
    logprobs = torch.log(torch.tensor([[0.5, 0.25, 0.9]]))   # (1, 3), the last token is padding
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.1]]))
    mask = torch.tensor([[1, 1, 0]])
    # r = pi_ref / pi = 0.5, then 2: (r - 1) - log r = -0.5 + log 2, 1 - log 2; mean 0.25
    assert close(kl_loss(logprobs, ref, mask), 0.25)
    same = logprobs.clone().requires_grad_(True)
    loss = kl_loss(same, logprobs, mask)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(same.grad, torch.zeros_like(same))  # policy = reference
    moved = logprobs.clone().requires_grad_(True)
    kl_loss(moved, ref, mask).backward()
    # d/dlogp of r - 1 - log r with r = exp(ref - logp): 1 - r; the padding gets no gradient
    assert close(moved.grad, [[(1 - 0.5) / 2, (1 - 2.0) / 2, 0.0]])


# -----------------------------------------------------------------------------
# DPO and IPO on hand numbers


def test_dpo_loss_is_log_2_and_implicit_reward_0_at_the_start():
    logps = torch.tensor([-10.0, -31.5, -4.25])
    assert torch.equal(implicit_rewards(logps, logps, 0.1), torch.zeros(3))
    assert close(dpo_loss(logps, logps - 2, logps, logps - 2, beta=0.1), math.log(2))
    assert close(dpo_loss(logps, logps + 1, logps, logps + 1, beta=0.5), math.log(2))


def test_dpo_and_ipo_loss_on_hand_numbers():
    chosen, rejected = torch.tensor([-10.0]), torch.tensor([-12.0])
    ref_chosen, ref_rejected = torch.tensor([-11.0]), torch.tensor([-11.0])
    # h = (-10 + 11) - (-12 + 11) = 2
    assert close(implicit_rewards(chosen, ref_chosen, 0.1), [0.1]) and close(
        implicit_rewards(rejected, ref_rejected, 0.1), [-0.1])
    assert close(dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1), math.log1p(math.exp(-0.2)))
    assert close(dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1, loss_type="ipo"), (2 - 5) ** 2)
    assert close(dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.25, loss_type="ipo"), 0.0)
    # two pairs: the mean; a pair ordered the wrong way costs more
    two = dpo_loss(torch.tensor([-10.0, -12.0]), torch.tensor([-12.0, -10.0]), torch.tensor([-11.0, -11.0]),
                   torch.tensor([-11.0, -11.0]), beta=1.0)
    assert close(two, (math.log1p(math.exp(-2)) + math.log1p(math.exp(2))) / 2)
    assert close(dpo_loss(torch.tensor([-200.0]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]),
                          beta=1.0), 200.0, tol=1e-4)  # finite far from the reference
    with pytest.raises(LabError, match="'sigmoid' \\(DPO\\) or 'ipo'"):
        dpo_loss(chosen, rejected, ref_chosen, ref_rejected, loss_type="hinge")


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    chosen = torch.tensor([-10.0, -20.0], requires_grad=True)
    rejected = torch.tensor([-10.0, -20.0], requires_grad=True)
    dpo_loss(chosen, rejected, chosen.detach(), rejected.detach(), beta=0.1).backward()
    # at the start d loss / d log pi(y_w) = -beta * sigmoid(0) / N = -0.025 per pair, +0.025 for y_l
    assert close(chosen.grad, [-0.025, -0.025]) and close(rejected.grad, [0.025, 0.025])
