"""Held-out comparisons of the models on the shared trunk: samples, their gold and reward scores, and
their KL to the SFT model, the same numbers for every method (PPO, RLOO, GRPO, DPO), so that they sit
on one chart.

    summary, samples = compare_with_sft(model, tokenizer, prompts, name="dpo", reward=reward)
    summary["gold_score_sft"], summary["gold_score_dpo"], summary["kl"]      # kl: KL(policy || SFT)
    rows = sample_models({"SFT": (model, None), "DPO": (model, "policy")}, prompts, tokenizer)

Each model samples the same prompts, in the same chunks, from the same seed; the caller's RNG is
left as it was, so an evaluation in the middle of a run does not change the run.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import numpy as np
import torch

from .generation import check_fits, decode_responses
from .gold import gold_scores
from .ppo_math import kl_estimate, logprobs_from_logits
from .trunk import POLICY, forward_response, sample_responses, use_adapter


def rng_kept():
    """A block whose seeding does not change the caller's RNG (CPU, and the current CUDA device)."""
    return torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else [])


@torch.no_grad()
def evaluate_samples(model, tokenizer, prompts: list[str], adapter: str | None = POLICY, *, reward=None,
                     normalise: Callable[[torch.Tensor], torch.Tensor] | None = None, seed: int = 0,
                     max_new_tokens: int = 48, temperature: float = 1.0, batch_size: int = 64,
                     name: str = "policy", config: str = "") -> tuple[dict, list[dict]]:
    """Sample one model on the shared trunk (adapter None: the SFT model) on `prompts`, seeded, and
    score the samples: gold, the reward (if given; `normalise` maps its raw scores, e.g. PPO's gain and
    bias) and the KL to the SFT model (nats per response, summed over tokens, k1).

    Returns (summary, samples): mean and std of gold, mean reward, mean KL, EOS share and length,
    the keys suffixed with `_{name}`; and one dict per sample. The caller's RNG is left as it was.
    batch_size: prompts sampled at a time; the same chunks give the same draws (PPO uses its batch_size).
    """
    gold, score, kl, ended, length, samples = [], [], [], [], [], []
    with rng_kept():
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start:start + batch_size])
            check_fits(model, tokenizer, chunk, max_new_tokens, config=config)
            with use_adapter(model, adapter):
                rollout = sample_responses(model, tokenizer, chunk, max_new_tokens, temperature)
            completions = decode_responses(tokenizer, rollout)
            Tq = rollout.query.shape[1]
            input_ids = torch.cat([rollout.query, rollout.response], 1)              # (B, Tq + T)
            attention_mask = torch.cat([rollout.query_mask, rollout.response_mask], 1)
            with use_adapter(model, adapter):
                logits, _ = forward_response(model, input_ids, attention_mask, Tq)
            with use_adapter(model, None):
                ref_logits, _ = forward_response(model, input_ids, attention_mask, Tq)
            logprobs = logprobs_from_logits(logits, rollout.response, temperature)          # (B, T)
            ref_logprobs = logprobs_from_logits(ref_logits, rollout.response, temperature)  # (B, T)
            seq_kl = torch.where(rollout.response_mask.bool(), kl_estimate(logprobs, ref_logprobs),
                                 torch.zeros_like(logprobs)).sum(1)               # (B,)
            if reward is not None:
                raw = reward.score(chunk, completions, rollout).float().cpu()     # (B,)
                scored = (normalise(raw) if normalise is not None else raw).tolist()
            else:
                scored = [None] * len(chunk)
            g = gold_scores([p + c for p, c in zip(chunk, completions)])
            for i, prompt in enumerate(chunk):
                samples.append({"model": name, "prompt": prompt, "completion": completions[i],
                                "gold": g[i], "reward": scored[i], "ended": bool(rollout.ended[i]),
                                "kl": seq_kl[i].item()})
            gold += g
            score += scored
            kl += seq_kl.tolist()
            ended += rollout.ended.tolist()
            length += rollout.response_mask.sum(1).tolist()
    summary = {f"gold_score_{name}": float(np.mean(gold)), f"gold_std_{name}": float(np.std(gold, ddof=1))}
    if reward is not None:
        summary[f"reward_score_{name}"] = float(np.mean(score))
    summary |= {f"kl_{name}": float(np.mean(kl)), f"eos_share_{name}": float(np.mean(ended)),
                f"response_length_{name}": float(np.mean(length))}
    return summary, samples


@torch.no_grad()
def compare_with_sft(model, tokenizer, prompts: list[str], adapter: str = POLICY, name: str = "policy",
                     **kwargs) -> tuple[dict, list[dict]]:
    """Sample the SFT model (the reference: adapters off) and the trained policy (`adapter`) on the
    same prompts with the same seed; kwargs as evaluate_samples.

    Returns (summary, samples): evaluate_samples' figures for each ("_sft", f"_{name}"), "kl" = the
    policy samples' KL to the SFT model (nats per response), and the gold gain in SFT standard deviations.
    """
    sft, sft_samples = evaluate_samples(model, tokenizer, prompts, None, name="sft", **kwargs)
    policy, policy_samples = evaluate_samples(model, tokenizer, prompts, adapter, name=name, **kwargs)
    summary = ({k: v for k, v in sft.items() if k != "kl_sft"}
               | {k: v for k, v in policy.items() if k != f"kl_{name}"})
    summary["kl"] = policy[f"kl_{name}"]  # KL(policy || SFT), nats per response
    gain = summary[f"gold_score_{name}"] - summary["gold_score_sft"]
    summary["gold_gain_in_sft_std"] = gain / summary["gold_std_sft"]
    return summary, sft_samples + policy_samples


@torch.no_grad()
def sample_models(models: dict, prompts: list[str], tokenizer, seed: int = 0, max_new_tokens: int = 48,
                  temperature: float = 1.0, reward=None, batch_size: int = 64) -> list[dict]:
    """Samples of several models on the same prompts, each with the same seed, scored by gold (and reward).

    models: {name: model} where a model is a transformers model, or (peft_model, adapter) to run a
            PeftModel with one adapter active (adapter None: all adapters off, i.e. the SFT trunk).
            E.g. {"base": base_model, "sft": (trainer.model, None), "ppo": (trainer.model, "policy")}.
    Returns one dict per (prompt, model): prompt, model, completion, gold, reward (if given), ended.
    The caller's RNG state is left as it was.
    """
    rows = {}
    for name, spec in models.items():
        model, adapter = spec if isinstance(spec, tuple) else (spec, "__as_is__")
        context = nullcontext(model) if adapter == "__as_is__" else use_adapter(model, adapter)
        with rng_kept(), context:
            torch.manual_seed(seed)
            was_training = model.training
            model.eval()  # dropout off while sampling
            for start in range(0, len(prompts), batch_size):
                chunk = list(prompts[start:start + batch_size])
                rollout = sample_responses(model, tokenizer, chunk, max_new_tokens, temperature)
                completions = decode_responses(tokenizer, rollout)
                g = gold_scores([p + c for p, c in zip(chunk, completions)])
                r = reward.score(chunk, completions, rollout).tolist() if reward is not None else [None] * len(chunk)
                for i, prompt in enumerate(chunk):
                    row = {"prompt": prompt, "model": name, "completion": completions[i], "gold": g[i],
                           "ended": bool(rollout.ended[i])}
                    if reward is not None:
                        row["reward"] = r[i]
                    rows.setdefault(start + i, []).append(row)
            model.train(was_training)
    return [row for i in sorted(rows) for row in rows[i]]
