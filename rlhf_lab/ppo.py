"""Stage 3: PPO on the KL-shaped reward, with policy, value, reference and reward model on one trunk;
and its critic-free cousins RLOO and GRPO, the same loop with other advantages (cfg.algo).

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

RLOO (Ahmadian et al. 2024) and GRPO (Shao et al. 2024), cfg.algo = "rloo" or "grpo", run the same
loop: the same rollouts, scores, checks, checkpoints and evaluation, with k = cfg.group_size samples
of each prompt in a batch and no value head. Only step 2 and the loss differ:
  - rloo: one reward per response, score - beta * its summed KL (the KL in the reward, as PPO);
    advantage = reward - mean reward of the other k - 1 samples of the prompt (rloo_advantages);
  - grpo: advantage = (score - group mean) / group std (grpo_advantages); the KL is not in the reward
    but a loss term, kl_loss_coef * k3 KL to the reference (kl_loss);
each response's advantage goes to every one of its tokens, into PPO's clipped policy_loss.
The trunk (sampling, the forward pass, adapters) is in trunk.py, the held-out comparisons in
evaluation.py, the figures in rl_plots.py; their names are imported here too, for the notebooks.

Under `accelerate launch` (distributed.py) each process samples its share of every batch; the batch is
gathered before step 2, each process takes its share of every minibatch, and DDP all-reduces the gradients
of the adapter and the value head: the step one process takes on the same batch, in less time.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Callable, Protocol

import numpy as np
import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import distributed, tracking
from .config_args import (Count, Device, Finite, Fraction, NonNegative, OneOf, Positive, Range, Seed,
                          check_config)
from .evaluation import compare_with_sft, evaluate_samples, rng_kept, sample_models  # noqa: F401 (re-exported)
from .generation import Rollout, check_fits, decode_responses
from .gold import gold_scores
from .ppo_math import (
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    gae,
    grpo_advantages,
    kl_loss,
    kl_shaped_rewards,
    logprobs_from_hidden,
    masked_mean,
    masked_whiten,
    policy_loss,
    rloo_advantages,
    value_loss,
)
from .rl_plots import LivePlot, plot_diagnostics, plot_history, plot_kl_tradeoff  # noqa: F401 (re-exported)
from .trunk import (POLICY, REWARD, ResponseForward, add_policy_adapter, build_trunk, causal_lm,  # noqa: F401
                    forward_response, lm_head_weight, parameter_memory, sample_from, sample_responses, save_adapter,
                    use_adapter, use_fused_gelu)
from .utils import (ConfigError, LabError, TrainingDiverged, config_to_dict, cxx_compiler, pick_device,
                    reading_saved, replacing_folder, rng_states, save_config, saved_folder, set_rng_states, set_seed,
                    write_torch)

ALGOS = ("ppo", "rloo", "grpo")
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

    algo: Annotated[str, OneOf(*ALGOS)] = "ppo"  # ppo (value head, GAE), rloo (leave-one-out), grpo (group-normalised);
    # ppo: Ziegler et al. 2019; rloo: KL in the reward (Ahmadian et al. 2024); grpo: KL as a loss term (Shao et
    # al. 2024). rloo and grpo have no value head and sample group_size responses per prompt
    group_size: Count | None = None  # k samples per prompt in a batch; None: 1 for ppo, 4 for rloo and grpo
    # (Ahmadian et al. found k = 4 better than 2; batch_size / k prompts keep a batch's cost)
    # --- models and data
    model: str = "tiny"  # the pretrained model under the SFT adapter (the "base" of comparisons)
    sft: str | None = None  # SFT adapter folder, merged into the trunk; None: pipeline.ensure_sft()
    reward: Annotated[str, OneOf("rm", "gold")] = "rm"  # "rm": the stage-2 reward model; "gold": the gold
    # labeler itself (to tune PPO, and to tell reward-model errors from PPO errors)
    reward_model: str | None = None  # reward-model folder; None: pipeline.ensure_reward_model()
    prompts: str = "tiny"  # the observations: loading.load_prompts(prompts, "train"); eval on "validation"
    # --- rollouts
    steps: Count = 40  # PPO updates: 40 x 64 = 2,560 episodes; the gold score has flattened by then
    batch_size: Count = 64  # episodes per update (TRL's sentiment notebook: 128); 64 keeps steps short on a CPU
    max_new_tokens: Count = 48  # the SFT model's reviews end after ~30 tokens; 48 leaves room to finish
    temperature: Positive = 1.0  # sampling temperature; log-probs divide the logits by it too (N details)
    no_eos_score: Finite | None = -1.0  # normalised score of a response that never reaches EOS (Ziegler
    # et al. used -1: a fixed low score, so the policy cannot please the reward model by never stopping)
    normalize_scores: bool = True  # scores of the initial policy's samples: mean 0, std 1 (Ziegler et al.
    # 2019); the stage-2 RM is normalised on SFT samples already, other rewards get a gain and bias here
    norm_episodes: Annotated[int, Range(2)] = 256  # samples of the initial policy that fit that gain and bias
    # --- the KL penalty
    kl_coef: NonNegative = 0.15  # ppo, rloo: beta at the start (Ziegler et al. 2019's stylistic tasks);
    # beta * KL goes into the reward; grpo has kl_loss_coef instead
    adaptive_kl: bool = True  # move beta towards kl_target (Ziegler et al. 2019, 2.2); False: beta fixed
    kl_target: Positive = 4.0  # nats per response the controller aims at: Ziegler et al. used 6; here the gold
    # score gains little beyond ~4 nats, and held-out KL runs up to ~1.5 nats above the batch KL (a heavy
    # tail), so 4 keeps runs under the lab's bar of 6 nats
    kl_horizon: Count = 256  # episodes over which a 20% error moves beta by 20%: Ziegler et al. used 10,000
    # for runs of ~1M episodes; ours have ~2,500, so beta must follow the KL within a few updates
    kl_kind: Annotated[str, OneOf("k1", "k2", "k3")] = "k1"  # per-token KL estimator in the reward: k1 =
    # log pi - log pi_ref (Ziegler et al.); k2, k3: http://joschu.net/blog/kl-approx.html
    kl_bound: Positive | None = None  # nats per response; a batch past it warns (None: 3 x kl_target);
    # the adaptive controller holds the KL near its target, so 3x means PPO is running away from the SFT model
    stop_at_kl_bound: bool = False  # stop the run at kl_bound instead of warning (a fixed beta = 0 may
    # drift far on purpose, a lesson in itself, so the default only warns)
    kl_loss_coef: NonNegative = 0.2  # grpo: fixed beta of the k3 KL term in its loss (Shao et al.: 0.04);
    # 40 updates on the tiny world, seed 0: 0.04 drifts to 21 nats of KL, 0.1 to 8.2, 0.2 to 4.5 (near PPO's
    # kl_target). grpo's reward has no KL, so kl_coef and the adaptive controller do not apply to it
    group_std: bool = True  # grpo: advantages / the group's std (Shao et al.); off: Dr. GRPO (Liu et al. 2025)
    # --- PPO
    ppo_epochs: Count = 4  # passes over each batch (Ziegler et al. 2019; N details)
    minibatch_size: Count = 32  # episodes per gradient step: 2 minibatches x 4 epochs = 8 steps per update
    micro_batch_size: Count | None = None  # episodes per forward/backward pass inside a minibatch (gradient
    # accumulation, the same update): less activation memory; None: the whole minibatch in one pass
    clip_range: Positive = 0.2  # PPO's epsilon for the policy ratio (Schulman et al. 2017; N details)
    clip_range_value: Positive = 0.2  # ppo: how far a value may move from its rollout value (N details)
    vf_coef: NonNegative = 0.1  # ppo: weight of the value loss; small, as value and policy share the trunk (N
    # details)
    gamma: Fraction = 1.0  # ppo: no discounting within a response (Ziegler et al. 2019)
    lam: Fraction = 0.95  # ppo: GAE lambda (Ziegler et al. 2019; N details)
    whiten_advantages: bool = True  # ppo: zero mean, unit variance per batch (N details);
    # rloo's and grpo's advantages are used as their papers define them
    lr: Positive = 1e-3  # Adam on LoRA and the value head; LoRA takes larger steps than full fine-tuning
    adam_eps: Positive = 1e-5  # CleanRL's and lm-human-preferences' Adam epsilon
    max_grad_norm: Positive = 1.0  # clip the global gradient norm (N details: 1.0 in TRL's PPO)
    # --- the policy's LoRA (Hu et al. 2021)
    r: Count = 8  # LoRA rank, as for SFT and the reward model
    lora_alpha: Positive = 16.0  # update scale alpha / r = 2, as for SFT
    target_modules: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")  # GPT-2's Conv1D layers
    fused_gelu: bool = True  # run GPT-2's gelu_new as torch's one fused op (the same function to ~1e-6):
    # the Python formula keeps several intermediate tensors per MLP for the backward pass, the fused op one
    compile: bool = False  # torch.compile the policy's forward pass: faster updates after compiling once
    # (one process). Tiny world, 2-core CPU: ~30 s of compiling, then updates ~20% faster: long runs only.
    # Same seed, same run; but its float rounding is not eager's, so its samples part from an eager run's.
    # --- bookkeeping
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
        k = self.samples_per_prompt
        if self.algo != "ppo" and k < 2:
            raise ConfigError(f"algo={self.algo!r} needs group_size >= 2: each sample's baseline comes from the "
                              f"other samples of its prompt (got {k}); e.g. group_size=4.", "PPOConfig",
                              ("group_size", "algo"))
        if self.batch_size % k:
            raise ConfigError(f"batch_size={self.batch_size} is not a multiple of group_size={k} (samples per "
                              f"prompt); choose sizes that divide (e.g. 64 and 4).", "PPOConfig",
                              ("batch_size", "group_size"))

    @property
    def samples_per_prompt(self) -> int:
        """k, the samples of each prompt in a batch: group_size, or 1 for ppo and 4 for rloo and grpo."""
        return self.group_size if self.group_size is not None else (1 if self.algo == "ppo" else 4)

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


class SeparateRewardModel:
    """The stage-2 reward model on a trunk of its own, scoring the texts: for a policy whose trunk is not the
    one the reward model was trained on (PPO from the pretrained model, build_trainer(start="pretrained")).
    A second copy of the backbone in memory, and the texts are tokenised again; the scores are the same."""

    name = "reward model"

    def __init__(self, reward_model, normalised: bool = True):
        self.reward_model = reward_model  # a RewardModel with its own trunk (load_reward_model(path))
        # True: the reward model's own normalisation (a saved stage-2 model has one); False: raw scores, and
        # the trainer fits gain and bias on the initial policy's samples (a freshly trained reward model)
        self.normalised = normalised

    @torch.no_grad()
    def score(self, prompts: list[str], completions: list[str], rollout: Rollout | None = None) -> torch.Tensor:
        scores = self.reward_model.score_texts(prompts, completions, normalised=self.normalised)
        return torch.tensor(scores, dtype=torch.float32)  # (B,)


# -----------------------------------------------------------------------------
# the value head (the trunk itself: rlhf_lab/trunk.py)


def new_value_head(hidden_size: int) -> torch.nn.Linear:
    """V(s_t) = w . h_t + b on the policy's final hidden state, initialised to zero (N details;
    lm-human-preferences): the first values are 0 and do not disturb the early advantages."""
    head = torch.nn.Linear(hidden_size, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return head


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
    logprobs: torch.Tensor | None  # (B, T) policy at rollout (the "old" log-probs; step() fills them when it
                                   # takes them from the update's first forward pass, PPOTrainer.fused_first_pass)
    ref_logprobs: torch.Tensor     # (B, T) reference = trunk with adapters off
    values: torch.Tensor | None    # (B, T) value head at rollout (None: rloo and grpo have none)
    entropy: torch.Tensor | None   # (B, T) policy entropy at each position (filled as logprobs)
    raw_scores: torch.Tensor       # (B,) the reward's scores as they came
    scores: torch.Tensor           # (B,) normalised, with no_eos_score for unfinished responses


def pad_rollout(rollout: Rollout, query_length: int, response_length: int, pad_token_id: int) -> Rollout:
    """The same rollout in a wider layout: queries left-padded to query_length, responses right-padded to
    response_length (masks 0 on the new padding). Under accelerate launch every process pads its slice to
    the longest of all, so that the slices stack into the batch one process would have made."""
    query_pad, response_pad = query_length - rollout.query.shape[1], response_length - rollout.response.shape[1]
    return Rollout(torch.nn.functional.pad(rollout.query, (query_pad, 0), value=pad_token_id),
                   torch.nn.functional.pad(rollout.query_mask, (query_pad, 0), value=0),
                   torch.nn.functional.pad(rollout.response, (0, response_pad), value=pad_token_id),
                   torch.nn.functional.pad(rollout.response_mask, (0, response_pad), value=0),
                   rollout.ended)


def gather_batch(batch: Batch) -> Batch:
    """Every process's Batch (each in the same layout: pad_rollout) as one, in rank order, in every process:
    tensors through distributed.gather, texts through gather_object. One process: `batch` itself."""
    if distributed.world_size() == 1:
        return batch
    parts = {}
    for f in fields(Batch):
        value = getattr(batch, f.name)
        if isinstance(value, torch.Tensor):
            parts[f.name] = distributed.gather(value)
        elif isinstance(value, list):
            parts[f.name] = distributed.gather_object(value)
        else:  # query_length, the same in every process; values None (rloo and grpo have no value head)
            parts[f.name] = value
    return Batch(**parts)


class PPOTrainer:
    """PPO (or RLOO, GRPO: cfg.algo) on one shared trunk. `step()` runs one update and returns its
    metrics; `train()` runs all.

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
        self.name = cfg.algo.upper()  # in progress bars and messages: PPO, RLOO, GRPO
        # only PPO has a critic; RLOO and GRPO take their baseline from the other samples of a prompt
        self.value_head = (new_value_head(causal_lm(model).config.hidden_size).to(self.device)
                           if cfg.algo == "ppo" else None)
        self.policy_params = [p for name, p in model.named_parameters() if p.requires_grad]
        if not self.policy_params or not all(f".{POLICY}." in n for n, p in model.named_parameters()
                                             if p.requires_grad):
            raise LabError("internal: only the policy adapter's weights may train.")
        self.params = self.policy_params + (list(self.value_head.parameters()) if self.value_head else [])
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.lr, eps=cfg.adam_eps)
        if cfg.algo == "grpo":  # beta weighs GRPO's KL loss term, fixed (Shao et al. 2024)
            self.kl_ctl = FixedKLController(cfg.kl_loss_coef)
        else:  # beta weighs the KL in the reward
            self.kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
                           else FixedKLController(cfg.kl_coef))
        self.score_gain, self.score_bias = 1.0, 0.0  # normalised = gain * raw + bias
        self.score_normalisation_fitted = False
        self.step_count = 0  # updates done
        self.history: list[dict] = []
        self.build_seconds = 0.0  # set by build_trainer: loading the trunk, adapters and reward
        self.minibatch_stats: list[dict] = []  # the last step's stats, one dict per minibatch
        self._prompt_orders: dict[int, list[int]] = {}
        # under accelerate launch (distributed.py): each process samples batch_size / N episodes with a
        # generator of its own and takes minibatch_size / N episodes of each minibatch; DDP all-reduces the
        # gradients of the policy's adapter and the value head. One process: ddp is None, nothing changes.
        for name in ("batch_size", "minibatch_size"):
            distributed.check_divisible(getattr(cfg, name), name, "PPOConfig")
        self.sampling_rng = distributed.RankGenerator(cfg.seed)
        self.response_forward = ResponseForward(model, self.value_head)
        self.head_weight = lm_head_weight(model)  # (V, C), for logprobs_from_hidden
        self.ddp = distributed.prepare(self.response_forward)
        if cfg.compile:
            if self.ddp is not None:
                raise ConfigError("compile=True is for one process; under accelerate launch leave it off "
                                  "(--ppo-compile)")
            if self.device.type == "cpu" and cxx_compiler() is None:
                raise ConfigError("compile=True on the CPU needs a C++ compiler, which torch.compile builds its "
                                  "kernels with: install one (Debian: apt install g++) or leave --ppo-compile off")
            # dynamic: one graph for every response length; the rollout's no-grad pass gets a second graph
            self.response_forward = torch.compile(self.response_forward, dynamic=True)

    # --- rollouts ----------------------------------------------------------------------------------

    def batch_prompts(self, step: int, n: int | None = None) -> list[str]:
        """The prompts of update `step`: passes over the prompt set, each in its own seeded order, so a
        resumed run sees exactly the prompts the uninterrupted run would have seen. n distinct prompts
        (default batch_size / k), each repeated k = cfg.samples_per_prompt times in a row: a group."""
        k = self.cfg.samples_per_prompt
        n = n or self.cfg.batch_size // k
        out = []
        for i in range(step * n, (step + 1) * n):
            epoch, j = divmod(i, len(self.prompts))
            if epoch not in self._prompt_orders:
                g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
                self._prompt_orders = {epoch: torch.randperm(len(self.prompts), generator=g).tolist()}
            out += [self.prompts[self._prompt_orders[epoch][j]]] * k
        return out

    @torch.no_grad()
    def sample(self, prompts: list[str], adapter: str | None = POLICY) -> tuple[Rollout, list[str]]:
        """Sample one response per prompt (policy by default; None: the reference) with the KV cache."""
        check_fits(self.model, self.tokenizer, prompts, self.cfg.max_new_tokens, config="PPOConfig")
        with use_adapter(self.model, adapter), self.sampling_rng.sampling():  # each process draws its own
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
        mine = distributed.shard([self.prompts[order[i % len(order)]] for i in range(n)])  # this process's share
        chunk = self.cfg.batch_size // distributed.world_size()
        for start in range(0, len(mine), chunk):
            prompts = mine[start:start + chunk]
            rollout, completions = self.sample(prompts)
            scores.append(self.reward.score(prompts, completions, rollout).float().cpu())
        scores = torch.cat(scores)  # (n,)
        if distributed.world_size() > 1:  # every process's scores, in order
            scores = torch.tensor(distributed.gather_object(scores.tolist()), dtype=torch.float32)  # (n,)
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
    def rollout(self, prompts: list[str], policy_pass: bool = True) -> Batch:
        """Sample with the policy, then one no-grad pass each of policy, reference and reward model.

        policy_pass=False leaves the policy's pass (logprobs, values, entropy: None) to step(), which then
        takes it from the first forward pass of the update (fused_first_pass).

        Under accelerate launch each process does this for its slice of `prompts` (distributed.shard), in
        one layout for all (the longest query and response of any process), and the slices are gathered
        into the whole batch, in the order of `prompts`, in every process: what follows sees the batch that
        one process would have sampled."""
        cfg = self.cfg
        prompts = distributed.shard(prompts)
        rollout, completions = self.sample(prompts)
        if distributed.world_size() > 1:
            lengths = distributed.max_across(rollout.query.shape[1], rollout.response.shape[1])
            rollout = pad_rollout(rollout, *lengths, self.tokenizer.pad_token_id)
        Tq = rollout.query.shape[1]
        input_ids = torch.cat([rollout.query, rollout.response], dim=1)                  # (B, Tq + T)
        attention_mask = torch.cat([rollout.query_mask, rollout.response_mask], dim=1)   # (B, Tq + T)
        mask = rollout.response_mask                                                     # (B, T)
        logprobs = values = entropy = None
        if policy_pass:
            # old log-probs and values: one pass of the policy (the same code path as in the update,
            # so that the ratio on the first minibatch is exactly 1)
            hidden, values = self.response_forward(input_ids, attention_mask, Tq, logits=False)  # (B, T, C), (B, T)
            logprobs, entropy = logprobs_from_hidden(hidden, self.head_weight, rollout.response, cfg.temperature,
                                                     with_entropy=True)                  # (B, T) each
        # reference: the same trunk with every adapter off (the SFT model)
        with use_adapter(self.model, None):
            ref_hidden, _ = forward_response(self.model, input_ids, attention_mask, Tq, logits=False)  # (B, T, C)
        ref_logprobs = logprobs_from_hidden(ref_hidden, self.head_weight, rollout.response, cfg.temperature)  # (B, T)
        raw_scores = self.reward.score(prompts, completions, rollout).to(self.device).float()  # (B,)
        scores = self.score_gain * raw_scores + self.score_bias                         # (B,)
        if cfg.no_eos_score is not None:
            # a response cut off by max_new_tokens gets a fixed low score (Ziegler et al. 2019: -1)
            scores = torch.where(rollout.ended, scores, torch.full_like(scores, cfg.no_eos_score))
        return gather_batch(Batch(prompts, completions, input_ids, attention_mask, Tq, rollout.response, mask,
                                  rollout.ended, logprobs, ref_logprobs, values, entropy, raw_scores, scores))

    # --- one PPO update ----------------------------------------------------------------------------

    def step(self) -> dict:
        """One update: rollout, advantages (cfg.algo's), ppo_epochs of minibatches, beta update."""
        cfg = self.cfg
        if not self.score_normalisation_fitted:
            self.fit_score_normalisation()
        start = time.perf_counter()

        # 1. rollout ---------------------------------------------------------------------------------
        fused = self.fused_first_pass()
        batch = self.rollout(self.batch_prompts(self.step_count), policy_pass=not fused)
        mask = batch.mask
        B = mask.shape[0]
        rollout_seconds = time.perf_counter() - start
        first_pass = self._first_pass(batch) if fused else None  # fills batch.logprobs, values, entropy
        first_pass_seconds = time.perf_counter() - start - rollout_seconds
        self._check_rollout(batch)

        # 2. rewards and advantages ------------------------------------------------------------------
        kl_coef = self.kl_ctl.value
        kl_in_reward = 0.0 if cfg.algo == "grpo" else kl_coef  # GRPO's KL is a loss term instead
        kl, advantages, returns = self.advantages(batch, kl_coef)                      # (B, T) each

        # 3. ppo_epochs passes over shuffled minibatches ----------------------------------------------
        update_start = time.perf_counter()
        self.update(batch, advantages, returns, kl_coef, first_pass)
        update_seconds = time.perf_counter() - update_start + first_pass_seconds  # the first pass is the update's

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
            "kl_coef": kl_coef,  # beta used for this batch (grpo: of its KL loss term)
            "non_score_reward": (-kl_in_reward * kl.sum(1)).mean().item(),
            "entropy": masked_mean(batch.entropy, mask).item(),  # nats per token
            "approx_kl": mb_mean("approx_kl"),
            "clipfrac": mb_mean("clipfrac"),
        }
        if self.value_head is not None:
            metrics["vf_clipfrac"] = mb_mean("vf_clipfrac")
        metrics |= {
            "ratio_mean": mb_mean("ratio_mean"),
            "ratio_max": max(s["ratio_max"] for s in self.minibatch_stats),
            "pg_loss": mb_mean("pg_loss"),
        }
        if self.value_head is not None:
            metrics["vf_loss"] = mb_mean("vf_loss")
        if cfg.algo == "grpo":
            metrics["kl_loss"] = mb_mean("kl_loss")  # nats per token, k3, averaged over the minibatches
        metrics["grad_norm"] = mb_mean("grad_norm")
        if self.value_head is not None:
            metrics["explained_variance"] = explained_variance(batch.values, returns, mask).item()
        metrics |= {
            "response_length": mask.sum(1).float().mean().item(),
            "eos_share": batch.ended.float().mean().item(),
            "seconds": seconds,
            "seconds_rollout": rollout_seconds,
            "seconds_update": update_seconds,
            "episodes_per_second": B / seconds,
        }
        self.history.append(metrics)
        tracking.log(cfg.algo, metrics, self.step_count)
        if self.out_dir is not None and distributed.is_main():  # one process writes (distributed.py)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(metrics) + "\n")
        return metrics

    def advantages(self, batch: Batch, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(kl, advantages, returns) # (B, T) each, of the whole batch: the per-token KL to the reference,
        cfg.algo's advantages, and PPO's returns (None for rloo and grpo). kl_coef: beta for this batch."""
        cfg, mask = self.cfg, batch.mask
        kl_in_reward = 0.0 if cfg.algo == "grpo" else kl_coef  # GRPO's KL is a loss term instead
        rewards, kl = kl_shaped_rewards(batch.scores, batch.logprobs, batch.ref_logprobs, mask, kl_in_reward,
                                        cfg.kl_kind)                                   # (B, T), (B, T)
        returns = None
        if cfg.algo == "ppo":
            advantages, returns = gae(rewards, batch.values, mask, cfg.gamma, cfg.lam)    # (B, T), (B, T)
            if cfg.whiten_advantages:
                advantages = masked_whiten(advantages, mask)                           # (B, T)
        else:
            sequence_rewards = rewards.sum(1)  # (B,) rloo: score - beta * summed KL; grpo: the score
            k = cfg.samples_per_prompt
            advantages = (rloo_advantages(sequence_rewards, k) if cfg.algo == "rloo"
                          else grpo_advantages(sequence_rewards, k, cfg.group_std))   # (B,)
            # the same advantage for every token of a response (Shao et al. 2024: outcome supervision)
            advantages = torch.where(mask.bool(), advantages[:, None], torch.zeros_like(rewards))  # (B, T)
        return kl, advantages, returns

    def fused_first_pass(self) -> bool:
        """Whether this step takes the old log-probs, values and entropy from the update's first forward pass
        instead of a no-grad pass of its own: when the first minibatch is the whole batch in one piece (one
        minibatch per epoch, no micro-batches, one process), that pass sees exactly the weights of the rollout,
        so its outputs, detached, are the rollout's, and the ratio on the first minibatch is exactly 1 (as TRL
        takes them from generation's logits). It saves one forward pass of the policy per update."""
        cfg = self.cfg
        return (cfg.ppo_epochs >= 1 and cfg.minibatch_size >= cfg.batch_size and self.ddp is None
                and (cfg.micro_batch_size is None or cfg.micro_batch_size >= cfg.minibatch_size)
                and torch.is_grad_enabled())

    def _first_pass(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The update's first forward pass over the whole batch, with gradients: (new log-probs # (B, T),
        values # (B, T) or None), kept for the first minibatch's loss; their detached copies (and the entropy)
        go into the batch as the rollout's."""
        cfg = self.cfg
        hidden, vpred = self.response_forward(batch.input_ids, batch.attention_mask, batch.query_length,
                                              logits=False)                              # (B, T, C), (B, T)
        new_logprobs, batch.entropy = logprobs_from_hidden(hidden, self.head_weight, batch.response, cfg.temperature,
                                                           with_entropy=True)  # (B, T) each; no gradient in the entropy
        batch.logprobs = new_logprobs.detach()
        batch.values = vpred.detach() if vpred is not None else None
        return new_logprobs, vpred

    def update(self, batch: Batch, advantages: torch.Tensor, returns: torch.Tensor | None, kl_coef: float,
               first_pass: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> None:
        """cfg.ppo_epochs passes over shuffled minibatches of the batch, one optimizer step each; their stats
        go to self.minibatch_stats. first_pass: the outputs of _first_pass, the first minibatch's forward pass.

        Under accelerate launch every process holds the whole batch (rollout gathers it) and takes its slice
        of each minibatch; its loss enters with its share of the minibatch's tokens, and DDP all-reduces the
        gradients: the same step as one process on the same minibatch (tests/test_distributed.py).
        """
        cfg, mask = self.cfg, batch.mask
        B = mask.shape[0]
        self.minibatch_stats = []
        for epoch in range(cfg.ppo_epochs):
            # every process draws the same order from the global generator; the main process's is sent
            # all the same, so that no stray draw in one process can split them
            b_inds = distributed.broadcast(torch.randperm(B, device=self.device))
            for mb_start in range(0, B, cfg.minibatch_size):
                mb_inds = b_inds[mb_start:mb_start + cfg.minibatch_size]
                self.optimizer.zero_grad(set_to_none=True)
                # Gradient accumulation: the losses are means over the minibatch's tokens, so each
                # micro-batch's mean enters with its share of those tokens (1 without micro-batches).
                mb_tokens = mask[mb_inds].sum()
                parts = []
                micro_batches = distributed.shard(mb_inds).split(cfg.micro_batch_size or cfg.minibatch_size)
                for i, inds in enumerate(micro_batches):
                    share = mask[inds].sum() / mb_tokens
                    # DDP averages the processes' gradients, where the minibatch's loss is their sum; only the
                    # last micro-batch's backward all-reduces (the earlier ones accumulate)
                    scale = share if self.ddp is None else share * distributed.world_size()
                    with distributed.no_sync(self.ddp, sync=i == len(micro_batches) - 1):
                        loss, stats = self._loss(batch, inds, advantages, returns, kl_coef, epoch, first_pass)
                        distributed.backward(loss * scale, self.ddp)
                    first_pass = None  # only the first minibatch's weights are those of the first pass
                    parts.append((share.item(), {k: v.item() for k, v in stats.items()}))
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                # an optimizer step on a NaN gradient would make every weight NaN: stop before it
                self._stop_if_not_finite(grad_norm, "the gradient norm", BLOW_UP_ADVICE,
                                         where=f", {self.name} epoch {epoch + 1}")
                self.optimizer.step()
                stats = {k: sum(w * p[k] for w, p in parts) for k in parts[0][1]}  # token-weighted means
                stats["ratio_max"] = max(p["ratio_max"] for _, p in parts)
                if self.ddp is not None:  # each process's share of the minibatch's means: their sum, and the max
                    stats = distributed.reduce_metrics(stats) | distributed.reduce_metrics(
                        {"ratio_max": stats["ratio_max"]}, "max")
                self.minibatch_stats.append({"epoch": epoch, "grad_norm": grad_norm.item()} | stats)

    def _loss(self, batch: Batch, inds: torch.Tensor, advantages: torch.Tensor, returns: torch.Tensor | None,
              kl_coef: float, epoch: int, first_pass: tuple | None = None) -> tuple[torch.Tensor, dict]:
        """The loss of the episodes `inds` of a minibatch, and its stats (0-d tensors): PPO's clipped policy
        loss for every algo, plus vf_coef * the clipped value loss (ppo) or kl_coef * the k3 KL to the
        reference (grpo, Shao et al. 2024 eq. 3). first_pass: the whole batch's forward pass, already made
        (_first_pass), in place of this minibatch's."""
        cfg, mask = self.cfg, batch.mask[inds]
        if first_pass is not None:
            new_logprobs, vpred = first_pass[0][inds], (first_pass[1][inds] if first_pass[1] is not None else None)
        else:
            forward = self.ddp if self.ddp is not None else self.response_forward  # trunk.forward_response
            hidden, vpred = forward(batch.input_ids[inds], batch.attention_mask[inds], batch.query_length,
                                    logits=False)  # (b, T, C), (b, T) or None
            # the LM head and the log-softmax together, the (b, T, V) logits never whole (ppo_math)
            new_logprobs = logprobs_from_hidden(hidden, self.head_weight, batch.response[inds], cfg.temperature)
        pg_loss, pg_stats = policy_loss(new_logprobs, batch.logprobs[inds], advantages[inds], mask, cfg.clip_range)
        terms, stats = {"the policy loss (pg_loss)": pg_loss}, {"pg_loss": pg_loss} | pg_stats
        loss = pg_loss
        if self.value_head is not None:
            vf_loss, vf_stats = value_loss(vpred, batch.values[inds], returns[inds], mask, cfg.clip_range_value)
            loss = loss + cfg.vf_coef * vf_loss
            terms["the value loss (vf_loss)"] = vf_loss
            stats |= {"vf_loss": vf_loss} | vf_stats
        if cfg.algo == "grpo":
            kl_term = kl_loss(new_logprobs, batch.ref_logprobs[inds], mask)
            loss = loss + kl_coef * kl_term
            terms["the KL loss (kl_loss)"] = kl_term
            stats["kl_loss"] = kl_term
        for name, value in terms.items():
            self._stop_if_not_finite(value, name, BLOW_UP_ADVICE, where=f", {self.name} epoch {epoch + 1}")
        return loss, {k: v.detach() for k, v in (stats | {"loss": loss}).items()}

    # --- a run that goes wrong stops, or warns, in words -------------------------------------------

    def _stop_if_not_finite(self, values, name: str, advice: str, where: str = "", when: str | None = None) -> None:
        """Stop the run if `values` holds NaN or inf, naming the quantity, the step and what to try:
        left alone, one NaN spreads into every weight and the run ends in nonsense, with exit code 0."""
        values = torch.as_tensor(values).detach()
        bad = ~torch.isfinite(values)
        if bool(bad.any()):
            when = when or f"at step {self.step_count + 1} of {self.cfg.steps}{where}"
            count = f"{int(bad.sum())} of {values.numel()} values are" if values.numel() > 1 else "it is"
            raise TrainingDiverged(f"{self.name} stopped {when}: {name} is not a finite number ({count} NaN or "
                                   f"infinite). {advice}")

    def _check_rollout(self, batch: Batch) -> None:
        """The rollout's numbers must be finite before anything learns from them."""
        bad = (~torch.isfinite(batch.raw_scores)).nonzero().flatten().tolist()
        example = (f" (e.g. for the response {batch.completions[bad[0]][:40]!r} to the prompt "
                   f"{batch.prompts[bad[0]][:40]!r})") if bad else ""
        self._stop_if_not_finite(batch.raw_scores, f"the reward ({self.reward.name}){example}",
                                 "Check the reward function (a division by zero? a log of 0?); "
                                 f"{self.name} cannot learn from such scores.")
        mask = batch.mask.bool()
        self._stop_if_not_finite(batch.logprobs[mask], "the policy's log-probs", BLOW_UP_ADVICE)
        if batch.values is not None:
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
        nearer = ("a larger kl_loss_coef" if cfg.algo == "grpo" else
                  "a larger kl_coef, or the adaptive controller (adaptive_kl)")
        advice = f" To keep it nearer: a lower lr, {nearer}; to allow it: a larger kl_bound."
        if cfg.stop_at_kl_bound:
            raise TrainingDiverged(f"{self.name} stopped at {message}{advice} (stop_at_kl_bound is on; switch it "
                                   "off to only warn.)")
        if not self._kl_warned:
            self._kl_warned = True
            warnings.warn(KLBoundWarning(f"{self.name} {message}{advice} Training goes on (stop_at_kl_bound stops it "
                                         "instead); this warning comes once a run."), stacklevel=4)

    def train(self, steps: int | None = None, callback: Callable[[dict, "PPOTrainer"], None] | None = None,
              progress: bool = True) -> list[dict]:
        """Run updates until `steps` (default cfg.steps) are done, checkpointing every cfg.checkpoint_every.

        callback(metrics, trainer) runs after every update (the notebook's live plot uses it).
        """
        steps = self.cfg.steps if steps is None else steps
        bar = tqdm(total=steps, initial=self.step_count, desc=self.name,
                   disable=not progress or not distributed.is_main())  # one bar under accelerate launch
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
        and then renamed, so a kill during the save leaves the previous checkpoint whole.

        Under accelerate launch every process calls it (each sends its sampling generator's state, so that a
        resumed run draws what the uninterrupted one would); the main process writes."""
        path = Path(path) if path is not None else self.out_dir / CHECKPOINT_DIR
        extra = {}
        if distributed.world_size() > 1:
            extra["rank_rng"] = distributed.gather_object([self.sampling_rng.state])  # one per process
        if not distributed.is_main():
            return path
        with replacing_folder(path) as tmp:
            save_adapter(self.model, POLICY, tmp / "policy")
            if self.value_head is not None:
                save_file({k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()},
                          str(tmp / VALUE_HEAD_FILE))
            write_torch({
                "step": self.step_count,
                "history": self.history,
                "kl_ctl": dict(vars(self.kl_ctl)),
                "score_gain": self.score_gain,
                "score_bias": self.score_bias,
                "score_normalisation_fitted": self.score_normalisation_fitted,
                "optimizer": self.optimizer.state_dict(),
                "rng": rng_states(),
                "config": config_to_dict(self.cfg),
            } | extra, tmp / "trainer_state.pt")
        return path

    def load_checkpoint(self, path: str | Path | None = None) -> bool:
        """Restore a checkpoint written by save_checkpoint; False if there is none."""
        path = saved_folder(Path(path) if path is not None else self.out_dir / CHECKPOINT_DIR, "trainer_state.pt")
        if path is None:
            return False
        with reading_saved(path, "PPO checkpoint"):
            state = torch.load(path / "trainer_state.pt", weights_only=True)  # tensors, numbers, lists, dicts only
        needed = {"step", "history", "kl_ctl", "optimizer", "rng", "config"}
        missing = needed - set(state if isinstance(state, dict) else ())
        if missing:
            raise LabError(f"{path / 'trainer_state.pt'} is not a checkpoint the lab wrote (it has no "
                           f"{', '.join(sorted(missing))}). Delete {path} and run PPO again (without --resume).")
        written_before = {"algo": "ppo", "group_size": None}  # checkpoints from before RLOO and GRPO
        for key in ("algo", "group_size", "batch_size", "minibatch_size", "seed", "max_new_tokens", "reward", "r",
                    "lora_alpha"):
            saved, now = state["config"].get(key, written_before.get(key)), config_to_dict(self.cfg)[key]
            if saved != now:
                raise LabError(f"cannot resume from {path}: it was written with {key}={saved!r}, this run "
                               f"has {key}={now!r}. Use the same settings, or a new output folder.")
        with reading_saved(path, "PPO checkpoint"):
            adapter = load_file(str(path / "policy" / "adapter_model.safetensors"))
            value_head = load_file(str(path / VALUE_HEAD_FILE)) if self.value_head is not None else None
        set_peft_model_state_dict(self.model, adapter, adapter_name=POLICY)
        if self.value_head is not None:
            self.value_head.load_state_dict(value_head)
        self.optimizer.load_state_dict(state["optimizer"])
        for key, value in state["kl_ctl"].items():
            setattr(self.kl_ctl, key, value)
        self.score_gain, self.score_bias = state["score_gain"], state["score_bias"]
        self.score_normalisation_fitted = state["score_normalisation_fitted"]
        self.step_count = state["step"]
        self.history = state["history"]
        set_rng_states(state["rng"])
        rank_rng = state.get("rank_rng")  # written under accelerate launch: each process's sampling generator
        if rank_rng is not None and len(rank_rng) == distributed.world_size():
            self.sampling_rng.state = rank_rng[distributed.rank()]
        if self.out_dir is not None and distributed.is_main():  # metrics.jsonl as it was at the checkpoint
            with open(self.out_dir / METRICS_FILE, "w") as f:
                f.writelines(json.dumps(m) + "\n" for m in self.history)
        return True

    def save(self, out_dir: str | Path | None = None) -> Path:
        """The trained policy adapter in peft format (loadable with PeftModel.from_pretrained on the
        SFT trunk), the value head (ppo), the tokenizer and the resolved config."""
        out_dir = Path(out_dir) if out_dir is not None else self.out_dir
        save_adapter(self.model, POLICY, out_dir)
        if self.value_head is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()},
                      str(out_dir / VALUE_HEAD_FILE))
        self.tokenizer.save_pretrained(out_dir)
        save_config(self.cfg, out_dir / CONFIG_FILE)
        return out_dir


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
    if cfg.reward_model is None:
        from .pipeline import ensure_reward_model
        cfg.reward_model = str(ensure_reward_model())
    return trunk_reward_model(cfg.reward_model, cfg.sft, model, tokenizer, stage=cfg.algo.upper())


def trunk_reward_model(reward_model: str | Path, sft: str | Path, model: PeftModel, tokenizer,
                       stage: str = "PPO") -> TrunkRewardModel:
    """The saved reward model as a Reward on `model`'s trunk (its "reward" adapter goes onto the same
    PeftModel: no second copy of the backbone), once its adapter is known to fit the trunk that merges
    `sft`. stage: the run's name in the message (PPO, RLOO, GRPO, DPO)."""
    from .reward_model import load_reward_model, reward_model_info

    if not reward_fits_sft(reward_model, sft):
        trunk_sft = reward_model_info(reward_model)["trunk"].get("sft_adapter")
        raise LabError(f"The reward model in {reward_model} was trained on the trunk with SFT adapter "
                       f"{trunk_sft!r}, but this {stage} run's trunk merges {sft!r}. Its adapter only fits the "
                       "trunk it was trained on: train it on this SFT model (pipeline.ensure_reward_model) "
                       "or set cfg.sft to that adapter.")
    return TrunkRewardModel(load_reward_model(reward_model, trunk=model, tokenizer=tokenizer))


@dataclass
class PPOResult:
    trainer: PPOTrainer  # holds the model (policy adapter on the shared trunk), value head, reward
    config: PPOConfig
    history: list[dict] = field(default_factory=list)  # one dict of metrics per update
    summary: dict = field(default_factory=dict)  # gold and reward scores of SFT and PPO samples, KL, speed
    samples: list[dict] = field(default_factory=list)  # the evaluation samples of SFT and PPO
    out_dir: Path | None = None


def build_trainer(cfg: PPOConfig, out_dir: str | Path | None = None, resume: bool = False,
                  reward: Reward | None = None, progress: bool = True, start: str = "sft") -> PPOTrainer:
    """The shared trunk (SFT merged), the policy adapter, the reward on the same trunk, and the trainer.

    cfg.sft / cfg.reward_model None: the pipeline's (made quickly if missing). reward: your own Reward
    instead of cfg.reward. out_dir: resume=True continues from its checkpoint; otherwise an earlier
    run's checkpoint and metrics there are cleared.
    start="pretrained": skip SFT (the seed calls it optional): the policy starts from, and its KL is measured
    to, the pretrained model cfg.model; a reward model (cfg.reward "rm") then scores on a trunk of its own
    (SeparateRewardModel), since its adapter fits only the SFT trunk it was trained on.
    """
    from .loading import load_prompts

    start_time = time.time()
    if cfg.sft is None and start == "sft":
        from .pipeline import ensure_sft
        cfg.sft = str(ensure_sft())
    if start not in ("sft", "pretrained"):
        raise LabError(f"start={start!r}: use 'sft' (the SFT model, the default) or 'pretrained' (no SFT).")
    set_seed(cfg.seed)
    if start == "pretrained":
        from .loading import load_model
        from .reward_model import load_reward_model

        trunk, tokenizer = load_model(cfg.model, device=pick_device(cfg.device))
        model = add_policy_adapter(trunk, cfg)
        if reward is None and cfg.reward == "rm":
            if cfg.reward_model is None:
                from .pipeline import ensure_reward_model
                cfg.reward_model = str(ensure_reward_model())
            reward = SeparateRewardModel(load_reward_model(cfg.reward_model, device=pick_device(cfg.device)))
    else:
        trunk, tokenizer = build_trunk(cfg.sft, base=cfg.model, device=pick_device(cfg.device))
        model = add_policy_adapter(trunk, cfg)
    reward = reward if reward is not None else make_reward(cfg, model, tokenizer)
    prompts = load_prompts(cfg.prompts, "train")["prompt"]
    trainer = PPOTrainer(cfg, model, tokenizer, reward, prompts, out_dir)
    if trainer.out_dir is not None:
        trainer.out_dir.mkdir(parents=True, exist_ok=True)
        resumed = resume and trainer.load_checkpoint()
        if not resumed and distributed.is_main():  # a fresh run: no metrics of an earlier one may stay
            (trainer.out_dir / METRICS_FILE).unlink(missing_ok=True)
            shutil.rmtree(trainer.out_dir / CHECKPOINT_DIR, ignore_errors=True)
        if distributed.is_main():
            save_config(cfg, trainer.out_dir / CONFIG_FILE)
        if resumed and progress and distributed.is_main():
            print(f"resumed from {trainer.out_dir / CHECKPOINT_DIR} at step {trainer.step_count} of {cfg.steps}")
        distributed.barrier()  # every process has read the checkpoint before the main one writes the next
    trainer.build_seconds = time.time() - start_time
    return trainer


def run_ppo(trainer: PPOTrainer, callback: Callable[[dict, PPOTrainer], None] | None = None,
            progress: bool = True, evaluate: bool = True) -> PPOResult:
    """Train until cfg.steps, then compare the policy's samples with the SFT model's on held-out prompts,
    and save (policy adapter in peft format, value head, config, metrics.jsonl, ppo_result.json).

    The summary's keys are the same for every cfg.algo: "_ppo" names stage 3's policy (PPO, RLOO or
    GRPO; summary["algo"] says which), "_sft" the SFT model, "kl" the policy samples' KL to it."""
    from .loading import load_prompts

    cfg = trainer.cfg
    start_time = time.time()
    trainer.train(callback=callback, progress=progress)
    result = PPOResult(trainer=trainer, config=cfg, history=trainer.history, out_dir=trainer.out_dir)
    steps_seconds = sum(m["seconds"] for m in trainer.history)
    heads = ([trainer.value_head] if trainer.value_head is not None else []) + (
        [trainer.reward.reward_model.head] if isinstance(trainer.reward, TrunkRewardModel) else [])
    result.summary = {
        "algo": cfg.algo,  # the keys below say "ppo" for the stage's policy whatever the algo
        "samples_per_prompt": cfg.samples_per_prompt,
        "steps": trainer.step_count,
        "episodes": trainer.step_count * cfg.batch_size,
        "episodes_per_second": trainer.step_count * cfg.batch_size / steps_seconds if steps_seconds else float("nan"),
        "train_seconds": time.time() - start_time,  # this session's share when resumed
        "kl_coef_final": trainer.kl_ctl.value,
        "parameter_memory": parameter_memory(trainer.model, heads=heads),
    }
    # the held-out comparison and the files: the main process alone (the others wait at the barrier)
    if evaluate and distributed.is_main():
        eval_prompts = load_prompts(cfg.prompts, "validation", limit=cfg.eval_prompts)["prompt"]
        scores, result.samples = evaluate_policy(trainer, eval_prompts, seed=cfg.seed)
        result.summary |= scores
    result.summary["seconds"] = trainer.build_seconds + time.time() - start_time
    if trainer.out_dir is not None and distributed.is_main():
        trainer.save()
        (trainer.out_dir / RESULT_FILE).write_text(json.dumps(result.summary, indent=2) + "\n")
    distributed.barrier()
    return result


def train_ppo(cfg: PPOConfig, out_dir: str | Path | None = None, resume: bool = False,
              reward: Reward | None = None, callback: Callable[[dict, PPOTrainer], None] | None = None,
              progress: bool = True, evaluate: bool = True) -> PPOResult:
    """The whole stage: build_trainer, then run_ppo. See both for the arguments."""
    return run_ppo(build_trainer(cfg, out_dir, resume, reward, progress), callback, progress, evaluate)


# -----------------------------------------------------------------------------
# comparisons (rlhf_lab/evaluation.py samples and scores; these read a trainer)


_rng_kept = rng_kept  # the name overoptimisation.py and older notebooks import


@torch.no_grad()
def evaluate_adapter(trainer: PPOTrainer, prompts: list[str], adapter: str | None = POLICY, seed: int = 0,
                     name: str = "ppo") -> tuple[dict, list[dict]]:
    """evaluation.evaluate_samples with the trainer's model, reward (normalised as the trainer sees it:
    score_gain and score_bias), sampling settings and batch_size (the chunks of the draws)."""
    cfg = trainer.cfg
    return evaluate_samples(trainer.model, trainer.tokenizer, prompts, adapter, reward=trainer.reward,
                            normalise=lambda raw: trainer.score_gain * raw + trainer.score_bias, seed=seed,
                            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            batch_size=cfg.batch_size, name=name, config="PPOConfig")


@torch.no_grad()
def evaluate_policy(trainer: PPOTrainer, prompts: list[str], seed: int = 0) -> tuple[dict, list[dict]]:
    """Sample the SFT model (the reference) and the trained policy on the same prompts with the same seed.

    Returns (summary, samples): evaluate_adapter's figures for each ("_sft", "_ppo"), "kl" = the
    policy samples' KL to the SFT model (nats per response), and the gold gain in SFT standard deviations.
    """
    cfg = trainer.cfg
    return compare_with_sft(trainer.model, trainer.tokenizer, prompts, POLICY, name="ppo", reward=trainer.reward,
                            normalise=lambda raw: trainer.score_gain * raw + trainer.score_bias, seed=seed,
                            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            batch_size=cfg.batch_size, config="PPOConfig")


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


