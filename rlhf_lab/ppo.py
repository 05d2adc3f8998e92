"""Stage 3: PPO on the KL-shaped reward, with policy, value, reference and reward model on one trunk.

    cfg = ppo_config(fast=False)                 # SFT adapter and reward model from rlhf_lab.pipeline
    result = train_ppo(cfg, out_dir="runs/04_ppo/ppo")           # resume=True after an interruption
    result.summary                               # gold score of SFT and PPO samples, KL, episodes/s
    model, tokenizer, reward = load_policy("runs/04_ppo/ppo", with_reward=True)
    rows = sample_models({"SFT": (model, None), "PPO": (model, "policy")}, prompts, tokenizer, reward=reward)

The RL problem (Ziegler et al. 2019; Ouyang et al. 2022): the policy is the language model; the
observation is the prompt; an action is one token, chosen from the whole vocabulary at each position;
the episode ends at EOS (or after max_new_tokens). The reward is the reward model's score of the whole
response, given at its last token, minus beta * (log pi(a_t|s_t) - log pi_ref(a_t|s_t)) at every token:
the KL penalty that keeps the policy near the SFT model, where the reward model's judgement holds.

One trunk in memory: the SFT model with its adapter merged is a plain GPT-2; one PeftModel on it holds
  - the adapter "policy" (a fresh LoRA: B = 0, so the policy starts as the SFT model),
  - the adapter "reward" of stage 2 (frozen), read by the reward model's head,
and the trunk with adapters disabled is the frozen reference. The value function is a linear head on
the policy's final hidden state, so one forward pass gives both the logits and the values. (A value
adapter of its own would decouple value and policy features, as TRL's separate value model does, but
costs a second forward pass per minibatch; Ziegler et al.'s code, lm-human-preferences, also puts
its value head on the policy's transformer.) So the backbone's weights exist once, where TRL's
PPOTrainer holds four models.

One step (CleanRL's ppo.py order; names from the papers):
  1. rollout: sample B responses with the policy (sample_responses: KV cache, the full distribution
     at temperature T, i.e. top_k 0, top_p 1);
     one no-grad pass of the policy gives old log-probs and values, one of the reference gives
     ref log-probs, one of the reward model gives scores;
  2. rewards = kl_shaped_rewards(scores, ...); advantages, returns = gae(...); whiten advantages;
  3. ppo_epochs passes over shuffled minibatches: clipped policy loss + vf_coef * clipped value loss,
     gradient clipping, Adam;
  4. the KL controller updates beta from the batch's KL.
All the math is in ppo_math.py (pure functions, tested on hand-made tensors); this file is the loop.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import random
import shutil
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Callable, Protocol

import numpy as np
import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .config_args import (Count, Device, Finite, Fraction, NonNegative, OneOf, Positive, Range, Seed,
                          check_config)
from .generation import Rollout, check_fits, decode_responses, encode_prompts, first_eos_mask
from .gold import gold_scores
from .ppo_math import (
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_estimate,
    kl_shaped_rewards,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    policy_loss,
    value_loss,
)
from .reward_model import using_adapter
from .utils import (ConfigError, LabError, TrainingDiverged, autocast, config_to_dict, pick_device, reading_saved,
                    save_config, set_seed)

POLICY = "policy"  # the policy's adapter name on the shared trunk
REWARD = "reward"  # the reward model's adapter name (reward_model.ADAPTER_NAME)
CONFIG_FILE = "ppo_config.json"
RESULT_FILE = "ppo_result.json"
METRICS_FILE = "metrics.jsonl"
VALUE_HEAD_FILE = "value_head.safetensors"
CHECKPOINT_DIR = "checkpoint"


# -----------------------------------------------------------------------------
# configuration


@dataclass
class PPOConfig:
    """Everything that decides a PPO run; saved as ppo_config.json with the run."""

    # models and data
    model: str = "tiny"  # the pretrained model under the SFT adapter (the "base" of comparisons)
    sft: str | None = None  # SFT adapter folder, merged into the trunk; None: pipeline.ensure_sft()
    reward: Annotated[str, OneOf("rm", "gold")] = "rm"  # "rm": the stage-2 reward model; "gold": the gold
    # labeler itself (to tune PPO, and to tell reward-model errors from PPO errors)
    reward_model: str | None = None  # reward-model folder; None: pipeline.ensure_reward_model()
    prompts: str = "tiny"  # the observations: loading.load_prompts(prompts, "train"); eval on "validation"
    # rollouts
    steps: Count = 40  # PPO updates: 40 x 64 = 2,560 episodes; the gold score has flattened by then
    batch_size: Count = 64  # episodes per update (TRL's sentiment notebook: 128); 64 keeps steps short on a CPU
    max_new_tokens: Count = 48  # the SFT model's reviews end after ~30 tokens; 48 leaves room to finish
    temperature: Positive = 1.0  # sampling temperature; log-probs divide the logits by it too (N details)
    no_eos_score: Finite | None = -1.0  # normalised score of a response that never reaches EOS (Ziegler
    # et al. used -1: a fixed low score, so the policy cannot please the reward model by never stopping)
    normalize_scores: bool = True  # scores of the initial policy's samples: mean 0, std 1 (Ziegler et al.
    # 2019); the stage-2 RM is normalised on SFT samples already, other rewards get a gain and bias here
    norm_episodes: Annotated[int, Range(2)] = 256  # samples of the initial policy that fit that gain and bias
    # the KL penalty
    kl_coef: NonNegative = 0.15  # beta at the start (Ziegler et al. 2019's stylistic tasks)
    adaptive_kl: bool = True  # move beta towards kl_target (Ziegler et al. 2019, 2.2); False: beta fixed
    kl_target: Positive = 4.0  # nats per response the controller aims at: Ziegler et al. used 6; here the gold
    # score gains little beyond ~4 nats, and held-out KL runs up to ~1.5 nats above the batch KL (a heavy
    # tail), so 4 keeps runs under the lab's bar of 6 nats
    kl_horizon: Count = 256  # episodes over which a 20% error moves beta by 20%: Ziegler et al. used 10,000
    # for runs of ~1M episodes; ours have ~2,500, so beta must follow the KL within a few updates
    kl_kind: Annotated[str, OneOf("k1", "k2", "k3")] = "k1"  # per-token KL estimator in the reward: k1 =
    # log pi - log pi_ref (Ziegler et al.); k2, k3: http://joschu.net/blog/kl-approx.html
    kl_bound: Positive | None = None  # nats per response; a batch past it warns (None: 3 x kl_target)
    # the adaptive controller holds the KL near its target, so 3x means PPO is running away from the SFT model
    stop_at_kl_bound: bool = False  # stop the run at kl_bound instead of warning (a fixed beta = 0 may
    # drift far on purpose, a lesson in itself, so the default only warns)
    # PPO
    ppo_epochs: Count = 4  # passes over each batch (Ziegler et al. 2019; N details)
    minibatch_size: Count = 32  # episodes per gradient step: 2 minibatches x 4 epochs = 8 steps per update
    micro_batch_size: Count | None = None  # episodes per forward/backward pass inside a minibatch (gradient
    # accumulation, the same update): less activation memory; None: the whole minibatch in one pass
    clip_range: Positive = 0.2  # PPO's epsilon for the policy ratio (Schulman et al. 2017; N details)
    clip_range_value: Positive = 0.2  # how far a value may move from its rollout value (N details)
    vf_coef: NonNegative = 0.1  # weight of the value loss; small, as value and policy share the trunk (N
    # details)
    gamma: Fraction = 1.0  # no discounting within a response (Ziegler et al. 2019)
    lam: Fraction = 0.95  # GAE lambda (Ziegler et al. 2019; N details)
    whiten_advantages: bool = True  # zero mean, unit variance per batch (N details)
    lr: Positive = 1e-3  # Adam on LoRA and the value head; LoRA takes larger steps than full fine-tuning
    adam_eps: Positive = 1e-5  # CleanRL's and lm-human-preferences' Adam epsilon
    max_grad_norm: Positive = 1.0  # clip the global gradient norm (N details: 1.0 in TRL's PPO)
    # the policy's LoRA (Hu et al. 2021)
    r: Count = 8  # LoRA rank, as for SFT and the reward model
    lora_alpha: Positive = 16.0  # update scale alpha / r = 2, as for SFT
    target_modules: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")  # GPT-2's Conv1D layers
    fused_gelu: bool = True  # run GPT-2's gelu_new as torch's one fused op (the same function to ~1e-6):
    # the Python formula keeps several intermediate tensors per MLP for the backward pass, the fused op one
    # bookkeeping
    seed: Seed = 0  # LoRA init, prompt order, sampling: same seed, same run
    checkpoint_every: Count = 10  # steps between checkpoints (resume=True continues from the last one)
    eval_prompts: Annotated[int, Range(2)] = 256  # held-out prompts sampled by SFT and PPO to compare them
    device: Device = "auto"  # CUDA, then MPS, then CPU

    def __post_init__(self):
        check_config(self)  # each field within its range (PPOConfig(steps=0) is refused), then check()

    def check(self) -> None:
        """The rules between fields."""
        if self.batch_size % self.minibatch_size:
            raise ConfigError(f"batch_size={self.batch_size} is not a multiple of minibatch_size="
                              f"{self.minibatch_size}; choose sizes that divide (e.g. 64 and 32).", "PPOConfig",
                              ("batch_size", "minibatch_size"))
        if self.micro_batch_size is not None and self.micro_batch_size > self.minibatch_size:
            raise ConfigError(f"micro_batch_size={self.micro_batch_size} must lie between 1 and minibatch_size="
                              f"{self.minibatch_size} (None: the whole minibatch in one pass).", "PPOConfig",
                              ("micro_batch_size", "minibatch_size"))

    @property
    def kl_bound_value(self) -> float:
        """The KL (nats per response) past which a batch warns or stops the run."""
        return self.kl_bound if self.kl_bound is not None else 3.0 * self.kl_target


def ppo_config(fast: bool = False, **overrides) -> PPOConfig:
    """The lab's defaults: full mode 40 updates of 64 episodes; FAST mode (CI, a quick look) 12 updates
    of 32 episodes and 128 evaluation prompts, which already shows the score and the KL rise."""
    cfg = PPOConfig(steps=12, batch_size=32, minibatch_size=16, eval_prompts=128, norm_episodes=128,
                    checkpoint_every=4) if fast else PPOConfig()
    names = {f.name for f in fields(PPOConfig)}
    for key in overrides:
        if key not in names:
            raise LabError(f"PPOConfig has no field {key!r}; the fields are {sorted(names)}.")
    return dataclasses.replace(cfg, **overrides)  # checked again, with the overrides


class KLBoundWarning(UserWarning):
    """KL(policy || SFT) passed PPOConfig.kl_bound (once a run; warnings.filterwarnings can silence it)."""


BLOW_UP_ADVICE = ("The policy's update blew up: try a lower lr (--ppo-lr), a lower max_grad_norm, or a larger "
                  "kl_coef; bf16 runs may need --precision fp32.")


# -----------------------------------------------------------------------------
# rewards: anything that scores (prompt, response) pairs


class Reward(Protocol):
    """What PPO needs from a reward: one scalar per sampled response.

    score(prompts, completions, rollout) -> (B,) float tensor. `prompts` and `completions` are texts
    (the completion without EOS); `rollout` holds the same samples as token ids, for rewards that read
    ids (the shared-trunk reward model scores the policy's own tokens, with no re-tokenization).
    `normalised`: True if the scores already have mean 0, std 1 on the SFT model's samples.
    """

    name: str
    normalised: bool

    def score(self, prompts: list[str], completions: list[str], rollout: Rollout) -> torch.Tensor: ...


class GoldReward:
    """The gold labeler (gold.py) as the reward: the "true" taste, with no reward model in between.

    Use it to tune PPO, and to tell reward-model errors from PPO errors: if PPO climbs the gold score
    with this reward but not with the learned one, the reward model is what fails.
    """

    name = "gold"
    normalised = False  # gold scores lie in [-2, 1.5]; the trainer fits a gain and bias

    def score(self, prompts: list[str], completions: list[str], rollout: Rollout | None = None) -> torch.Tensor:
        texts = [p + c for p, c in zip(prompts, completions)]  # the whole review, as the annotators saw it
        return torch.tensor(gold_scores(texts), dtype=torch.float32)  # (B,)


class TrunkRewardModel:
    """The stage-2 reward model (reward_model.RewardModel) as PPO's reward, on the shared trunk.

    It scores the rollout's token ids (prompt + response, EOS included), as it was trained on
    prompt + response + EOS, and returns its normalised score (mean 0, std 1 on SFT samples).
    """

    name = "reward model"
    normalised = True

    def __init__(self, reward_model):
        self.reward_model = reward_model  # holds the shared PeftModel, the "reward" adapter and the head

    @torch.no_grad()
    def score(self, prompts: list[str], completions: list[str], rollout: Rollout) -> torch.Tensor:
        input_ids = torch.cat([rollout.query, rollout.response], dim=1)                  # (B, Tq + T)
        attention_mask = torch.cat([rollout.query_mask, rollout.response_mask], dim=1)   # (B, Tq + T)
        raw = self.reward_model(input_ids, attention_mask)                               # (B,)
        return self.reward_model.normalised(raw).float()                                 # (B,)


# -----------------------------------------------------------------------------
# the shared trunk


def build_trunk(sft: str | Path, base: str | None = None, device="auto"):
    """(trunk, tokenizer): the pretrained model with the SFT adapter merged in, a plain transformers model.

    Merged in place (merge_and_unload), not copied: this trunk is the only copy of the backbone.
    """
    from .sft import load_sft

    peft_sft, tokenizer = load_sft(sft, device=device, base=base)
    trunk = peft_sft.merge_and_unload()  # W + (alpha / r) B A, adapter layers removed
    trunk.eval()
    return trunk, tokenizer


def add_policy_adapter(trunk, cfg: PPOConfig) -> PeftModel:
    """Wrap the trunk (in place, as peft does) with the fresh LoRA adapter "policy"; only it trains.

    LoRA's B starts at 0, so the policy starts exactly as the SFT model: on the first step the KL to
    the reference is 0 and the PPO ratio is 1.
    """
    from .sft import lora_adapter
    if cfg.fused_gelu:
        use_fused_gelu(trunk)
    model = lora_adapter(trunk, cfg.target_modules, cfg.r, cfg.lora_alpha, lora_dropout=0.0,  # dropout off in RL
                         adapter_name=POLICY)
    model.eval()
    return model


def use_fused_gelu(model) -> int:
    """Swap GPT-2's gelu_new modules for transformers' GELUTanh, in place; returns how many.

    Both compute 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). gelu_new spells it out in 8 PyTorch
    ops, and autograd keeps several of their results for the backward pass; GELUTanh is torch's fused
    gelu(approximate="tanh"), which keeps only its input (transformers: "equivalent to NewGELU ... but
    much faster", equal up to rounding). In the PPO update that is ~40% less activation memory.
    """
    from transformers.activations import GELUTanh, NewGELUActivation

    swaps = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is NewGELUActivation]
    for parent, name in swaps:
        setattr(parent, name, GELUTanh())
    return len(swaps)


def new_value_head(hidden_size: int) -> torch.nn.Linear:
    """V(s_t) = w . h_t + b on the policy's final hidden state, initialised to zero (N details;
    lm-human-preferences): the first values are 0 and do not disturb the early advantages."""
    head = torch.nn.Linear(hidden_size, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return head


@contextmanager
def use_adapter(model, adapter: str | None):
    """Run `model` with one adapter active (None: all adapters off, i.e. the reference), then restore.

    A named adapter goes through reward_model.using_adapter, the one place that switches adapters on
    the shared trunk. peft's set_adapter makes the chosen adapter trainable and freezes the others, and
    leaving disable_adapter() makes the active one trainable: neither may leak out of a scoring call in
    the middle of a PPO step, so every requires_grad flag is put back as it was.
    """
    if not isinstance(model, PeftModel):
        yield model
        return
    if adapter is not None:
        with using_adapter(model, adapter):
            yield model
        return
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with model.disable_adapter():
            yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def causal_lm(model):
    """The transformers model inside a PeftModel (peft injects its layers into it, in place)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def forward_response(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, query_length: int,
                     value_head: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (and values) at the response positions, from one pass through the trunk.

    input_ids, attention_mask # (B, Tq + T): left-padded query, then the right-padded response
    returns logits            # (B, T, V): logits[:, t] is the distribution that produced response[:, t]
            values            # (B, T): V(s_t), the state before response token t (None without a head)
    Runs whichever adapter is active. The lm head is applied to the T response positions only.
    """
    lm = causal_lm(model)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, Tq + T) real tokens only
    with autocast(input_ids.device):  # bf16 on a GPU that has it; logprobs_from_logits upcasts
        hidden = lm.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False).last_hidden_state    # (B, Tq + T, C), after the final layer norm
        hidden = hidden[:, query_length - 1:-1].contiguous()         # (B, T, C): position i predicts token i + 1
        logits = lm.get_output_embeddings()(hidden)                  # (B, T, V)
    values = value_head(hidden.to(value_head.weight.dtype)).squeeze(-1) if value_head is not None else None  # (B, T)
    return logits, values


def sample_from(probs: torch.Tensor) -> torch.Tensor:
    """One token per row of `probs` # (B, V), drawn by inverting the CDF with one uniform number per row.

    The same distribution as torch.multinomial(probs, 1), which draws one exponential number per
    vocabulary entry: at B = 64 and V ~ 3k that was ~35% of the tiny model's sampling time.
    returns # (B,) long
    """
    cdf = probs.cumsum(-1)                                                   # (B, V)
    u = torch.rand(probs.shape[0], 1, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]  # (B, 1) in [0, total)
    # right=True: the first index whose cdf exceeds u, so a token of probability 0 is never drawn
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp(max=probs.shape[-1] - 1)  # (B,)


@torch.no_grad()
def sample_responses(model, tokenizer, prompts: list[str], max_new_tokens: int = 48, temperature: float = 1.0,
                     return_logprobs: bool = False):
    """generation.generate_tokens's job, as the explicit KV-cache loop: left-padded prompts in, a
    Rollout out (responses cut at the first EOS, pad after it). Runs whichever adapter is active.

    Sampling as RLHF does it (Ziegler et al. 2019): the full distribution (top_k 0, top_p 1) at
    `temperature`. One pass over the prompts fills the cache; then one token per step, with the
    position ids counted from the attention mask, until every response has its EOS.
    return_logprobs: also return # (B, T) the log-probs of the sampled tokens under the distribution
    they were drawn from (0 after EOS), to check that PPO's recomputed log-probs agree.
    """
    with autocast(next(model.parameters()).device):  # bf16 on a GPU that has it; sampling in fp32
        return _sample_responses(model, tokenizer, prompts, max_new_tokens, temperature, return_logprobs)


def _sample_responses(model, tokenizer, prompts, max_new_tokens, temperature, return_logprobs):
    lm = causal_lm(model)
    device = next(model.parameters()).device
    query, query_mask = encode_prompts(tokenizer, prompts, device)                       # (B, Tq)
    B = query.shape[0]
    attention_mask = query_mask
    position_ids = (query_mask.cumsum(-1) - 1).clamp(min=0)                            # (B, Tq)
    out = lm.base_model(input_ids=query, attention_mask=attention_mask, position_ids=position_ids,
                        use_cache=True)
    next_position = position_ids[:, -1:] + 1                                           # (B, 1)
    finished = torch.zeros(B, dtype=torch.bool, device=device)                         # (B,)
    pad = torch.full((B,), tokenizer.pad_token_id, device=device)
    tokens, logprobs = [], []
    for _ in range(max_new_tokens):
        logits = lm.get_output_embeddings()(out.last_hidden_state[:, -1]).float() / temperature  # (B, V)
        token = torch.where(finished, pad, sample_from(torch.softmax(logits, dim=-1)))          # (B,)
        if return_logprobs:
            logprob = torch.log_softmax(logits, -1).gather(-1, token[:, None]).squeeze(-1)     # (B,)
            logprobs.append(torch.where(finished, torch.zeros_like(logprob), logprob))
        tokens.append(token)
        finished |= token == tokenizer.eos_token_id
        if bool(finished.all()):
            break
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        out = lm.base_model(input_ids=token[:, None], attention_mask=attention_mask, position_ids=next_position,
                            cache=out.cache, use_cache=True)
        next_position = next_position + 1
    response = torch.stack(tokens, dim=1)                                              # (B, T)
    response_mask, ended = first_eos_mask(response, tokenizer.eos_token_id)
    rollout = Rollout(query, query_mask, response, response_mask, ended)
    return (rollout, torch.stack(logprobs, dim=1)) if return_logprobs else rollout


def parameter_memory(model, heads=()) -> dict:
    """Bytes of parameters by role, each storage counted once however many modules share it.

    model: the shared PeftModel (backbone + adapters); heads: the value head, the reward head.
    The proof of "one trunk in memory": the policy, the reference and the reward model all read the
    same backbone storages, so "backbone" is the size of one GPT-2.
    """
    seen, roles = set(), {"backbone": 0, "adapters": 0, "heads": 0}
    named = [(name, p, "adapters" if "lora_" in name else "backbone") for name, p in model.named_parameters()]
    named += [(name, p, "heads") for head in heads for name, p in head.named_parameters()]
    for name, p, role in named:
        storage = p.untyped_storage()
        if storage.data_ptr() not in seen:  # tied weights (GPT-2's wte and lm_head) count once
            seen.add(storage.data_ptr())
            roles[role] += storage.nbytes()
    roles["total"] = sum(roles.values())
    return roles


# -----------------------------------------------------------------------------
# the trainer


@dataclass
class Batch:
    """One rollout and everything computed from it before the update; tensors (B, ...) on the device."""

    prompts: list[str]
    completions: list[str]
    input_ids: torch.Tensor        # (B, Tq + T) query then response
    attention_mask: torch.Tensor   # (B, Tq + T)
    query_length: int              # Tq
    response: torch.Tensor         # (B, T)
    mask: torch.Tensor             # (B, T) response mask: 1 up to and including EOS
    ended: torch.Tensor            # (B,) bool
    logprobs: torch.Tensor         # (B, T) policy at rollout (the "old" log-probs)
    ref_logprobs: torch.Tensor     # (B, T) reference = trunk with adapters off
    values: torch.Tensor           # (B, T) value head at rollout
    entropy: torch.Tensor          # (B, T) policy entropy at each position
    raw_scores: torch.Tensor       # (B,) the reward's scores as they came
    scores: torch.Tensor           # (B,) normalised, with no_eos_score for unfinished responses


class PPOTrainer:
    """PPO on one shared trunk. `step()` runs one update and returns its metrics; `train()` runs all.

    model:     a PeftModel with the adapter "policy" (add_policy_adapter); the reference is the same
               model with adapters disabled
    reward:    a Reward (TrunkRewardModel, GoldReward, or your own)
    prompts:   the training prompts (texts)
    out_dir:   where checkpoints and metrics.jsonl go (None: nowhere)
    """

    def __init__(self, cfg: PPOConfig, model: PeftModel, tokenizer, reward: Reward, prompts: list[str],
                 out_dir: str | Path | None = None):
        if not isinstance(model, PeftModel) or POLICY not in model.peft_config:
            raise LabError(f"PPOTrainer needs a PeftModel with the adapter {POLICY!r}: wrap the SFT trunk "
                           "with add_policy_adapter(trunk, cfg) first.")
        check_config(cfg)  # again: a field may have been set after the config was made
        if len(prompts) < 1:
            raise LabError("PPOTrainer got no prompts; check cfg.prompts.")
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.reward = reward
        self.prompts = list(prompts)
        check_fits(model, tokenizer, self.prompts, cfg.max_new_tokens, config="PPOConfig")  # not at step 37
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.device = next(model.parameters()).device
        self._kl_warned = False  # the KL bound warns once a run

        set_seed(cfg.seed)
        model.set_adapter(POLICY)  # the policy active and trainable; every other adapter frozen
        model.eval()  # dropout off in every model during RL, the update included (N details)
        self.value_head = new_value_head(causal_lm(model).config.hidden_size).to(self.device)
        self.policy_params = [p for name, p in model.named_parameters() if p.requires_grad]
        if not self.policy_params or not all(f".{POLICY}." in n for n, p in model.named_parameters()
                                             if p.requires_grad):
            raise LabError("internal: only the policy adapter's weights may train.")
        self.params = self.policy_params + list(self.value_head.parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.lr, eps=cfg.adam_eps)
        self.kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
                       else FixedKLController(cfg.kl_coef))
        self.score_gain, self.score_bias = 1.0, 0.0  # normalised = gain * raw + bias
        self.score_normalisation_fitted = False
        self.step_count = 0  # updates done
        self.history: list[dict] = []
        self.build_seconds = 0.0  # set by build_trainer: loading the trunk, adapters and reward
        self.minibatch_stats: list[dict] = []  # the last step's stats, one dict per minibatch
        self._prompt_orders: dict[int, list[int]] = {}

    # --- rollouts ----------------------------------------------------------------------------------

    def batch_prompts(self, step: int, n: int | None = None) -> list[str]:
        """The prompts of update `step`: passes over the prompt set, each in its own seeded order, so a
        resumed run sees exactly the prompts the uninterrupted run would have seen."""
        n = n or self.cfg.batch_size
        out = []
        for i in range(step * n, (step + 1) * n):
            epoch, j = divmod(i, len(self.prompts))
            if epoch not in self._prompt_orders:
                g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
                self._prompt_orders = {epoch: torch.randperm(len(self.prompts), generator=g).tolist()}
            out.append(self.prompts[self._prompt_orders[epoch][j]])
        return out

    @torch.no_grad()
    def sample(self, prompts: list[str], adapter: str | None = POLICY) -> tuple[Rollout, list[str]]:
        """Sample one response per prompt (policy by default; None: the reference) with the KV cache."""
        check_fits(self.model, self.tokenizer, prompts, self.cfg.max_new_tokens, config="PPOConfig")
        with use_adapter(self.model, adapter):
            rollout = sample_responses(self.model, self.tokenizer, prompts, self.cfg.max_new_tokens,
                                       self.cfg.temperature)
        return rollout, decode_responses(self.tokenizer, rollout)

    @torch.no_grad()
    def fit_score_normalisation(self) -> dict:
        """Gain and bias so that the initial policy's scores have mean 0, std 1 (Ziegler et al. 2019).

        The stage-2 reward model was normalised on SFT samples already (reward.normalised); other
        rewards are scored on cfg.norm_episodes samples of the initial policy here.
        """
        self.score_normalisation_fitted = True
        if not self.cfg.normalize_scores or getattr(self.reward, "normalised", False):
            return {"gain": self.score_gain, "bias": self.score_bias, "fitted": False}
        scores = []
        g = torch.Generator().manual_seed(self.cfg.seed + 7)  # prompts of their own, not the training order
        order = torch.randperm(len(self.prompts), generator=g).tolist()
        n = self.cfg.norm_episodes
        for start in range(0, n, self.cfg.batch_size):
            prompts = [self.prompts[order[i % len(order)]] for i in range(start, min(n, start + self.cfg.batch_size))]
            rollout, completions = self.sample(prompts)
            scores.append(self.reward.score(prompts, completions, rollout).float().cpu())
        scores = torch.cat(scores)  # (n,)
        self._stop_if_not_finite(scores, f"the reward's scores ({self.reward.name}) of the initial policy's "
                                 "samples", "Check the reward function (a division by zero? a log of 0?).",
                                 when="before training, fitting the score normalisation")
        std = scores.std().item()
        if not std > 1e-8:
            raise LabError("every sample of the initial policy got the same score, so there is nothing to "
                           "normalise; is the reward constant? Try normalize_scores=False.")
        self.score_gain, self.score_bias = 1.0 / std, -scores.mean().item() / std
        return {"gain": self.score_gain, "bias": self.score_bias, "fitted": True, "raw_mean": scores.mean().item(),
                "raw_std": std, "n": len(scores)}

    @torch.no_grad()
    def rollout(self, prompts: list[str]) -> Batch:
        """Sample with the policy, then one no-grad pass each of policy, reference and reward model."""
        cfg = self.cfg
        rollout, completions = self.sample(prompts)
        Tq = rollout.query.shape[1]
        input_ids = torch.cat([rollout.query, rollout.response], dim=1)                  # (B, Tq + T)
        attention_mask = torch.cat([rollout.query_mask, rollout.response_mask], dim=1)   # (B, Tq + T)
        mask = rollout.response_mask                                                     # (B, T)
        # old log-probs and values: one pass of the policy (the same code path as in the update,
        # so that the ratio on the first minibatch is exactly 1)
        logits, values = forward_response(self.model, input_ids, attention_mask, Tq, self.value_head)
        logprobs = logprobs_from_logits(logits, rollout.response, cfg.temperature)      # (B, T)
        entropy = entropy_from_logits(logits, cfg.temperature)                          # (B, T)
        del logits
        # reference: the same trunk with every adapter off (the SFT model)
        with use_adapter(self.model, None):
            ref_logits, _ = forward_response(self.model, input_ids, attention_mask, Tq)
        ref_logprobs = logprobs_from_logits(ref_logits, rollout.response, cfg.temperature)  # (B, T)
        del ref_logits
        raw_scores = self.reward.score(prompts, completions, rollout).to(self.device).float()  # (B,)
        scores = self.score_gain * raw_scores + self.score_bias                         # (B,)
        if cfg.no_eos_score is not None:
            # a response cut off by max_new_tokens gets a fixed low score (Ziegler et al. 2019: -1)
            scores = torch.where(rollout.ended, scores, torch.full_like(scores, cfg.no_eos_score))
        return Batch(prompts, completions, input_ids, attention_mask, Tq, rollout.response, mask,
                     rollout.ended, logprobs, ref_logprobs, values, entropy, raw_scores, scores)

    # --- one PPO update ----------------------------------------------------------------------------

    def step(self) -> dict:
        """One PPO update: rollout, KL-shaped rewards, GAE, ppo_epochs of minibatches, beta update."""
        cfg = self.cfg
        if not self.score_normalisation_fitted:
            self.fit_score_normalisation()
        start = time.perf_counter()

        # 1. rollout ---------------------------------------------------------------------------------
        batch = self.rollout(self.batch_prompts(self.step_count))
        mask = batch.mask
        B = mask.shape[0]
        rollout_seconds = time.perf_counter() - start
        self._check_rollout(batch)

        # 2. rewards and advantages ------------------------------------------------------------------
        kl_coef = self.kl_ctl.value
        rewards, kl = kl_shaped_rewards(batch.scores, batch.logprobs, batch.ref_logprobs, mask, kl_coef,
                                        cfg.kl_kind)                                   # (B, T), (B, T)
        advantages, returns = gae(rewards, batch.values, mask, cfg.gamma, cfg.lam)    # (B, T), (B, T)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)                               # (B, T)

        # 3. ppo_epochs passes over shuffled minibatches ----------------------------------------------
        update_start = time.perf_counter()
        self.minibatch_stats = []
        for epoch in range(cfg.ppo_epochs):
            b_inds = torch.randperm(B, device=self.device)
            for mb_start in range(0, B, cfg.minibatch_size):
                mb_inds = b_inds[mb_start:mb_start + cfg.minibatch_size]
                self.optimizer.zero_grad(set_to_none=True)
                # Gradient accumulation: the losses are means over the minibatch's tokens, so each
                # micro-batch's mean enters with its share of those tokens (1 without micro-batches).
                mb_tokens = mask[mb_inds].sum()
                parts = []
                for inds in mb_inds.split(cfg.micro_batch_size or cfg.minibatch_size):
                    share = mask[inds].sum() / mb_tokens
                    logits, vpred = forward_response(self.model, batch.input_ids[inds], batch.attention_mask[inds],
                                                     batch.query_length, self.value_head)  # (b, T, V), (b, T)
                    new_logprobs = logprobs_from_logits(logits, batch.response[inds], cfg.temperature)  # (b, T)
                    del logits  # (b, T, V): the backward pass does not need it; free it before
                    pg_loss, pg_stats = policy_loss(new_logprobs, batch.logprobs[inds], advantages[inds],
                                                    mask[inds], cfg.clip_range)
                    vf_loss, vf_stats = value_loss(vpred, batch.values[inds], returns[inds], mask[inds],
                                                   cfg.clip_range_value)
                    loss = pg_loss + cfg.vf_coef * vf_loss
                    for name, value in (("the policy loss (pg_loss)", pg_loss), ("the value loss (vf_loss)", vf_loss)):
                        self._stop_if_not_finite(value, name, BLOW_UP_ADVICE, where=f", PPO epoch {epoch + 1}")
                    (loss * share).backward()
                    parts.append((share.item(), {"pg_loss": pg_loss.item(), "vf_loss": vf_loss.item()}
                                  | {k: v.item() for k, v in (pg_stats | vf_stats).items()}))
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                # an optimizer step on a NaN gradient would make every weight NaN: stop before it
                self._stop_if_not_finite(grad_norm, "the gradient norm", BLOW_UP_ADVICE,
                                         where=f", PPO epoch {epoch + 1}")
                self.optimizer.step()
                stats = {k: sum(w * p[k] for w, p in parts) for k in parts[0][1]}  # token-weighted means
                stats["ratio_max"] = max(p["ratio_max"] for _, p in parts)
                self.minibatch_stats.append({"epoch": epoch, "grad_norm": grad_norm.item()} | stats)
        update_seconds = time.perf_counter() - update_start

        # 4. the KL controller -----------------------------------------------------------------------
        mean_kl = kl.sum(1).mean().item()  # nats per response, summed over its tokens
        self._check_kl(mean_kl)
        self.kl_ctl.update(mean_kl, B)
        self.step_count += 1

        # 5. metrics ---------------------------------------------------------------------------------
        gold = gold_scores([p + c for p, c in zip(batch.prompts, batch.completions)])
        seconds = time.perf_counter() - start

        def mb_mean(key):
            return sum(s[key] for s in self.minibatch_stats) / len(self.minibatch_stats)

        metrics = {
            "step": self.step_count,
            "episodes": self.step_count * B,
            "score": batch.raw_scores.mean().item(),  # the reward's own scale
            "score_normalised": batch.scores.mean().item(),  # what entered the reward (no-EOS score included)
            "gold": float(np.mean(gold)),
            "kl": mean_kl,
            "kl_coef": kl_coef,  # beta used for this batch
            "non_score_reward": (-kl_coef * kl.sum(1)).mean().item(),
            "entropy": masked_mean(batch.entropy, mask).item(),  # nats per token
            "approx_kl": mb_mean("approx_kl"),
            "clipfrac": mb_mean("clipfrac"),
            "vf_clipfrac": mb_mean("vf_clipfrac"),
            "ratio_mean": mb_mean("ratio_mean"),
            "ratio_max": max(s["ratio_max"] for s in self.minibatch_stats),
            "pg_loss": mb_mean("pg_loss"),
            "vf_loss": mb_mean("vf_loss"),
            "grad_norm": mb_mean("grad_norm"),
            "explained_variance": explained_variance(batch.values, returns, mask).item(),
            "response_length": mask.sum(1).float().mean().item(),
            "eos_share": batch.ended.float().mean().item(),
            "seconds": seconds,
            "seconds_rollout": rollout_seconds,
            "seconds_update": update_seconds,
            "episodes_per_second": B / seconds,
        }
        self.history.append(metrics)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(metrics) + "\n")
        return metrics

    # --- a run that goes wrong stops, or warns, in words -------------------------------------------

    def _stop_if_not_finite(self, values, name: str, advice: str, where: str = "", when: str | None = None) -> None:
        """Stop the run if `values` holds NaN or inf, naming the quantity, the step and what to try:
        left alone, one NaN spreads into every weight and the run ends in nonsense, with exit code 0."""
        values = torch.as_tensor(values).detach()
        bad = ~torch.isfinite(values)
        if bool(bad.any()):
            when = when or f"at step {self.step_count + 1} of {self.cfg.steps}{where}"
            count = f"{int(bad.sum())} of {values.numel()} values are" if values.numel() > 1 else "it is"
            raise TrainingDiverged(f"PPO stopped {when}: {name} is not a finite number ({count} NaN or "
                                   f"infinite). {advice}")

    def _check_rollout(self, batch: Batch) -> None:
        """The rollout's numbers must be finite before anything learns from them."""
        bad = (~torch.isfinite(batch.raw_scores)).nonzero().flatten().tolist()
        example = (f" (e.g. for the response {batch.completions[bad[0]][:40]!r} to the prompt "
                   f"{batch.prompts[bad[0]][:40]!r})") if bad else ""
        self._stop_if_not_finite(batch.raw_scores, f"the reward ({self.reward.name}){example}",
                                 "Check the reward function (a division by zero? a log of 0?); PPO cannot learn "
                                 "from such scores.")
        mask = batch.mask.bool()
        self._stop_if_not_finite(batch.logprobs[mask], "the policy's log-probs", BLOW_UP_ADVICE)
        self._stop_if_not_finite(batch.values[mask], "the value head's values", BLOW_UP_ADVICE)
        self._stop_if_not_finite(batch.ref_logprobs[mask], "the reference (SFT) model's log-probs",
                                 "The SFT adapter is damaged: train SFT again.")

    def _check_kl(self, mean_kl: float) -> None:
        """KL(policy || SFT) past the bound: a warning once a run, or the end of it (stop_at_kl_bound)."""
        self._stop_if_not_finite(mean_kl, "the KL to the SFT model", BLOW_UP_ADVICE)
        cfg, bound = self.cfg, self.cfg.kl_bound_value
        if mean_kl <= bound:
            return
        source = "kl_bound" if cfg.kl_bound is not None else "3 x kl_target"
        message = (f"step {self.step_count + 1} of {cfg.steps}: KL(policy || SFT) is {mean_kl:.1f} nats per "
                   f"response, past the bound of {bound:g} ({source}); the policy is drifting far from the SFT "
                   "model, where the reward model's judgement no longer holds.")
        advice = (" To keep it nearer: a lower lr, a larger kl_coef, or the adaptive controller (adaptive_kl); "
                  "to allow it: a larger kl_bound.")
        if cfg.stop_at_kl_bound:
            raise TrainingDiverged(f"PPO stopped at {message}{advice} (stop_at_kl_bound is on; switch it off to "
                                   "only warn.)")
        if not self._kl_warned:
            self._kl_warned = True
            warnings.warn(KLBoundWarning(f"PPO {message}{advice} Training goes on (stop_at_kl_bound stops it "
                                         "instead); this warning comes once a run."), stacklevel=4)

    def train(self, steps: int | None = None, callback: Callable[[dict, "PPOTrainer"], None] | None = None,
              progress: bool = True) -> list[dict]:
        """Run updates until `steps` (default cfg.steps) are done, checkpointing every cfg.checkpoint_every.

        callback(metrics, trainer) runs after every update (the notebook's live plot uses it).
        """
        steps = self.cfg.steps if steps is None else steps
        bar = tqdm(total=steps, initial=self.step_count, desc="PPO", disable=not progress)
        while self.step_count < steps:
            metrics = self.step()
            bar.update(1)
            bar.set_postfix(score=f"{metrics['score_normalised']:+.2f}", gold=f"{metrics['gold']:+.2f}",
                            kl=f"{metrics['kl']:.2f}", eps=f"{metrics['episodes_per_second']:.0f}")
            if callback is not None:
                callback(metrics, self)
            if self.out_dir is not None and (self.step_count % self.cfg.checkpoint_every == 0
                                             or self.step_count == steps):
                self.save_checkpoint()
        bar.close()
        return self.history

    # --- checkpoints -------------------------------------------------------------------------------

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Everything needed to continue: policy adapter (peft format), value head, optimizer, KL
        controller, score normalisation, step, history and RNG states. Written to a temporary folder
        and then renamed, so a kill during the save leaves the previous checkpoint whole."""
        path = Path(path) if path is not None else self.out_dir / CHECKPOINT_DIR
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_adapter(self.model, POLICY, tmp / "policy")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()},
                  str(tmp / VALUE_HEAD_FILE))
        np_state = np.random.get_state()
        state = {
            "step": self.step_count,
            "history": self.history,
            "kl_ctl": dict(vars(self.kl_ctl)),
            "score_gain": self.score_gain,
            "score_bias": self.score_bias,
            "score_normalisation_fitted": self.score_normalisation_fitted,
            "optimizer": self.optimizer.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
                "python": random.getstate(),
            },
            "config": config_to_dict(self.cfg),
        }
        buffer = io.BytesIO()  # torch's own file writer reports a full disk as "unexpected pos"; Python's
        torch.save(state, buffer)  # write raises OSError(ENOSPC), which the command line can explain
        (tmp / "trainer_state.pt").write_bytes(buffer.getvalue())
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
        return path

    def load_checkpoint(self, path: str | Path | None = None) -> bool:
        """Restore a checkpoint written by save_checkpoint; False if there is none."""
        path = Path(path) if path is not None else self.out_dir / CHECKPOINT_DIR
        if not (path / "trainer_state.pt").is_file():
            old = path.with_name(path.name + ".old")  # killed between the two renames
            if not (old / "trainer_state.pt").is_file():
                return False
            path = old
        with reading_saved(path, "PPO checkpoint"):
            state = torch.load(path / "trainer_state.pt", weights_only=True)  # tensors, numbers, lists, dicts only
        needed = {"step", "history", "kl_ctl", "optimizer", "rng", "config"}
        missing = needed - set(state if isinstance(state, dict) else ())
        if missing:
            raise LabError(f"{path / 'trainer_state.pt'} is not a checkpoint the lab wrote (it has no "
                           f"{', '.join(sorted(missing))}). Delete {path} and run PPO again (without --resume).")
        for key in ("batch_size", "minibatch_size", "seed", "max_new_tokens", "reward", "r", "lora_alpha"):
            saved, now = state["config"].get(key), config_to_dict(self.cfg)[key]
            if saved != now:
                raise LabError(f"cannot resume from {path}: it was written with {key}={saved!r}, this run "
                               f"has {key}={now!r}. Use the same settings, or a new output folder.")
        with reading_saved(path, "PPO checkpoint"):
            adapter, value_head = load_file(str(path / "policy" / "adapter_model.safetensors")), \
                load_file(str(path / VALUE_HEAD_FILE))
        set_peft_model_state_dict(self.model, adapter, adapter_name=POLICY)
        self.value_head.load_state_dict(value_head)
        self.optimizer.load_state_dict(state["optimizer"])
        for key, value in state["kl_ctl"].items():
            setattr(self.kl_ctl, key, value)
        self.score_gain, self.score_bias = state["score_gain"], state["score_bias"]
        self.score_normalisation_fitted = state["score_normalisation_fitted"]
        self.step_count = state["step"]
        self.history = state["history"]
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        np_state = state["rng"]["numpy"]
        np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
        random.setstate(state["rng"]["python"])
        if self.out_dir is not None:  # metrics.jsonl as it was at the checkpoint: no steps counted twice
            with open(self.out_dir / METRICS_FILE, "w") as f:
                f.writelines(json.dumps(m) + "\n" for m in self.history)
        return True

    def save(self, out_dir: str | Path | None = None) -> Path:
        """The trained policy adapter in peft format (loadable with PeftModel.from_pretrained on the
        SFT trunk), the value head, the tokenizer and the resolved config."""
        out_dir = Path(out_dir) if out_dir is not None else self.out_dir
        save_adapter(self.model, POLICY, out_dir)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()},
                  str(out_dir / VALUE_HEAD_FILE))
        self.tokenizer.save_pretrained(out_dir)
        save_config(self.cfg, out_dir / CONFIG_FILE)
        return out_dir


def save_adapter(model: PeftModel, adapter: str, path: str | Path) -> Path:
    """One adapter of a multi-adapter PeftModel as a plain peft folder (adapter_config.json and
    adapter_model.safetensors). peft's save_pretrained would put an adapter not named "default" in a
    subfolder of its name; this folder loads with PeftModel.from_pretrained(trunk, path) as it is."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(model, adapter_name=adapter)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    config = model.peft_config[adapter]
    inference_mode = config.inference_mode
    config.inference_mode = True  # as peft saves it
    config.save_pretrained(str(path))
    config.inference_mode = inference_mode
    return path


# -----------------------------------------------------------------------------
# the whole stage: build, train, evaluate, save


def reward_fits_sft(reward_model: str | Path, sft: str | Path) -> bool:
    """Was the reward model trained on the trunk that merges this SFT adapter? The adapters' weights
    decide (a fingerprint in reward_model.json), so a copied or moved run folder still fits; reward
    models saved without a fingerprint are matched by the adapter's path."""
    from .reward_model import reward_model_info
    from .sft import adapter_fingerprint

    trunk = reward_model_info(reward_model)["trunk"]
    if trunk.get("sft_fingerprint") is not None:
        return trunk["sft_fingerprint"] == adapter_fingerprint(sft)
    return trunk.get("sft_adapter") is not None and Path(trunk["sft_adapter"]).resolve() == Path(sft).resolve()


def make_reward(cfg: PPOConfig, model: PeftModel, tokenizer) -> Reward:
    """The reward cfg.reward names: "gold", or "rm" (the stage-2 reward model, loaded onto `model`'s trunk)."""
    if cfg.reward == "gold":
        return GoldReward()
    if cfg.reward != "rm":
        raise LabError(f"reward={cfg.reward!r} is unknown: use 'rm' (the stage-2 reward model) or 'gold' "
                       "(the gold labeler).")
    from .reward_model import load_reward_model, reward_model_info

    if cfg.reward_model is None:
        from .pipeline import ensure_reward_model
        cfg.reward_model = str(ensure_reward_model())
    if not reward_fits_sft(cfg.reward_model, cfg.sft):
        trunk_sft = reward_model_info(cfg.reward_model)["trunk"].get("sft_adapter")
        raise LabError(f"The reward model in {cfg.reward_model} was trained on the trunk with SFT adapter "
                       f"{trunk_sft!r}, but this PPO run's trunk merges {cfg.sft!r}. Its adapter only fits the "
                       "trunk it was trained on: train it on this SFT model (pipeline.ensure_reward_model) "
                       "or set cfg.sft to that adapter.")
    # the "reward" adapter goes onto the same PeftModel: no second copy of the backbone
    return TrunkRewardModel(load_reward_model(cfg.reward_model, trunk=model, tokenizer=tokenizer))


@dataclass
class PPOResult:
    trainer: PPOTrainer  # holds the model (policy adapter on the shared trunk), value head, reward
    config: PPOConfig
    history: list[dict] = field(default_factory=list)  # one dict of metrics per update
    summary: dict = field(default_factory=dict)  # gold and reward scores of SFT and PPO samples, KL, speed
    samples: list[dict] = field(default_factory=list)  # the evaluation samples of SFT and PPO
    out_dir: Path | None = None


def build_trainer(cfg: PPOConfig, out_dir: str | Path | None = None, resume: bool = False,
                  reward: Reward | None = None, progress: bool = True) -> PPOTrainer:
    """The shared trunk (SFT merged), the policy adapter, the reward on the same trunk, and the trainer.

    cfg.sft / cfg.reward_model None: the pipeline's (made quickly if missing). reward: your own Reward
    instead of cfg.reward. out_dir: resume=True continues from its checkpoint; otherwise an earlier
    run's checkpoint and metrics there are cleared.
    """
    from .loading import load_prompts

    start_time = time.time()
    if cfg.sft is None:
        from .pipeline import ensure_sft
        cfg.sft = str(ensure_sft())
    set_seed(cfg.seed)
    trunk, tokenizer = build_trunk(cfg.sft, base=cfg.model, device=pick_device(cfg.device))
    model = add_policy_adapter(trunk, cfg)
    reward = reward if reward is not None else make_reward(cfg, model, tokenizer)
    prompts = load_prompts(cfg.prompts, "train")["prompt"]
    trainer = PPOTrainer(cfg, model, tokenizer, reward, prompts, out_dir)
    if trainer.out_dir is not None:
        trainer.out_dir.mkdir(parents=True, exist_ok=True)
        resumed = resume and trainer.load_checkpoint()
        if not resumed:  # a fresh run: no metrics of an earlier one may stay in the folder
            (trainer.out_dir / METRICS_FILE).unlink(missing_ok=True)
            shutil.rmtree(trainer.out_dir / CHECKPOINT_DIR, ignore_errors=True)
        save_config(cfg, trainer.out_dir / CONFIG_FILE)
        if resumed and progress:
            print(f"resumed from {trainer.out_dir / CHECKPOINT_DIR} at step {trainer.step_count} of {cfg.steps}")
    trainer.build_seconds = time.time() - start_time
    return trainer


def run_ppo(trainer: PPOTrainer, callback: Callable[[dict, PPOTrainer], None] | None = None,
            progress: bool = True, evaluate: bool = True) -> PPOResult:
    """Train until cfg.steps, then compare PPO's samples with the SFT model's on held-out prompts, and
    save (policy adapter in peft format, value head, config, metrics.jsonl, ppo_result.json)."""
    from .loading import load_prompts

    cfg = trainer.cfg
    start_time = time.time()
    trainer.train(callback=callback, progress=progress)
    result = PPOResult(trainer=trainer, config=cfg, history=trainer.history, out_dir=trainer.out_dir)
    steps_seconds = sum(m["seconds"] for m in trainer.history)
    heads = [trainer.value_head] + ([trainer.reward.reward_model.head]
                                    if isinstance(trainer.reward, TrunkRewardModel) else [])
    result.summary = {
        "steps": trainer.step_count,
        "episodes": trainer.step_count * cfg.batch_size,
        "episodes_per_second": trainer.step_count * cfg.batch_size / steps_seconds if steps_seconds else float("nan"),
        "train_seconds": time.time() - start_time,  # this session's share when resumed
        "kl_coef_final": trainer.kl_ctl.value,
        "parameter_memory": parameter_memory(trainer.model, heads=heads),
    }
    if evaluate:
        eval_prompts = load_prompts(cfg.prompts, "validation", limit=cfg.eval_prompts)["prompt"]
        scores, result.samples = evaluate_policy(trainer, eval_prompts, seed=cfg.seed)
        result.summary |= scores
    result.summary["seconds"] = trainer.build_seconds + time.time() - start_time
    if trainer.out_dir is not None:
        trainer.save()
        (trainer.out_dir / RESULT_FILE).write_text(json.dumps(result.summary, indent=2) + "\n")
    return result


def train_ppo(cfg: PPOConfig, out_dir: str | Path | None = None, resume: bool = False,
              reward: Reward | None = None, callback: Callable[[dict, PPOTrainer], None] | None = None,
              progress: bool = True, evaluate: bool = True) -> PPOResult:
    """The whole stage: build_trainer, then run_ppo. See both for the arguments."""
    return run_ppo(build_trainer(cfg, out_dir, resume, reward, progress), callback, progress, evaluate)


# -----------------------------------------------------------------------------
# comparisons: SFT vs PPO samples, and base / SFT / PPO side by side


def _rng_kept():
    """A block whose seeding does not change the caller's RNG (CPU, and the current CUDA device)."""
    return torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else [])


@torch.no_grad()
def evaluate_adapter(trainer: PPOTrainer, prompts: list[str], adapter: str | None = POLICY, seed: int = 0,
                     name: str = "ppo") -> tuple[dict, list[dict]]:
    """Sample one model on the shared trunk (adapter None: the SFT model) on `prompts`, seeded, and
    score the samples: gold, the reward (normalised as PPO sees it) and the KL to the SFT model
    (nats per response, summed over tokens, k1).

    Returns (summary, samples): mean and std of gold, mean reward, mean KL, EOS share and length,
    the keys suffixed with `_{name}`; and one dict per sample. The training RNG is left as it was.
    """
    cfg = trainer.cfg
    gold, score, kl, ended, length, samples = [], [], [], [], [], []
    with _rng_kept():
        torch.manual_seed(seed)
        for start in range(0, len(prompts), cfg.batch_size):
            chunk = list(prompts[start:start + cfg.batch_size])
            rollout, completions = trainer.sample(chunk, adapter)
            Tq = rollout.query.shape[1]
            input_ids = torch.cat([rollout.query, rollout.response], 1)              # (B, Tq + T)
            attention_mask = torch.cat([rollout.query_mask, rollout.response_mask], 1)
            with use_adapter(trainer.model, adapter):
                logits, _ = forward_response(trainer.model, input_ids, attention_mask, Tq)
            with use_adapter(trainer.model, None):
                ref_logits, _ = forward_response(trainer.model, input_ids, attention_mask, Tq)
            logprobs = logprobs_from_logits(logits, rollout.response, cfg.temperature)
            ref_logprobs = logprobs_from_logits(ref_logits, rollout.response, cfg.temperature)
            seq_kl = torch.where(rollout.response_mask.bool(), kl_estimate(logprobs, ref_logprobs),
                                 torch.zeros_like(logprobs)).sum(1)               # (B,)
            raw = trainer.reward.score(chunk, completions, rollout).float().cpu()
            normalised = (trainer.score_gain * raw + trainer.score_bias).tolist()
            g = gold_scores([p + c for p, c in zip(chunk, completions)])
            for i, prompt in enumerate(chunk):
                samples.append({"model": name, "prompt": prompt, "completion": completions[i],
                                "gold": g[i], "reward": normalised[i], "ended": bool(rollout.ended[i]),
                                "kl": seq_kl[i].item()})
            gold += g
            score += normalised
            kl += seq_kl.tolist()
            ended += rollout.ended.tolist()
            length += rollout.response_mask.sum(1).tolist()
    summary = {f"gold_score_{name}": float(np.mean(gold)), f"gold_std_{name}": float(np.std(gold, ddof=1)),
               f"reward_score_{name}": float(np.mean(score)), f"kl_{name}": float(np.mean(kl)),
               f"eos_share_{name}": float(np.mean(ended)), f"response_length_{name}": float(np.mean(length))}
    return summary, samples


@torch.no_grad()
def evaluate_policy(trainer: PPOTrainer, prompts: list[str], seed: int = 0) -> tuple[dict, list[dict]]:
    """Sample the SFT model (the reference) and the PPO policy on the same prompts with the same seed.

    Returns (summary, samples): evaluate_adapter's figures for each ("_sft", "_ppo"), "kl" = the PPO
    samples' KL to the SFT model (nats per response), and the gold gain in SFT standard deviations.
    """
    sft, sft_samples = evaluate_adapter(trainer, prompts, None, seed, name="sft")
    ppo, ppo_samples = evaluate_adapter(trainer, prompts, POLICY, seed, name="ppo")
    summary = {k: v for k, v in sft.items() if k != "kl_sft"} | {k: v for k, v in ppo.items() if k != "kl_ppo"}
    summary["kl"] = ppo["kl_ppo"]  # KL(PPO || SFT), nats per response
    summary["gold_gain_in_sft_std"] = (summary["gold_score_ppo"] - summary["gold_score_sft"]) / summary["gold_std_sft"]
    return summary, sft_samples + ppo_samples


@torch.no_grad()
def sample_models(models: dict, prompts: list[str], tokenizer, seed: int = 0, max_new_tokens: int = 48,
                  temperature: float = 1.0, reward: Reward | None = None, batch_size: int = 64) -> list[dict]:
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
        with _rng_kept(), context:
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


def load_policy(ppo_dir: str | Path, device="auto", with_reward: bool = False):
    """(model, tokenizer, reward) of a saved PPO run: the SFT trunk (from ppo_config.json) with the
    trained adapter "policy" active, and, if with_reward and the run used the reward model, that
    reward model on the same trunk (else None). `(model, None)` is then the SFT model."""
    ppo_dir = Path(ppo_dir)
    if not (ppo_dir / CONFIG_FILE).is_file() or not (ppo_dir / "adapter_config.json").is_file():
        raise LabError(f"{ppo_dir} holds no finished PPO run ({CONFIG_FILE} or adapter_config.json is "
                       "missing). Train one with train_ppo(cfg, out_dir=...) or notebooks/04_ppo.ipynb.")
    saved = json.loads((ppo_dir / CONFIG_FILE).read_text())
    cfg = PPOConfig(**{k: tuple(v) if k == "target_modules" else v for k, v in saved.items()
                       if k in {f.name for f in fields(PPOConfig)}})
    trunk, tokenizer = build_trunk(cfg.sft, base=cfg.model, device=device)
    model = PeftModel.from_pretrained(trunk, str(ppo_dir), adapter_name=POLICY)
    model.eval()
    reward = None
    if with_reward:
        reward = make_reward(cfg, model, tokenizer)
        model.set_adapter(POLICY, inference_mode=True)
    return model, tokenizer, reward


# -----------------------------------------------------------------------------
# figures


def plot_history(history: list[dict], kl_target: float | None = None, fig=None):
    """Scores, KL and beta per update: what PPO optimises, what it pays for it, and the price of a nat.

    fig: a figure with 3 axes to redraw in place (LivePlot does); None makes one.
    """
    import matplotlib.pyplot as plt

    if fig is None:
        fig, _ = plt.subplots(1, 3, figsize=(12, 3.3))
    axes = fig.axes
    for ax in axes:
        ax.clear()
    steps = [m["step"] for m in history]
    axes[0].plot(steps, [m["score_normalised"] for m in history], label="reward (normalised RM score)")
    axes[0].plot(steps, [m["gold"] for m in history], label="gold score")
    axes[0].set(xlabel="update", ylabel="mean per response", title="score of the samples")
    axes[0].legend(fontsize=8)
    axes[1].plot(steps, [m["kl"] for m in history], color="C2")
    if kl_target is not None:
        axes[1].axhline(kl_target, color="#999", linestyle=":", label=f"target {kl_target:g} nats")
        axes[1].legend(fontsize=8)
    axes[1].set(xlabel="update", ylabel="nats per response", title="KL(policy || SFT)")
    axes[2].plot(steps, [m["kl_coef"] for m in history], color="C3")
    axes[2].set(xlabel="update", ylabel="beta", title="KL coefficient beta")
    fig.tight_layout()
    return fig


class LivePlot:
    """A callback for PPOTrainer.train / train_ppo: redraws plot_history in place, in a notebook
    (plotting.LiveFigure), so the figure updates under the cell while PPO trains and the saved
    notebook keeps the last frame. Outside IPython it does nothing."""

    def __init__(self, every: int = 1, kl_target: float | None = None):
        from .plotting import LiveFigure

        self.every, self.kl_target = every, kl_target
        self.live = LiveFigure(1, 3, figsize=(12, 3.3))

    def __call__(self, metrics: dict, trainer: PPOTrainer) -> None:
        if metrics["step"] % self.every and trainer.step_count < trainer.cfg.steps:
            return
        self.live.draw(lambda fig: plot_history(trainer.history, self.kl_target, fig=fig))


def plot_kl_tradeoff(runs: dict[str, PPOResult]):
    """The reward / KL trade-off of several runs (e.g. a sweep of beta): each run's path through
    (KL, score) per update, and its final gold score against the KL of its samples."""
    import matplotlib.pyplot as plt

    fig, (ax_path, ax_gold) = plt.subplots(1, 2, figsize=(11, 3.6))
    for i, (label, result) in enumerate(runs.items()):
        kl = [m["kl"] for m in result.history]
        ax_path.plot(kl, [m["score_normalised"] for m in result.history], "-", color=f"C{i}", alpha=0.8, label=label)
        ax_path.plot(kl[-1:], [result.history[-1]["score_normalised"]], "o", color=f"C{i}")
        s = result.summary
        n = max(1, sum(1 for row in result.samples if row["model"] == "ppo"))  # evaluation samples
        ax_gold.errorbar([s["kl"]], [s["gold_score_ppo"]], yerr=[s["gold_std_ppo"] / math.sqrt(n)],
                         fmt="o", color=f"C{i}", label=label)
    first = next(iter(runs.values())).summary
    ax_gold.axhline(first["gold_score_sft"], color="#999", linestyle=":", label="SFT")
    ax_gold.axhline(first["gold_score_sft"] + first["gold_std_sft"], color="#999", linestyle="--",
                    label="SFT + 1 std")
    ax_path.set(xlabel="KL(policy || SFT), nats per response", ylabel="reward (normalised)",
                title="each update of each run")
    ax_gold.set(xlabel="KL of the final policy's samples (nats)", ylabel="gold score (mean, +-1 s.e.)",
                title="where each run ends")
    ax_path.legend(fontsize=8)
    ax_gold.legend(fontsize=8)
    fig.tight_layout()
    return fig



def plot_diagnostics(history: list[dict]):
    """PPO's health per update: entropy, approx KL and clip fraction, value explained variance, and
    the responses' length and EOS share (CleanRL's diagnostics, plus what an LM adds)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(14, 3.1))
    steps = [m["step"] for m in history]
    axes[0].plot(steps, [m["entropy"] for m in history])
    axes[0].set(xlabel="update", ylabel="nats per token", title="policy entropy")
    axes[1].plot(steps, [m["approx_kl"] for m in history], label="approx KL (old || new)")
    axes[1].plot(steps, [m["clipfrac"] for m in history], label="clip fraction")
    axes[1].set(xlabel="update", title="size of each update")
    axes[1].legend(fontsize=8)
    axes[2].plot(steps, [m["explained_variance"] for m in history], color="C2")
    axes[2].set(xlabel="update", title="value head: explained variance", ylim=(-1.05, 1.05))
    axes[3].plot(steps, [m["response_length"] for m in history], color="C4")
    axes[3].set(xlabel="update", ylabel="tokens", title="response length")
    eos = axes[3].twinx()
    eos.plot(steps, [m["eos_share"] for m in history], color="C5", linestyle="--")
    eos.set(ylabel="share ending with EOS (dashed)", ylim=(0, 1.05))
    fig.tight_layout()
    return fig
