"""The math of PPO for language models, as small pure torch functions.

Shapes: B batch, T response length, V vocabulary. `mask` is the (B, T) response mask: 1 on real
response tokens (up to and including EOS), 0 on the padding after them. It may be bool or float.

Sources, cited line by line below:
- Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", and its code
  openai/lm-human-preferences (lm_human_preferences/train_policy.py), "lm-human-preferences" below.
- Huang et al. 2023, "The N Implementation Details of RLHF with PPO", "N details" below.
- CleanRL's ppo.py (vwxyzjn/cleanrl) for the names: lastgaelam, nextvalues, delta, pg_loss, clipfrac.
- Schulman, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html, for k1/k2/k3.
- Schulman et al. 2015 (GAE, arXiv 1506.02438); Schulman et al. 2017 (PPO, arXiv 1707.06347).
- Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
  Feedback in LLMs" (RLOO, arXiv 2402.14740); Shao et al. 2024, "DeepSeekMath" (GRPO, arXiv 2402.03300);
  Liu et al. 2025, "Understanding R1-Zero-Like Training" (Dr. GRPO, arXiv 2503.20783).
- Rafailov et al. 2023, "Direct Preference Optimization" (DPO, arXiv 2305.18290); Azar et al. 2023,
  "A General Theoretical Paradigm to Understand Learning from Human Preferences" (IPO, arXiv 2310.12036).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .utils import LabError

__all__ = [
    "logprobs_from_logits", "entropy_from_logits", "logprobs_from_hidden", "entropy_from_hidden",
    "masked_mean", "masked_var", "masked_whiten",
    "kl_estimate", "last_token_index", "kl_shaped_rewards", "gae",
    "policy_loss", "value_loss", "explained_variance",
    "rloo_advantages", "grpo_advantages", "kl_loss",
    "AdaptiveKLController", "FixedKLController",
    "pairwise_loss", "pairwise_accuracy",
    "implicit_rewards", "dpo_loss",
]


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """At least float32: log-softmax in bf16/fp16 loses enough precision to move the ratio off 1."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise LabError(f"temperature={temperature}: log-probs need a temperature > 0 "
                       "(greedy decoding has no sampling distribution); use the temperature "
                       "the rollouts were sampled with, e.g. 1.0.")


# -----------------------------------------------------------------------------
# from logits to per-token log-probs and entropy


# A (B, T, V) float32 temporary is at most this many elements (4 MiB): the log-softmax and the softmax are
# taken over as many rows of the batch at a time as fit (one row for GPT-2's V = 50257, 15 rows of 24
# positions for the tiny model's 2,858), never as a second full copy of the logits.
CHUNK_ELEMENTS = 1 << 20


def _row_chunks(B: int, T: int, V: int) -> list[slice]:
    """Slices of the batch dimension of (B, T, V) logits whose (rows, T, V) fit CHUNK_ELEMENTS."""
    rows = max(1, CHUNK_ELEMENTS // max(1, T * V))
    return [slice(start, start + rows) for start in range(0, B, rows)]


def _token_log_softmax(z: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(z)[token] # (b, T) of z # (b, T, V). log_softmax, not z - logsumexp(z): its kernel takes
    each row's sum in one thread, so the result does not depend on how many threads a call got (a parallel
    logsumexp can differ in the last bit on a process's first call, and the policy's log-probs must equal
    the reference's bit for bit while LoRA's B is 0)."""
    return torch.log_softmax(z, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _token_log_softmax_grad(z: torch.Tensor, tokens: torch.Tensor, grad_out: torch.Tensor,
                            temperature: float) -> torch.Tensor:
    """d/d logits of sum(grad_out * log softmax(z)[token]), z = logits / temperature: (onehot - softmax(z))
    * grad_out / temperature # (b, T, V), written in place into softmax(z)."""
    g = grad_out.unsqueeze(-1).to(z.dtype)                                     # (b, T, 1)
    dz = torch.softmax(z, dim=-1).mul_(-g)                                     # -softmax(z) * g
    dz.scatter_add_(-1, tokens.unsqueeze(-1), g)                               # + onehot(token) * g
    return dz.div_(temperature)


class _TokenLogprobs(torch.autograd.Function):
    """log softmax(logits / temperature)[token], without keeping the (B, T, V) log-softmax.

    The forward pass keeps the logits; the backward pass writes the gradient
    (onehot(token) - softmax(z)) * grad / temperature straight into one (B, T, V) tensor. Autograd of
    log_softmax + gather would keep the log-softmax for the backward pass and build two more (B, T, V)
    tensors there (the scattered gradient and the log-softmax's), and one graph node per chunk."""

    @staticmethod
    def forward(ctx, logits, tokens, temperature):
        out = torch.empty(tokens.shape, dtype=torch.promote_types(logits.dtype, torch.float32),
                          device=logits.device)                                # (B, T)
        for rows in _row_chunks(*logits.shape):
            z = _upcast(logits[rows]) / temperature                            # (b, T, V)
            out[rows] = _token_log_softmax(z, tokens[rows])
        ctx.save_for_backward(logits, tokens)
        ctx.temperature = temperature
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logits, tokens = ctx.saved_tensors
        grad = torch.empty_like(logits)                                        # (B, T, V)
        for rows in _row_chunks(*logits.shape):
            z = _upcast(logits[rows]) / ctx.temperature                        # (b, T, V)
            grad[rows] = _token_log_softmax_grad(z, tokens[rows], grad_out[rows], ctx.temperature)
        return grad, None, None


class _HeadTokenLogprobs(torch.autograd.Function):
    """log softmax(hidden @ weight.T / temperature)[token] without ever holding the (B, T, V) logits.

    The LM head and the log-softmax are taken together, CHUNK_ELEMENTS of logits at a time (as Liger's
    fused linear cross-entropy): the forward pass keeps the hidden states # (B, T, C) only; the backward
    pass makes each chunk's logits again (one more matmul of the LM head) and turns them into the hidden
    states' gradient (and the head's, if it trains). At GPT-2's vocabulary that is
    the difference between 617 MB of logits and their gradient for 64 x 48 tokens and a few MB."""

    @staticmethod
    def forward(ctx, hidden, weight, tokens, temperature, with_entropy):
        B, T, _ = hidden.shape
        weight_ = weight.to(hidden.dtype)  # bf16 under autocast on a GPU, as the LM head's linear would be
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        out = torch.empty(tokens.shape, dtype=dtype, device=hidden.device)                       # (B, T)
        entropy = torch.empty(tokens.shape if with_entropy else (0,), dtype=dtype, device=hidden.device)
        for rows in _row_chunks(B, T, weight.shape[0]):
            z = _upcast(F.linear(hidden[rows], weight_)) / temperature         # (b, T, V)
            out[rows] = _token_log_softmax(z, tokens[rows])
            if with_entropy:  # from the same chunk of logits: the rollout needs both, the LM head once
                entropy[rows] = _entropy(z)
        ctx.save_for_backward(hidden, weight, tokens)
        ctx.temperature = temperature
        ctx.mark_non_differentiable(entropy)
        return out, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _grad_entropy):
        hidden, weight, tokens = ctx.saved_tensors
        B, T, _ = hidden.shape
        weight_ = weight.to(hidden.dtype)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None   # (B, T, C)
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None   # (V, C)
        for rows in _row_chunks(B, T, weight.shape[0]):
            z = _upcast(F.linear(hidden[rows], weight_)) / ctx.temperature     # (b, T, V)
            dz = _token_log_softmax_grad(z, tokens[rows], grad_out[rows], ctx.temperature).to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[rows] = dz @ weight_                                # (b, T, C)
            if grad_weight is not None:
                grad_weight += (dz.flatten(0, 1).T @ hidden[rows].flatten(0, 1)).to(weight.dtype)  # (V, C)
        return grad_hidden, grad_weight, None, None, None


def logprobs_from_hidden(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor,
                         temperature: float = 1.0, with_entropy: bool = False):
    """logprobs_from_logits(hidden @ weight.T, tokens, temperature), the logits never held whole.
    with_entropy: also return entropy_from_hidden's # (B, T) (no gradient), from the same chunks of logits.

    hidden  # (B, T, C): the LM head's input at the positions that predict tokens (trunk.forward_response
              with logits=False)
    weight  # (V, C): the LM head's weight (GPT-2's is tied to the token embedding; no bias)
    tokens  # (B, T)
    returns # (B, T), float32 or wider
    """
    if hidden.shape[:2] != tokens.shape:
        raise LabError(f"hidden states {tuple(hidden.shape)} and tokens {tuple(tokens.shape)} disagree on "
                       "(B, T): slice the hidden states so that position t predicts tokens[:, t].")
    _check_temperature(temperature)
    logprobs, entropy = _HeadTokenLogprobs.apply(hidden, weight, tokens, temperature, with_entropy)
    return (logprobs, entropy) if with_entropy else logprobs


def entropy_from_hidden(hidden: torch.Tensor, weight: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """entropy_from_logits(hidden @ weight.T, temperature), CHUNK_ELEMENTS of logits at a time; no gradient.

    hidden # (B, T, C); weight # (V, C); returns # (B, T)
    """
    _check_temperature(temperature)
    B, T, _ = hidden.shape
    with torch.no_grad():
        weight_ = weight.to(hidden.dtype)
        return torch.cat([entropy_from_logits(F.linear(hidden[rows], weight_), temperature)
                          for rows in _row_chunks(B, T, weight.shape[0])])  # (B, T)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor,
                         temperature: float = 1.0) -> torch.Tensor:
    """log pi(token_t | context_t) for each response token.

    logits  # (B, T, V): logits[:, t] must be the distribution that *produced* tokens[:, t], i.e.
            already shifted by one (a causal LM's logits at position i predict token i + 1).
    tokens  # (B, T)
    returns # (B, T), float32 or wider

    log softmax(z)[k], z = logits / temperature, taken over CHUNK_ELEMENTS-sized
    slices of the batch (as TRL's selective_log_softmax, for the memory a large vocabulary takes), with the
    gradient written by hand (_TokenLogprobs): the rollouts and the PPO update go through this one function.
    """
    if logits.shape[:2] != tokens.shape:
        raise LabError(f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} disagree on "
                       "(B, T): slice the logits so that logits[:, t] predicts tokens[:, t] "
                       "(for a causal LM: logits[:, prompt_len - 1 : -1]).")
    _check_temperature(temperature)
    # Divide by the sampling temperature here too, or the KL grows too fast
    # (N details: "scale the logits by sampling temperature").
    return _TokenLogprobs.apply(logits, tokens, temperature)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of the next-token distribution at each position.

    logits  # (B, T, V)
    returns # (B, T)
    """
    _check_temperature(temperature)
    entropies = []
    for rows in _row_chunks(*logits.shape):  # as many rows at a time as fit CHUNK_ELEMENTS, as above
        entropies.append(_entropy(_upcast(logits[rows]) / temperature))  # (b, T)
    return torch.cat(entropies)  # (B, T)


def _entropy(z: torch.Tensor) -> torch.Tensor:
    """H = -sum p log p = logsumexp(z) - sum p z # (b, T) of z # (b, T, V), without forming log p (TRL's
    entropy_from_logits)."""
    return torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(-1)


# -----------------------------------------------------------------------------
# statistics over the response tokens only


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over the positions where mask is 1 (all of them, or along `dim`).

    x    # (B, T)
    mask # (B, T)
    An empty mask gives nan (0 / 0): every response has at least its EOS token.
    """
    mask = mask.bool()
    # where(), not x * mask: a nan or inf in the padding must not leak into the mean
    total = torch.where(mask, x, torch.zeros_like(x))
    if dim is None:
        return total.sum() / mask.sum()
    return total.sum(dim) / mask.sum(dim)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over the positions where mask is 1; a 0-d tensor.

    x    # (B, T)
    mask # (B, T)
    """
    mask = mask.bool()
    n = mask.sum()
    if unbiased and n < 2:
        raise LabError(f"masked_var(unbiased=True) needs at least 2 unmasked values, got {int(n)}: "
                       "use a larger batch or unbiased=False.")
    mean = masked_mean(x, mask)
    variance = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        variance = variance * n / (n - 1)  # Bessel's correction, as TRL's masked_var
    return variance


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Zero mean, unit variance over the mask; padded positions stay 0.

    x       # (B, T)
    mask    # (B, T)
    returns # (B, T)
    shift_mean=False keeps the mean and only rescales: lm-human-preferences whitens rewards that
    way, and advantages with shift_mean=True (N details: "advantages whitened per batch").
    """
    mean, variance = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(variance + 1e-8)  # 1e-8 as lm-human-preferences' whiten
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


# -----------------------------------------------------------------------------
# KL penalty and the per-token reward (Ziegler et al. 2019, eq. 2)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the sampled tokens' log-probs.

    logprobs, ref_logprobs # (B, T): log pi(a_t) and log pi_ref(a_t); a_t was sampled from pi
    returns                # (B, T)
    http://joschu.net/blog/kl-approx.html
    """
    log_ratio = logprobs - ref_logprobs  # (B, T) log pi/pi_ref
    if kind == "k1":
        return log_ratio  # unbiased, but negative on some samples
    if kind == "k2":
        return 0.5 * log_ratio ** 2  # biased, low variance, >= 0
    if kind == "k3":
        # r = pi_ref / pi; (r - 1) - log r is unbiased and >= 0 because log r <= r - 1
        log_r = -log_ratio
        return torch.expm1(log_r) - log_r  # expm1(x) = exp(x) - 1, exact for small x
    raise LabError(f"kl kind {kind!r} is unknown: use 'k1', 'k2' or 'k3' "
                   "(see http://joschu.net/blog/kl-approx.html).")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last response token (the last 1) in each row of the mask; # (B,) long."""
    mask = mask.bool()
    if not bool(mask.any(dim=1).all()):
        raise LabError("a row of the response mask is all zeros: every response needs at least one "
                       "token (its EOS). Check how the mask was built from the generated tokens.")
    T = mask.shape[1]
    positions = torch.arange(T, device=mask.device).expand_as(mask)  # (B, T)
    return torch.where(mask, positions, -1).max(dim=1).values  # (B,)


def kl_shaped_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      mask: torch.Tensor, kl_coef: float,
                      kl_kind: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * KL_t on every response token, plus the score on the last one.

    scores       # (B,)   reward-model scores, already normalised
    logprobs     # (B, T) policy log-probs of the sampled tokens (at the sampling temperature)
    ref_logprobs # (B, T) frozen reference model's log-probs of the same tokens
    mask         # (B, T)
    returns rewards # (B, T), kl # (B, T); both 0 on padding
    """
    mask = mask.bool()
    kl = kl_estimate(logprobs, ref_logprobs, kl_kind)  # (B, T)
    kl = torch.where(mask, kl, torch.zeros_like(kl))
    rewards = -kl_coef * kl  # (B, T) Ziegler et al. 2019 eq. 2: R = r - beta * log(pi / pi_ref)
    # The score goes on the LAST response token (where mask is last 1), not one slot after it:
    # TRL's removed PPOTrainer put it after EOS (N details; RLHF-NOTES "PPO details").
    last = last_token_index(mask)  # (B,)
    rows = torch.arange(rewards.shape[0], device=rewards.device)  # (B,)
    rewards = rewards.index_put((rows, last), scores.to(rewards.dtype), accumulate=True)
    return rewards, kl


# -----------------------------------------------------------------------------
# generalised advantage estimation (Schulman et al. 2015, arXiv 1506.02438)


@torch.no_grad()  # advantages and returns are targets, not part of the graph (CleanRL)
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
        gamma: float = 1.0, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns for each response token.

    rewards # (B, T) per-token rewards (kl_shaped_rewards)
    values  # (B, T) value head's V(s_t) at the rollout
    mask    # (B, T) right-padded: ones, then zeros
    returns advantages # (B, T), returns # (B, T); both 0 on padding
    gamma = 1, lam = 0.95 as Ziegler et al. 2019 / N details.
    """
    mask = mask.bool()
    zeros = torch.zeros_like(values)
    # Padding contributes nothing, and the value after the last real token is 0: the episode ends
    # there (TRL's compute_advantages also zeroes values and rewards on padding first).
    values = torch.where(mask, values, zeros)
    rewards = torch.where(mask, rewards.to(values.dtype), zeros)
    T = values.shape[1]
    lastgaelam = torch.zeros_like(values[:, 0])  # (B,)
    advantages_reversed = []
    for t in reversed(range(T)):  # CleanRL's loop, vectorised over the batch
        nextvalues = values[:, t + 1] if t < T - 1 else zeros[:, 0]  # (B,)
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]  # (B,) TD error
        lastgaelam = delta + gamma * lam * lastgaelam  # (B,)
        lastgaelam = torch.where(mask[:, t], lastgaelam, zeros[:, 0])  # nothing flows through padding
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)  # (B, T)
    returns = advantages + values  # (B, T) the value head's regression target
    return advantages, returns


# -----------------------------------------------------------------------------
# the PPO losses (Schulman et al. 2017; lm-human-preferences' loss())


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_range: float = 0.2) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate loss, averaged over the response tokens.

    logprobs     # (B, T) current policy, with gradients
    old_logprobs # (B, T) policy at rollout time
    advantages   # (B, T) usually whitened
    mask         # (B, T)
    returns pg_loss (0-d) and stats: approx_kl, clipfrac, ratio_mean, ratio_max (detached 0-d tensors)
    """
    mask = mask.bool()
    logratio = logprobs - old_logprobs  # (B, T)
    ratio = torch.exp(logratio)  # (B, T) exactly 1 on the first minibatch of the first epoch
    pg_losses = -advantages * ratio  # (B, T)
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)  # (B, T)
    pg_loss = masked_mean(torch.max(pg_losses, pg_losses2), mask)  # pessimistic bound (PPO eq. 7)
    with torch.no_grad():
        stats = {
            # k3 estimator of KL(pi_old || pi): http://joschu.net/blog/kl-approx.html (CleanRL)
            "approx_kl": masked_mean((ratio - 1) - logratio, mask),
            # share of tokens where the clipped term wins, i.e. the gradient is zero
            # (lm-human-preferences: pg_clipfrac = mean(pg_losses2 > pg_losses))
            "clipfrac": masked_mean((pg_losses2 > pg_losses).float(), mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": torch.where(mask, ratio, torch.full_like(ratio, float("-inf"))).max(),
        }
    return pg_loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, clip_range_value: float = 0.2) -> tuple[torch.Tensor, dict]:
    """Clipped value loss: the value head may move at most clip_range_value from its rollout value.

    values     # (B, T) current value head, with gradients
    old_values # (B, T) value head at rollout time
    returns    # (B, T) targets from gae()
    mask       # (B, T)
    returns vf_loss (0-d) and stats: vf_clipfrac (detached 0-d tensor)
    """
    mask = mask.bool()
    # lm-human-preferences' vpredclipped; N details: "clipped value loss (0.2)"
    values_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    vf_losses1 = (values - returns) ** 2  # (B, T)
    vf_losses2 = (values_clipped - returns) ** 2  # (B, T)
    vf_loss = 0.5 * masked_mean(torch.max(vf_losses1, vf_losses2), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((vf_losses2 > vf_losses1).float(), mask)}
    return vf_loss, stats


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var[R - V] / Var[R] over the mask (CleanRL's diagnostic); a 0-d tensor.

    values  # (B, T)
    returns # (B, T)
    1 means the value head predicts the returns perfectly, 0 no better than a constant, < 0 worse.
    Var[R] = 0 gives nan (as CleanRL's np.nan): with constant returns the ratio means nothing.
    """
    var_returns = masked_var(returns, mask, unbiased=False)
    explained = 1 - masked_var(returns - values, mask, unbiased=False) / var_returns
    return torch.where(var_returns == 0, torch.full_like(explained, float("nan")), explained)


# -----------------------------------------------------------------------------
# critic-free advantages: k samples per prompt, each judged against the others (no value head)
#
# `rewards` # (B,) holds one reward per response, in groups of k: rows g*k .. g*k + k - 1 are the k
# samples of one prompt. The advantage of a response is the same for each of its tokens (the trainer
# broadcasts it over the response mask) and enters PPO's clipped policy_loss.


def _grouped(rewards: torch.Tensor, group_size: int, name: str) -> torch.Tensor:
    """rewards # (B,) -> # (B / k, k), or a LabError that says what is wrong."""
    if rewards.dim() != 1:
        raise LabError(f"{name} takes one reward per response, a (B,) tensor; got shape {tuple(rewards.shape)}.")
    if group_size < 2 or rewards.shape[0] % group_size:
        raise LabError(f"{name} needs groups of k >= 2 samples of the same prompt (one baseline from the "
                       f"others); got k = {group_size} for {rewards.shape[0]} rewards. Use a batch_size that "
                       "is a multiple of group_size, and group_size >= 2.")
    return rewards.reshape(-1, group_size)  # (P, k)


@torch.no_grad()  # advantages are targets, not part of the graph
def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024, RLOO): the baseline of sample i is the mean
    reward of the other k - 1 samples of its prompt, so it does not depend on sample i itself.

    rewards # (B,) in groups of k; for RLOO the score minus beta * the response's summed KL
            (the KL folded into the sequence reward, as Ahmadian et al. do)
    returns # (B,) r_i - mean_{j != i} r_j = k / (k - 1) * (r_i - mean_j r_j); 0 where a group ties
    """
    r = _grouped(rewards, group_size, "rloo_advantages")         # (P, k)
    baseline = (r.sum(1, keepdim=True) - r) / (group_size - 1)   # (P, k) mean of the other k - 1
    return (r - baseline).reshape(-1)                            # (B,)


@torch.no_grad()
def grpo_advantages(rewards: torch.Tensor, group_size: int, scale_by_std: bool = True,
                    eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages (Shao et al. 2024, GRPO's outcome supervision, section 4.1.2):
    (r_i - mean(r)) / std(r) over the k samples of a prompt.

    rewards      # (B,) in groups of k: the score alone (GRPO's KL is a loss term, kl_loss)
    scale_by_std # False: r_i - mean(r) only, Dr. GRPO (Liu et al. 2025): dividing by the std weights
                 # the prompts whose samples nearly agree most (questions too easy or too hard)
    eps          # 1e-4 as TRL's GRPOTrainer; a group that ties gets 0, not 0 / 0
    returns      # (B,)
    """
    r = _grouped(rewards, group_size, "grpo_advantages")         # (P, k)
    advantages = r - r.mean(1, keepdim=True)                     # (P, k)
    if scale_by_std:
        advantages = advantages / (r.std(1, keepdim=True) + eps)  # std with Bessel's correction, as TRL's
    return advantages.reshape(-1)                                # (B,)


def kl_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GRPO's KL term (Shao et al. 2024, eq. 4): the k3 estimate of KL(pi || pi_ref), averaged over the
    response tokens, with gradients through the current policy's log-probs. A 0-d tensor, >= 0.

    logprobs     # (B, T) current policy, with gradients (not the rollout's: its ratio to pi is 1)
    ref_logprobs # (B, T) reference
    mask         # (B, T)
    pi_ref / pi - log(pi_ref / pi) - 1 per token: unbiased, never negative
    (http://joschu.net/blog/kl-approx.html); 0 with a zero gradient while pi = pi_ref.
    """
    return masked_mean(kl_estimate(logprobs, ref_logprobs, "k3"), mask)


# -----------------------------------------------------------------------------
# KL coefficient controllers (Ziegler et al. 2019, section 2.2; lm-human-preferences)


class AdaptiveKLController:
    """Moves kl_coef so that the measured KL tracks `target` nats.

    Defaults are Ziegler et al.'s stylistic (sentiment) tasks: beta 0.15, target 6 nats, horizon 10k.
    """

    def __init__(self, init_kl_coef: float = 0.15, target: float = 6.0, horizon: int = 10000):
        self.value = float(init_kl_coef)  # the current kl_coef (beta)
        self.target = float(target)  # KL(pi || pi_ref) in nats, summed over a response
        self.horizon = float(horizon)  # episodes over which an error of 20 % moves beta by 20 %

    def update(self, current_kl: float, n_steps: int) -> float:
        """current_kl: mean KL per response this batch; n_steps: episodes in the batch."""
        # error clipped to +-20 % so one noisy batch cannot swing beta (Ziegler et al. 2019, 2.2)
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value

    def __repr__(self) -> str:
        return (f"AdaptiveKLController(value={self.value:.4g}, target={self.target:g}, "
                f"horizon={self.horizon:g})")


class FixedKLController:
    """A constant kl_coef with the AdaptiveKLController interface."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"FixedKLController(value={self.value:.4g})"


# -----------------------------------------------------------------------------
# reward model: Bradley-Terry on pairs from rankings (Ouyang et al. 2022, eq. 1)


def pairwise_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """mean of -log sigmoid(r_chosen - r_rejected); a 0-d tensor.

    chosen_rewards, rejected_rewards # (N,) reward-model scores for the N pairs
    """
    # logsigmoid, not log(sigmoid()): stays finite for large negative margins
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


@torch.no_grad()
def pairwise_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Share of pairs where the chosen response scores strictly higher (ties count as wrong).

    chosen_rewards, rejected_rewards # (N,)
    """
    return (chosen_rewards > rejected_rewards).float().mean()


# -----------------------------------------------------------------------------
# direct preference optimisation: the Bradley-Terry loss on implicit rewards (Rafailov et al. 2023)


def implicit_rewards(logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's implicit reward of a response: beta * (log pi(y|x) - log pi_ref(y|x)) (Rafailov et al.
    2023, eq. 5, without the prompt's log Z(x), which cancels in every pair).

    logps, ref_logps # (N,) log-probs of whole responses, summed over their tokens
    returns          # (N,); 0 while the policy is the reference
    """
    return beta * (logps - ref_logps)


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float = 0.1, loss_type: str = "sigmoid") -> torch.Tensor:
    """The DPO loss, mean over N pairs; a 0-d tensor.

    chosen_logps, rejected_logps         # (N,) log pi(y_w|x), log pi(y_l|x), summed over response tokens
    ref_chosen_logps, ref_rejected_logps # (N,) the same under the reference
    h = (log pi - log pi_ref)(y_w) - (log pi - log pi_ref)(y_l)                          # (N,)
    "sigmoid": -log sigmoid(beta h) (Rafailov et al. 2023, eq. 7): pairwise_loss on the implicit rewards;
               log 2 while the policy is the reference
    "ipo":     (h - 1 / (2 beta))^2 (Azar et al. 2023, beta in the role of tau, as TRL's
               loss_type="ipo"): h is pulled to a finite margin instead of to infinity, so a policy
               cannot run away on pairs it already orders right
    """
    h = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)  # (N,)
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * h).mean()  # logsigmoid stays finite for large negative margins
    if loss_type == "ipo":
        return ((h - 1.0 / (2.0 * beta)) ** 2).mean()
    raise LabError(f"loss_type {loss_type!r} is unknown: use 'sigmoid' (DPO) or 'ipo' (IPO).")
