"""Stage 2: a reward model learnt from rankings: a GPT-2 trunk with LoRA and a scalar head.

    r(prompt, response) = head(h_last)          h_last: the final hidden state (after ln_f) at the
                                                last real token of prompt + response + EOS
    loss = -log sigmoid(r_chosen - r_rejected)  Bradley-Terry on pairs from rankings
                                                (Ouyang et al. 2022, InstructGPT, eq. 1)

The trunk is the SFT model with its adapter merged (the RM starts from the policy's own
representation; InstructGPT started its RM from the SFT model too). Only a LoRA adapter named
"reward" and the head train, so in stage 3 the policy, the frozen reference and the reward model can
share one backbone: the policy is another adapter on it, the reference is the bare trunk
(`with peft_model.disable_adapter():`), and the reward model activates its own adapter for a call.

    cfg = reward_config(fast=False, sft_adapter="runs/01_sft/adapter")
    result = train_reward_model(cfg, pairs)                      # pairs: prompt, chosen, rejected
    result.reward_model.normalise_on(sft_samples)                # Ziegler et al.: mean 0, std 1
    save_reward_model(result.reward_model, "runs/03_reward_model/reward_model", cfg, result.metrics)
    reward_model = load_reward_model("runs/03_reward_model/reward_model")
    reward_model.score_texts(["The acting was"], [" superb."])   # [normalised score]
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import distributed, tracking
from .config_args import Count, Device, Dropout, Positive, Range, Seed, Whole, check_config
from .gold import gold_score
from .loading import load_model, load_tokenizer
from .ppo_math import last_token_index, pairwise_accuracy, pairwise_loss
from .utils import LabError, autocast, config_to_dict, pick_device, read_json, reading_saved, set_seed

if TYPE_CHECKING:
    import datasets  # pairs arrive as a datasets.Dataset; the module itself needs no import (loading.py says why)

ADAPTER_NAME = "reward"
HEAD_FILE = "reward_head.safetensors"
META_FILE = "reward_model.json"


@dataclass
class RewardConfig:
    """Everything that decides a reward-model run; saved in reward_model.json next to the adapter."""

    trunk: str = "tiny"  # the pretrained model under the SFT adapter: "tiny", "gpt2", or a local folder
    sft_adapter: str | None = None  # the SFT adapter merged into the trunk (None: the bare pretrained
    # model, as in the tests); the RM reads text best with the representation of the policy it judges
    r: Count = 8  # LoRA rank, as for SFT: a 128-dim trunk has little to gain from more
    lora_alpha: Positive = 16.0  # update scale alpha / r = 2, as for SFT
    lora_dropout: Dropout = 0.0  # LoRA's own dropout; the trunk's dropout is set by train_dropout
    train_dropout: bool = True  # the trunk's dropout (0.1) on while training, a regulariser; scoring is always
    # without. Measured on 3 seeds x 1,780 further held-out pairs: 86.0% vs gold off, 87.0% on (with lr 3e-3)
    target_modules: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")  # GPT-2's Conv1D layers, as for SFT
    lr: Positive = 3e-3  # LoRA and a fresh head take a large lr on the 128-dim tiny trunk; with dropout on,
    # 3e-3 and 2e-3 tie on the held-out split (85.9% vs 86.4%, 3 seeds) and 3e-3 leads on the further pairs
    # (87.0% vs 86.5%)
    warmup_steps: Whole = 5  # a short linear warmup, then linear decay to 0
    epochs: Count = 4  # on ~2,000 pairs held-out accuracy still rises to epoch 4, then flattens while the
    # held-out loss rises (overconfidence); InstructGPT's far larger RM overfit after one epoch
    batch_size: Count = 32  # pairs per step, whole rankings at a time (all K(K-1)/2 pairs of a prompt)
    max_length: Annotated[int, Range(2)] = 96  # prompt + response + EOS tokens; the tiny world's stay under ~70
    seed: Seed = 0  # adapter and head init, the eval split and the batch order
    eval_fraction: Annotated[float, Range(0, 1, high_open=True)] = 0.15  # share of prompts held out (whole
    # rankings, so no pair leaks across); 60 of 400 prompts, ~360 pairs: one standard error of an accuracy
    # is then 2-3 points
    eval_every: Count = 25  # steps between held-out measurements (the plotted eval curve; each costs a second)
    device: Device = "auto"  # CUDA, then MPS, then CPU

    def __post_init__(self):
        check_config(self)  # each field within its range: RewardConfig(epochs=-1) is refused here


def reward_config(fast: bool = False, **overrides) -> RewardConfig:
    """The lab's defaults: full mode 4 epochs over the pairs; FAST mode (CI, a quick look: ~60
    rankings) 3 epochs, a few seconds."""
    cfg = RewardConfig(epochs=3, eval_every=5) if fast else RewardConfig()
    for key in overrides:
        if not hasattr(cfg, key):
            raise LabError(f"RewardConfig has no field {key!r}; the fields are {list(config_to_dict(cfg))}.")
    return dataclasses.replace(cfg, **overrides)  # checked again, with the overrides


# -----------------------------------------------------------------------------
# text -> token ids -> a padded batch


def encode(tokenizer, prompt: str, response: str, max_length: int = 96, add_eos: bool = True) -> list[int]:
    """Token ids of prompt + response + EOS, tokenized as the policy produced them: prompt and
    response apart (as sft.build_example and generation do), so stage 3 can score its own ids.

    EOS is appended because the policy's responses end with it: the RM then reads its score at
    the same token for every finished response. Too long: the start is cut (the prompt's first
    tokens), never the response: cutting the end would cut the very text being judged, and would make
    the two responses of a long pair the same token sequence (on HH-RLHF's dialogues, most pairs).
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    ids = prompt_ids + response_ids + ([tokenizer.eos_token_id] if add_eos else [])
    if not ids:
        raise LabError("cannot score an empty text: the prompt and the response are both empty.")
    return ids[-max_length:]


def fit_pairs(pairs, tokenizer, max_length: int, what: str = "pairs", required: bool = True):
    """The pairs the reward model can tell apart at max_length tokens, and a warning that counts the
    others: pairs cut to fit (their prompts lose their start), and pairs whose two texts become the
    same token sequence once cut, which teach nothing and are left out. A LabError if none is left
    and `required`."""
    if len(pairs) == 0:
        return pairs
    cut, same, keep = 0, 0, []
    for i, row in enumerate(pairs):
        chosen = encode(tokenizer, row["prompt"], row["chosen"], max_length=10**9)
        rejected = encode(tokenizer, row["prompt"], row["rejected"], max_length=10**9)
        if max(len(chosen), len(rejected)) > max_length:
            cut += 1
            if chosen[-max_length:] == rejected[-max_length:]:
                same += 1
                continue
        keep.append(i)
    if cut:
        warnings.warn(f"{cut} of {len(pairs)} {what} are longer than max_length={max_length} tokens: their prompts "
                      f"were cut from the start (the responses are kept whole where they fit)"
                      + (f"; {same} of them became the same token sequence on both sides and are left out"
                         if same else "") + ". Raise max_length (up to the model's n_positions) to keep more.",
                      stacklevel=3)
    if not keep and required:
        raise LabError(f"none of the {len(pairs)} {what} can be told apart within max_length={max_length} tokens "
                       "(each pair's two texts are the same once cut). Raise max_length, or use shorter texts.")
    return pairs.select(keep) if len(keep) < len(pairs) else pairs


def pad_batch(sequences: list[list[int]], pad_token_id: int,
              padding_side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (B, T). Padding is known by position (each sequence's
    length), never by comparing ids with pad_token_id: for the hub's GPT-2, pad == EOS."""
    if padding_side not in ("left", "right"):
        raise LabError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
    B, T = len(sequences), max(len(s) for s in sequences)
    input_ids = torch.full((B, T), pad_token_id, dtype=torch.long)    # (B, T)
    attention_mask = torch.zeros((B, T), dtype=torch.long)             # (B, T)
    for i, seq in enumerate(sequences):
        span = slice(0, len(seq)) if padding_side == "right" else slice(T - len(seq), T)
        input_ids[i, span] = torch.tensor(seq, dtype=torch.long)
        attention_mask[i, span] = 1
    return input_ids, attention_mask


# -----------------------------------------------------------------------------
# the model


@contextmanager
def _quiet_peft():
    """peft 0.21 calls a transformers method deprecated in 5.x; the warning is nothing a learner can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def add_reward_adapter(trunk, cfg: RewardConfig, adapter_name: str = ADAPTER_NAME) -> PeftModel:
    """Wrap `trunk` (in place, as peft does) with a fresh LoRA adapter; only the adapter trains."""
    from .sft import lora_adapter
    return lora_adapter(trunk, cfg.target_modules, cfg.r, cfg.lora_alpha, cfg.lora_dropout, adapter_name)


def new_reward_head(n_embd: int) -> torch.nn.Linear:
    """The scalar head, weights ~ N(0, 1/sqrt(n_embd + 1)), bias 0 (Ziegler et al. 2019;
    lm-human-preferences initialises the reward head so)."""
    head = torch.nn.Linear(n_embd, 1)
    torch.nn.init.normal_(head.weight, std=1.0 / math.sqrt(n_embd + 1))
    torch.nn.init.zeros_(head.bias)
    return head


@contextmanager
def using_adapter(peft_model: PeftModel, adapter_name: str):
    """Make `adapter_name` the active adapter for a block, then restore the previous one.

    peft's set_adapter also changes requires_grad (the new adapter trainable, the others frozen);
    that must not leak out of a reward call in the middle of a PPO step, so the flags are restored.
    Called inside the caller's `disable_adapter()` (the reference pass, or sampling the SFT model on the
    shared trunk), the adapter layers are switched back on for the block: the reward model always
    scores with its own adapter, never with the bare trunk.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    previous = peft_model.active_adapter
    disabled = any(m.disable_adapters for m in peft_model.modules() if isinstance(m, BaseTunerLayer))
    if previous == adapter_name and not disabled:
        yield
        return
    flags = [(p, p.requires_grad) for p in peft_model.parameters()]
    if disabled:
        peft_model.base_model.enable_adapter_layers()
    peft_model.set_adapter(adapter_name)
    for p, flag in flags:
        p.requires_grad_(flag)
    try:
        yield
    finally:
        peft_model.set_adapter(previous)
        if disabled:
            peft_model.base_model.disable_adapter_layers()
        for p, flag in flags:
            p.requires_grad_(flag)


class RewardModel(torch.nn.Module):
    """A scalar score for (prompt, response): the trunk with the "reward" adapter, then the head.

    forward gives raw scores; `normalised(raw) = gain * raw + bias`, with gain and bias set by
    `normalise_on` so the SFT model's samples score mean 0, std 1 (Ziegler et al. 2019).
    """

    def __init__(self, peft_model: PeftModel, adapter_name: str = ADAPTER_NAME,
                 head: torch.nn.Linear | None = None, gain: float = 1.0, bias: float = 0.0,
                 tokenizer=None, max_length: int = 96):
        super().__init__()
        if adapter_name not in peft_model.peft_config:
            raise LabError(f"the model has no adapter {adapter_name!r} (it has {list(peft_model.peft_config)}).")
        self.peft_model = peft_model
        self.adapter_name = adapter_name
        n_embd = peft_model.base_model.model.config.n_embd
        self.head = head if head is not None else new_reward_head(n_embd)
        self.gain, self.bias = float(gain), float(bias)
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw scores # (B,), read at the last real token of each row (left or right padding)."""
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)          # (B, T) count real tokens only
        with using_adapter(self.peft_model, self.adapter_name), autocast(input_ids.device):
            # the transformer body only: no (B, T, V) logits are needed
            hidden = self.peft_model.base_model.model.transformer(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            ).last_hidden_state                                               # (B, T, C), after ln_f
        last = last_token_index(attention_mask)                              # (B,)
        h_last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, C)
        return self.head(h_last.to(self.head.weight.dtype)).squeeze(-1)     # (B,)

    def parameter_counts(self) -> dict:
        """Parameters of the trunk (with any other adapters on it), of this adapter, and of the head."""
        adapter = sum(p.numel() for n, p in self.peft_model.named_parameters() if f".{self.adapter_name}." in n)
        total = sum(p.numel() for p in self.peft_model.parameters())
        return {"trunk": total - adapter, "adapter": adapter, "head": sum(p.numel() for p in self.head.parameters())}

    def normalised(self, raw: torch.Tensor | float) -> torch.Tensor | float:
        return self.gain * raw + self.bias

    def encode_batch(self, prompts: list[str], responses: list[str], padding_side: str = "right",
                     add_eos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) on this model's device for prompt + response (+ EOS) texts."""
        if self.tokenizer is None:
            raise LabError("this RewardModel has no tokenizer; pass tokenizer=... when creating it.")
        ids = [encode(self.tokenizer, p, r, self.max_length, add_eos) for p, r in zip(prompts, responses)]
        input_ids, attention_mask = pad_batch(ids, self.tokenizer.pad_token_id, padding_side)
        return input_ids.to(self.device), attention_mask.to(self.device)

    @torch.no_grad()
    def score_texts(self, prompts: list[str], responses: list[str], batch_size: int = 64,
                    normalised: bool = True, add_eos: bool = True) -> list[float]:
        """Scores of (prompt, response) pairs, normalised unless normalised=False; dropout off."""
        if len(prompts) != len(responses):
            raise LabError(f"got {len(prompts)} prompts but {len(responses)} responses; give one each.")
        # dropout off for scoring (Ziegler et al. 2019); each module's mode is restored afterwards,
        # because in stage 3 the trunk is shared with the policy
        modes = [(module, module.training) for module in self.modules()]
        self.eval()
        scores = []
        try:
            for start in range(0, len(prompts), batch_size):
                batch = self.encode_batch(prompts[start:start + batch_size], responses[start:start + batch_size],
                                          add_eos=add_eos)
                raw = self(*batch)                                           # (B,)
                scores.extend((self.normalised(raw) if normalised else raw).float().cpu().tolist())
        finally:
            for module, mode in modes:
                module.training = mode
        return scores

    def normalise_on(self, samples: list[dict], batch_size: int = 64) -> dict:
        """Set gain and bias so these samples (the SFT model's: dicts with prompt and completion or
        response) score mean 0 and std 1 (Ziegler et al. 2019, section 2.2). Returns the numbers."""
        if len(samples) < 2:
            raise LabError("normalise_on needs at least 2 samples (a standard deviation of one is 0).")
        prompts = [s["prompt"] for s in samples]
        responses = [s["completion"] if "completion" in s else s["response"] for s in samples]
        raw = torch.tensor(self.score_texts(prompts, responses, batch_size, normalised=False))
        if not bool(torch.isfinite(raw).all()):  # else "the same score" below would say the wrong thing
            raise LabError(f"{int((~torch.isfinite(raw)).sum())} of {len(raw)} samples got a score that is NaN or "
                           "infinite: the reward model's weights are broken (a training run that blew up, or a "
                           "damaged file). Train it again, with a lower lr.")
        mean, std = raw.mean().item(), raw.std().item()
        if not std > 1e-8:
            raise LabError("every sample got the same raw score, so there is no spread to normalise; "
                           "is the reward model trained, and are the samples different?")
        self.gain, self.bias = 1.0 / std, -mean / std
        return {"raw_mean": mean, "raw_std": std, "gain": self.gain, "bias": self.bias, "n": len(samples)}


# -----------------------------------------------------------------------------
# pairs: the held-out split, gold labels, evaluation


def split_by_prompt(pairs: datasets.Dataset, eval_fraction: float,
                    seed: int = 0) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, eval) with whole prompts held out: pairs of one ranking share texts, so splitting
    them apart would let the eval set peek at texts the model trained on."""
    prompts = list(dict.fromkeys(pairs["prompt"]))
    random.Random(seed).shuffle(prompts)
    n_eval = round(eval_fraction * len(prompts))
    if eval_fraction > 0 and n_eval == 0 and len(prompts) > 1:
        n_eval = 1
    held_out = set(prompts[:n_eval])
    is_eval = [p in held_out for p in pairs["prompt"]]
    train = pairs.select([i for i, e in enumerate(is_eval) if not e])
    eval = pairs.select([i for i, e in enumerate(is_eval) if e])
    return train, eval


def gold_order(pairs) -> list[int]:
    """For each pair, +1 if the gold labeler prefers chosen, -1 if it prefers rejected, 0 on a tie.

    The annotators ranked prompt + completion, so gold scores the same texts.
    """
    order = []
    for row in pairs:
        diff = gold_score(row["prompt"] + row["chosen"]) - gold_score(row["prompt"] + row["rejected"])
        order.append(0 if abs(diff) < 1e-9 else (1 if diff > 0 else -1))
    return order


def _unique_texts(pairs) -> tuple[list[tuple[str, str]], list[int], list[int]]:
    """Each distinct (prompt, response) once, and for every pair the indices of its two texts."""
    index: dict[tuple[str, str], int] = {}
    chosen_idx, rejected_idx = [], []
    for row in pairs:
        for text, out in ((row["chosen"], chosen_idx), (row["rejected"], rejected_idx)):
            key = (row["prompt"], text)
            out.append(index.setdefault(key, len(index)))
    return list(index), chosen_idx, rejected_idx


@torch.no_grad()
def pair_rewards(reward_model: RewardModel, pairs, normalised: bool = False,
                 batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) scores # (N,), (N,) for every pair; each distinct text is scored once."""
    texts, chosen_idx, rejected_idx = _unique_texts(pairs)
    scores = torch.tensor(reward_model.score_texts([p for p, _ in texts], [r for _, r in texts],
                                                   batch_size, normalised=normalised))
    return scores[chosen_idx], scores[rejected_idx]


def evaluate_pairs(reward_model: RewardModel, pairs, gold: list[int] | None = None) -> dict:
    """Loss, pairwise accuracy and mean margin against the pairs' labels, and accuracy against the
    gold labeler on the pairs it does not tie (the annotators are noisy; gold is the truth)."""
    chosen, rejected = pair_rewards(reward_model, pairs)                     # (N,), (N,)
    gold = gold if gold is not None else gold_order(pairs)
    sign = torch.tensor(gold, dtype=torch.float32)                          # (N,) +1, -1 or 0
    untied = sign != 0
    margin = chosen - rejected                                              # (N,)
    return {
        "loss": pairwise_loss(chosen, rejected).item(),
        "accuracy": pairwise_accuracy(chosen, rejected).item(),  # against the annotators' labels
        "margin": margin.mean().item(),  # raw reward units
        "gold_accuracy": ((margin * sign)[untied] > 0).float().mean().item() if untied.any() else float("nan"),
        "label_gold_agreement": (sign[untied] > 0).float().mean().item() if untied.any() else float("nan"),
        "n_pairs": len(chosen),
        "n_gold_pairs": int(untied.sum()),
    }


def accuracy_by_gold_margin(reward_model: RewardModel, pairs, edges=(0.0, 0.25, 0.5, 1.0, float("inf"))) -> list[dict]:
    """Accuracy against gold in bins of |gold(chosen) - gold(rejected)|: near-ties are where the
    annotators' labels are noisy and the reward model is least sure."""
    chosen, rejected = pair_rewards(reward_model, pairs)                     # (N,), (N,)
    diffs = [gold_score(r["prompt"] + r["chosen"]) - gold_score(r["prompt"] + r["rejected"]) for r in pairs]
    rows = []
    for lo, hi in zip(edges, edges[1:]):
        inside = [i for i, d in enumerate(diffs) if d != 0 and lo <= abs(d) < hi]
        right = sum(float((chosen[i] - rejected[i]) * diffs[i]) > 0 for i in inside)
        label = f"{lo:g} to {hi:g}" if math.isfinite(hi) else f"{lo:g} or more"
        rows.append({"gold margin": label, "pairs": len(inside),
                     "accuracy vs gold": right / len(inside) if inside else float("nan")})
    return rows


def truncate_trunk(model, n_layer: int):
    """A copy of a GPT-2 with only its first n_layer blocks (and its own ln_f): a smaller trunk
    that starts from the same pretrained weights, for comparing reward-model sizes."""
    if not 1 <= n_layer <= model.config.n_layer:
        raise LabError(f"n_layer must be between 1 and {model.config.n_layer}, got {n_layer}.")
    small = copy.deepcopy(model)
    small.transformer.h = small.transformer.h[:n_layer]
    small.config.n_layer = n_layer
    return small


def random_trunk(model, seed: int = 0):
    """A GPT-2 of the same shape as `model` with freshly initialised weights (transformers' own init,
    seeded): the "random initialisation" a reward model can start from instead of a pretrained trunk."""
    torch.manual_seed(seed)
    fresh = type(model)(copy.deepcopy(model.config))
    return fresh.to(next(model.parameters()).device).eval()


def gold_pairs(items: list[dict]):
    """Every pair of a prompt's completions that the gold labeler does not tie, chosen = gold's preference:
    held-out pairs whose labels are the truth, not a noisy annotator's. items: [{"prompt", "completions"}]
    (pipeline.sample_items)."""
    import datasets  # here, not at the top: see the imports above

    rows = []
    for item in items:
        scored = [(gold_score(item["prompt"] + c), c) for c in item["completions"]]
        for i in range(len(scored)):
            for j in range(i + 1, len(scored)):
                (a, text_a), (b, text_b) = scored[i], scored[j]
                if abs(a - b) > 1e-9 and text_a != text_b:
                    chosen, rejected = (text_a, text_b) if a > b else (text_b, text_a)
                    rows.append({"prompt": item["prompt"], "chosen": chosen, "rejected": rejected})
    return datasets.Dataset.from_list(rows)


def size_study(cfg: RewardConfig, train_pairs, eval_pairs, trunk, tokenizer, layers=(1, 2, 4), seeds=(0, 1, 2),
               random_init: bool = True, others: dict | None = None, progress: bool = True) -> list[dict]:
    """Reward models of several trunk depths (the first n blocks of the pretrained trunk, truncate_trunk) and,
    with random_init, one of the full depth from random weights, each trained on the same pairs with every seed
    and measured against gold on eval_pairs (gold_pairs: enough of them that the seeds' spread, not one run's
    luck, decides). others: more trunks to train on, {init label: [model, ...]}, e.g. {"pretrained, no SFT":
    [the 4-layer tiny GPT-2, an 8-layer one]}: a reward model larger than the policy needs a larger pretrained
    trunk, which truncating cannot make. Every trunk must use `tokenizer`. Rows: init, layers, parameters,
    seed, gold accuracy, seconds."""
    runs = [("pretrained", n, None) for n in layers] + ([("random", max(layers), None)] if random_init else [])
    for init, models in (others or {}).items():
        for model in models:
            if model.config.vocab_size < len(tokenizer):
                raise LabError(f"The {init!r} trunk of {model.config.n_layer} layers has a vocabulary of "
                               f"{model.config.vocab_size}, smaller than the tokenizer's {len(tokenizer)}: "
                               "pretrain it on the same corpus (python -m rlhf_lab.pretrain --n-layer N).")
            runs.append((init, model.config.n_layer, model))
    rows = []
    bar = tqdm(total=len(runs) * len(seeds), desc="reward models", disable=not progress)
    for init, n_layer, model in runs:
        for seed in seeds:
            if model is not None:
                start = copy.deepcopy(model)
            elif init == "pretrained":
                start = truncate_trunk(trunk, n_layer)
            else:
                start = truncate_trunk(random_trunk(trunk, seed), n_layer)
            result = train_reward_model(dataclasses.replace(cfg, seed=seed), train_pairs, trunk=start, tokenizer=tokenizer,
                                        eval_pairs=eval_pairs, progress=False)
            trunk_parameters = sum(p.numel() for p in start.parameters())
            rows.append({"init": init, "layers": n_layer, "trunk parameters": trunk_parameters, "seed": seed,
                         "gold_accuracy": result.metrics["gold_accuracy"], "eval_pairs": result.metrics["n_gold_pairs"],
                         "seconds": result.seconds})
            bar.update()
    bar.close()
    return rows


# -----------------------------------------------------------------------------
# training


@dataclass
class RewardResult:
    reward_model: RewardModel  # trunk + trained "reward" adapter + head, in eval mode
    tokenizer: object
    config: RewardConfig
    train_pairs: datasets.Dataset
    eval_pairs: datasets.Dataset
    history: list[dict] = field(default_factory=list)  # per step: loss, accuracy, margin; eval_* every eval_every
    metrics: dict = field(default_factory=dict)  # the held-out evaluate_pairs at the end, and seconds
    seconds: float = 0.0


def build_trunk(model: str = "tiny", sft_adapter: str | None = None, device="auto"):
    """(trunk, tokenizer): the pretrained model with the SFT adapter merged in, or the bare model."""
    if sft_adapter is None:
        return load_model(model, device=device)
    from .sft import load_sft, merge_adapter

    policy, tokenizer = load_sft(sft_adapter, device=device, base=model)
    return merge_adapter(policy), tokenizer


def _batches_of_rankings(pairs, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Row indices in batches of whole prompts (all pairs of a ranking together), in shuffled order.

    InstructGPT put all K(K-1)/2 comparisons of a prompt in one batch element: each text is then
    scored once per step, and the correlated pairs of one ranking do not spread over the epoch
    (Ouyang et al. 2022, section 3.5).
    """
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(pairs["prompt"]):
        groups.setdefault(prompt, []).append(i)
    groups_list = list(groups.values())
    order = torch.randperm(len(groups_list), generator=generator).tolist()
    batches, current = [], []
    for g in order:
        current.extend(groups_list[g])
        if len(current) >= batch_size:
            batches.append(current)
            current = []
    if current:
        batches.append(current)
    return batches


def train_reward_model(cfg: RewardConfig, pairs: datasets.Dataset, trunk=None, tokenizer=None,
                       eval_pairs: datasets.Dataset | None = None, progress: bool = True,
                       copy_trunk: bool = True) -> RewardResult:
    """Train the "reward" adapter and the head on (prompt, chosen, rejected) pairs.

    trunk/tokenizer: a loaded model to build on (copied, never changed); None builds the trunk from
    cfg.trunk and cfg.sft_adapter. copy_trunk=False: wrap `trunk` itself (in place, as peft does) instead
    of a copy, so that the stage holds one copy of the backbone, as stage 3 does (the pipeline's rm stage);
    the caller must not use it as a plain model afterwards. eval_pairs: held-out pairs; None holds out
    cfg.eval_fraction of the prompts of `pairs`.
    """
    start_time = time.time()
    check_config(cfg)  # again: a field may have been set after the config was made
    missing = {"prompt", "chosen", "rejected"} - set(pairs.column_names)
    if missing:
        raise LabError(f"the pairs lack the columns {sorted(missing)}; build them with "
                       "rankings.rankings_to_pairs or preferences.load_preferences.")
    set_seed(cfg.seed)
    device = pick_device(cfg.device)
    if trunk is None:
        trunk, tokenizer = build_trunk(cfg.trunk, cfg.sft_adapter, device=device)
    else:
        trunk = copy.deepcopy(trunk).to(device) if copy_trunk else trunk.to(device)
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.trunk)
    from .sft import check_max_length, stop_if_diverged

    check_max_length(trunk, cfg)
    if eval_pairs is None:
        train, eval = split_by_prompt(pairs, cfg.eval_fraction, cfg.seed)
    else:
        train, eval = pairs, eval_pairs
    train = fit_pairs(train, tokenizer, cfg.max_length, "training pairs")
    eval = fit_pairs(eval, tokenizer, cfg.max_length, "held-out pairs", required=False)
    if len(train) == 0:
        raise LabError(f"no training pairs left (got {len(pairs)} pairs, eval_fraction={cfg.eval_fraction}); "
                       "rank more samples, or lower eval_fraction.")

    peft_model = add_reward_adapter(trunk, cfg)
    reward_model = RewardModel(peft_model, ADAPTER_NAME, new_reward_head(trunk.config.n_embd).to(device),
                               tokenizer=tokenizer, max_length=cfg.max_length)
    eval_gold = gold_order(eval) if len(eval) else []

    # every distinct text tokenized once
    texts, chosen_idx, rejected_idx = _unique_texts(train)
    ids = [encode(tokenizer, p, r, cfg.max_length) for p, r in texts]

    params = [p for p in reward_model.parameters() if p.requires_grad]  # the adapter and the head
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(cfg.seed)
    epochs = [_batches_of_rankings(train, cfg.batch_size, generator) for _ in range(cfg.epochs)]
    total_steps = sum(len(batches) for batches in epochs)

    def lr_at(step: int) -> float:  # linear warmup, then linear decay to 0
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        return cfg.lr * max(0.0, (total_steps - step) / max(1, total_steps - cfg.warmup_steps))

    def evaluate(step: int) -> dict:
        metrics = evaluate_pairs(reward_model, eval, eval_gold)
        return {"step": step} | {f"eval_{k}": v for k, v in metrics.items() if not k.startswith("n_")}

    history = [evaluate(0)] if len(eval) else []
    for record in history:
        tracking.log("rm", record, 0)

    def training_mode() -> None:
        """The RM scores with dropout off (Ziegler et al. 2019); in training the trunk's dropout acts
        only with cfg.train_dropout, LoRA's only with cfg.lora_dropout > 0."""
        reward_model.train(cfg.train_dropout)
        if cfg.lora_dropout > 0:
            for name, module in reward_model.named_modules():
                if name.endswith(f"lora_dropout.{ADAPTER_NAME}"):
                    module.train()

    # under accelerate launch each process takes its slice of every batch's pairs and DDP all-reduces the
    # gradients of the adapter and the head (distributed.py); one process: ddp is None, nothing changes
    ddp = distributed.prepare(reward_model)
    training_mode()
    step = 0
    bar = tqdm(total=total_steps, desc="reward model", disable=not progress or not distributed.is_main())
    for batches in epochs:
        for rows in batches:
            mine, weight = rows, 1.0  # this process's pairs, and their share of the batch's
            if ddp is not None:
                mine = distributed.shard(rows)
                weight = len(mine) / len(rows)
                mine = mine or rows[:1]  # fewer pairs than processes: a pass that adds nothing (weight 0)
            # score each distinct text of the batch once, then pick the two of each pair
            needed = sorted({chosen_idx[i] for i in mine} | {rejected_idx[i] for i in mine})
            where = {t: n for n, t in enumerate(needed)}
            input_ids, attention_mask = pad_batch([ids[t] for t in needed], tokenizer.pad_token_id)
            scores = (ddp if ddp is not None else reward_model)(input_ids.to(device),
                                                                attention_mask.to(device))  # (U,) distinct texts
            chosen = scores[[where[chosen_idx[i]] for i in mine]]                   # (N,)
            rejected = scores[[where[rejected_idx[i]] for i in mine]]               # (N,)
            loss = pairwise_loss(chosen, rejected)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            optimizer.zero_grad(set_to_none=True)
            if ddp is None:
                loss.backward()
            else:  # the slice's mean, weighted by its share of the pairs (DDP averages over the processes)
                distributed.backward(loss * distributed.share(weight, 1.0), ddp)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            stop_if_diverged("The reward model", step + 1, total_steps, loss=loss, grad_norm=grad_norm,
                             advice="try a lower lr (--rm-lr).")
            optimizer.step()
            step += 1
            record = {"step": step, "loss": loss.item(), "accuracy": pairwise_accuracy(chosen, rejected).item(),
                      "margin": (chosen - rejected).mean().item()}
            if ddp is not None:  # the batch's means: each process's share, summed
                record |= distributed.reduce_metrics({k: record[k] * weight for k in ("loss", "accuracy", "margin")})
            if len(eval) and (step % cfg.eval_every == 0 or step == total_steps):
                record |= evaluate(step)  # scores in eval mode, then restores each module's mode
                bar.set_postfix(loss=f"{record['loss']:.3f}", eval_acc=f"{record['eval_accuracy']:.2f}",
                                gold_acc=f"{record['eval_gold_accuracy']:.2f}")
            history.append(record)
            tracking.log("rm", record, step)
            bar.update(1)
    bar.close()
    reward_model.eval()
    seconds = time.time() - start_time
    metrics = (evaluate_pairs(reward_model, eval, eval_gold) if len(eval) else {})
    metrics |= {"train_pairs": len(train), "eval_pairs": len(eval), "steps": step, "seconds": seconds}
    return RewardResult(reward_model=reward_model, tokenizer=tokenizer, config=cfg, train_pairs=train,
                        eval_pairs=eval, history=history, metrics=metrics, seconds=seconds)


# -----------------------------------------------------------------------------
# saving and loading


def save_reward_model(reward_model: RewardModel, path: str | Path, config: RewardConfig | None = None,
                      metrics: dict | None = None) -> Path:
    """The adapter in peft format (adapter_config.json, adapter_model.safetensors), the head
    (reward_head.safetensors), the tokenizer, and reward_model.json: gain, bias, the trunk to load
    it on, the resolved config and the metrics."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        reward_model.peft_model.save_pretrained(tmp, selected_adapters=[reward_model.adapter_name],
                                                save_embedding_layers=False)  # as sft.save_sft says
        # peft saves an adapter not named "default" in a subfolder of its name; we want it at the top
        saved = Path(tmp) / reward_model.adapter_name
        saved = saved if saved.is_dir() else Path(tmp)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(saved / name, path / name)
    from .sft import adapter_fingerprint

    head = {k: v.detach().cpu().contiguous() for k, v in reward_model.head.state_dict().items()}
    save_file(head, str(path / HEAD_FILE))
    if reward_model.tokenizer is not None:
        reward_model.tokenizer.save_pretrained(path)
    config = config if config is not None else RewardConfig()
    meta = {
        "gain": reward_model.gain,
        "bias": reward_model.bias,
        "trunk": {"model": config.trunk, "sft_adapter": config.sft_adapter,
                  "sft_fingerprint": adapter_fingerprint(config.sft_adapter)},
        "adapter_name": reward_model.adapter_name,
        "max_length": reward_model.max_length,
        "config": config_to_dict(config),
        "metrics": metrics or {},
    }
    (path / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_reward_model(path: str | Path, trunk=None, device="auto", tokenizer=None) -> RewardModel:
    """A saved reward model, in eval mode.

    trunk: None builds the trunk that reward_model.json names (the pretrained model with the SFT
    adapter merged). A PeftModel that already holds other adapters (stage 3's shared trunk: the
    policy's adapter on the merged SFT model) gets the "reward" adapter loaded into it, so no
    second copy of the backbone exists. A plain transformers model is wrapped in place.
    """
    path = Path(path)
    for name in (META_FILE, HEAD_FILE, "adapter_config.json"):
        if not (path / name).is_file():
            raise LabError(f"{path} is not a saved reward model ({name} is missing). Train one in "
                           "notebooks/03_reward_model.ipynb, or with rlhf_lab.pipeline.ensure_reward_model().")
    meta = read_json(path / META_FILE, "reward model's record")
    adapter_name = meta.get("adapter_name", ADAPTER_NAME)
    if tokenizer is None:
        tokenizer = load_tokenizer(path)
    if isinstance(trunk, PeftModel):
        if adapter_name in trunk.peft_config:
            raise LabError(f"the trunk already has an adapter named {adapter_name!r}; delete it first "
                           f"(trunk.delete_adapter({adapter_name!r})) or load on a fresh trunk.")
        with _quiet_peft(), reading_saved(path, "reward model's adapter"):
            trunk.load_adapter(str(path), adapter_name=adapter_name)  # frozen, not made active
        peft_model = trunk
    else:
        if trunk is None:
            trunk, _ = build_trunk(meta["trunk"]["model"], meta["trunk"]["sft_adapter"], device=device)
        with _quiet_peft(), reading_saved(path, "reward model's adapter"):
            peft_model = PeftModel.from_pretrained(trunk, str(path), adapter_name=adapter_name)
    model_device = next(peft_model.parameters()).device
    head = torch.nn.Linear(peft_model.base_model.model.config.n_embd, 1)
    with reading_saved(path / HEAD_FILE, "reward head"):
        head.load_state_dict(load_file(str(path / HEAD_FILE)))
    head.requires_grad_(False)
    reward_model = RewardModel(peft_model, adapter_name, head.to(model_device), gain=meta["gain"],
                               bias=meta["bias"], tokenizer=tokenizer, max_length=meta.get("max_length", 96))
    reward_model.eval()
    return reward_model


def reward_model_info(path: str | Path) -> dict:
    """What reward_model.json says: gain, bias, trunk, config and metrics."""
    return read_json(Path(path) / META_FILE, "reward model's record")


# -----------------------------------------------------------------------------
# figures


def plot_history(history: list[dict]):
    """Loss and accuracy per step (train, smoothed) with the held-out curves and gold accuracy."""
    import matplotlib.pyplot as plt

    train = [h for h in history if "loss" in h]
    evals = [h for h in history if "eval_loss" in h]

    def smooth(values, n=10):
        return [sum(values[max(0, i - n + 1):i + 1]) / len(values[max(0, i - n + 1):i + 1]) for i in range(len(values))]

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.6))
    steps = [h["step"] for h in train]
    ax_loss.plot(steps, smooth([h["loss"] for h in train]), label="train (10-step mean)")
    ax_acc.plot(steps, smooth([h["accuracy"] for h in train]), label="train (10-step mean)")
    if evals:
        eval_steps = [h["step"] for h in evals]
        ax_loss.plot(eval_steps, [h["eval_loss"] for h in evals], "o-", label="held out")
        ax_acc.plot(eval_steps, [h["eval_accuracy"] for h in evals], "o-", label="held out vs annotators")
        ax_acc.plot(eval_steps, [h["eval_gold_accuracy"] for h in evals], "s-", label="held out vs gold")
    ax_loss.axhline(math.log(2), color="#999", linestyle=":", label="log 2 (chance)")
    ax_acc.axhline(0.5, color="#999", linestyle=":", label="chance")
    ax_loss.set(xlabel="step", ylabel="-log sigmoid(r_chosen - r_rejected)", title="Bradley-Terry loss")
    ax_acc.set(xlabel="step", ylabel="share of pairs ordered right", title="pairwise accuracy", ylim=(0.3, 1.02))
    ax_loss.legend(fontsize=8)
    ax_acc.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
