"""Sampling from a causal LM: left-padded prompts in, responses cut at the first EOS out.

Every stage samples through `generate_tokens`: the ranking notebook, the reward model's
normalisation, PPO's rollouts and the before/after comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .utils import ConfigError, LabError, autocast, set_seed


@dataclass
class Rollout:
    """One batch of sampled responses, as tensors on the model's device."""

    query: torch.Tensor          # (B, Tq) prompt ids, left-padded
    query_mask: torch.Tensor     # (B, Tq) 1 on prompt tokens, 0 on left padding
    response: torch.Tensor       # (B, T) response ids; after the first EOS: pad
    response_mask: torch.Tensor  # (B, T) 1 up to and including the first EOS, 0 after it
    ended: torch.Tensor          # (B,) bool: the response reached EOS within max_new_tokens


def first_eos_mask(response: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask of real response tokens (up to and including the first EOS) and whether EOS came.

    Found by position, not by comparing with pad_token_id: for the hub's GPT-2, pad and EOS are the
    same token.
    """
    is_eos = response == eos_token_id                                   # (B, T)
    ended = is_eos.any(dim=1)                                           # (B,)
    # number of EOS tokens strictly before each position; a token is real while none came before it
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()     # (B, T)
    return (eos_before == 0).long(), ended


def model_positions(model) -> int | None:
    """How many token positions the model has (GPT-2: n_positions), or None if its config does not say."""
    config = getattr(model, "config", None)  # a PeftModel passes its base model's config through
    for name in ("n_positions", "max_position_embeddings"):
        n = getattr(config, name, None)
        if isinstance(n, int):
            return n
    return None


def check_fits(model, tokenizer, prompts: list[str], max_new_tokens: int, config: str = "") -> None:
    """Refuse, before any sampling, prompts the model cannot continue: an empty one (nothing to continue
    from), or one so long that it and max_new_tokens overrun the model's positions (an IndexError deep in
    the position embedding otherwise). config: the config whose max_new_tokens this is, for the message."""
    if not prompts:
        return
    lengths = [len(ids) for ids in tokenizer(list(prompts))["input_ids"]]
    for i, n in enumerate(lengths):
        if n == 0:
            raise LabError(f"prompt {i} of {len(prompts)} is empty: the model needs at least one token to continue. "
                           "Remove empty prompts from the data.")
    n_positions = model_positions(model)
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    if n_positions is not None and lengths[longest] + max_new_tokens > n_positions:
        room_for_prompt, room_for_new = n_positions - max_new_tokens, n_positions - lengths[longest]
        fixes = ([f"shorten the prompts to at most {room_for_prompt} tokens"] if room_for_prompt >= 1 else []) + \
                ([f"lower max_new_tokens to {room_for_new} or less"] if room_for_new >= 1 else [])
        fix = ", or ".join(fixes) or f"shorten the prompts to fewer than {n_positions} tokens and lower max_new_tokens"
        message = (f"the prompt {prompts[longest][:40]!r} is {lengths[longest]} tokens long, and with "
                   f"max_new_tokens={max_new_tokens} that makes {lengths[longest] + max_new_tokens} positions, "
                   f"more than the model's {n_positions} (n_positions): {fix}.")
        raise ConfigError(message, config, ("max_new_tokens",)) if config else LabError(message)


def encode_prompts(tokenizer, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(query, query_mask) # (B, Tq): prompts left-padded, so every prompt ends where generation starts."""
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = old_side
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


@torch.no_grad()
def generate_tokens(model, tokenizer, prompts: list[str], max_new_tokens: int = 48,
                    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                    greedy: bool = False) -> Rollout:
    """Sample one response per prompt in one batch, with the KV cache.

    Sampling follows RLHF practice: the full distribution (top_k 0, top_p 1) at `temperature`
    (Ziegler et al. 2019); whoever scores log-probs later must divide logits by the same temperature.
    """
    check_fits(model, tokenizer, prompts, max_new_tokens)
    query, query_mask = encode_prompts(tokenizer, prompts, next(model.parameters()).device)  # (B, Tq)
    with autocast(query.device):  # bf16 on a GPU that has it (utils.autocast)
        out = model.generate(
            input_ids=query, attention_mask=query_mask, max_new_tokens=max_new_tokens,
            do_sample=not greedy, temperature=temperature if not greedy else None,
            top_k=top_k if not greedy else None, top_p=top_p if not greedy else None,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
    response = out[:, query.shape[1]:]                                   # (B, T)
    response_mask, ended = first_eos_mask(response, tokenizer.eos_token_id)
    response = torch.where(response_mask.bool(), response, torch.full_like(response, tokenizer.pad_token_id))
    return Rollout(query, query_mask, response, response_mask, ended)


def decode_responses(tokenizer, rollout: Rollout) -> list[str]:
    """Response texts without their EOS and padding."""
    texts = []
    for ids, mask in zip(rollout.response, rollout.response_mask):
        n = int(mask.sum())
        ids = ids[:n].tolist()
        if ids and ids[-1] == tokenizer.eos_token_id:
            ids = ids[:-1]
        texts.append(tokenizer.decode(ids, skip_special_tokens=True))
    return texts


def sample(model, tokenizer, prompts: list[str], max_new_tokens: int = 48, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, batch_size: int = 64, seed: int | None = None,
           greedy: bool = False, progress: bool = False) -> list[dict]:
    """Sample a completion for every prompt; returns dicts with prompt, completion, ended, num_tokens.

    The same seed gives the same samples (on the same machine and torch build).
    """
    if seed is not None:
        set_seed(seed)
    was_training = model.training
    model.eval()  # dropout off while sampling
    rows = []
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="sampling", disable=not progress):
        batch = list(prompts[start:start + batch_size])
        rollout = generate_tokens(model, tokenizer, batch, max_new_tokens=max_new_tokens,
                                  temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)
        for prompt, text, ended, n in zip(batch, decode_responses(tokenizer, rollout),
                                         rollout.ended.tolist(), rollout.response_mask.sum(1).tolist()):
            rows.append({"prompt": prompt, "completion": text, "ended": bool(ended), "num_tokens": int(n)})
    model.train(was_training)
    return rows
