"""Stage 1: supervised fine-tuning (SFT) of a causal LM on demonstrations, with LoRA.

A demonstration is a (prompt, completion) pair. We train on prompt + completion + EOS with the
next-token cross-entropy, counting only the completion's tokens (the prompt is given, not written),
and train only low-rank adapters (LoRA, Hu et al. 2021): W x + (alpha / r) B A x, with A (r, d_in)
and B (d_out, r) trainable, B = 0 at the start so the adapted model begins as the pretrained one.

    cfg = sft_config(fast=False)
    result = train_sft(cfg, out_dir="runs/01_sft/adapter")
    policy, tokenizer = load_sft("runs/01_sft/adapter")   # base + adapter, for the next stages
    merged = merge_adapter(policy)                         # or one plain model
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import html
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from . import distributed, tracking
from .config_args import Count, Device, Dropout, Positive, Range, Seed, Whole, check_config
from .loading import load_model, load_tokenizer

if TYPE_CHECKING:
    import datasets  # imported where demonstrations are loaded (loading.py says why)
from .utils import (ConfigError, LabError, TrainingDiverged, autocast, config_to_dict, pick_device, read_json,
                    reading_saved, run_dir, save_config, set_seed)

IGNORE_INDEX = -100  # label of tokens the loss skips (prompt, padding): PyTorch's and HF's convention
N_TRAIN_MAX = 2_000  # demonstrations SFT trains on when n_train is None: all of the tiny world's; of IMDB's 25,000
# reviews a seeded 2,000, as many as the later stages need (InstructGPT's SFT set was ~13k prompts for 175B)
N_EVAL_MAX = 200  # held-out demonstrations when n_eval is None: all of the tiny world's; the eval loss is
# measured ~10 times a run, and IMDB's whole test split (25,000) made it ~94% of a hub run's FLOPs (issue 13)
LOGITS_PER_PASS = 2**25  # (B, T, V) logit entries one evaluation pass may hold, 128 MiB in fp32: the tiny world's
# 2,858-token vocabulary passes a whole batch of 64 at once, GPT-2's 50,257 at 96 tokens 6 rows (64 took ~3 GB)
CONFIG_FILE = "sft_config.json"
RESULT_FILE = "sft_result.json"


@dataclass
class SFTConfig:
    """Everything that decides an SFT run; saved as JSON next to the adapter."""

    model: str = "tiny"  # the pretrained model: "tiny" (offline), "gpt2", or a local folder
    data: str = "tiny"  # demonstrations: "tiny" (data/demonstrations), "stanfordnlp/imdb", a file
    n_train: Count | None = None  # use N training demonstrations (None: N_TRAIN_MAX = 2,000, all of the tiny
    # world's; hub and local data are taken in a seeded order, so N is a fair sample of a sorted file)
    n_eval: Count | None = None  # held-out demonstrations for the eval loss (None: N_EVAL_MAX = 200, all of the
    # tiny world's)
    r: Count = 8  # LoRA rank: a common default; Hu et al. 2021 found ranks as small as 1-8 enough on GPT-3
    lora_alpha: Positive = 16.0  # the update is scaled by alpha / r = 2; the 1/r spares retuning lr when r
    # changes (Hu et al. 2021, section 4.1)
    lora_dropout: Dropout = 0.0  # 2,000 short demonstrations for 2 epochs do not overfit; 0 = deterministic
    target_modules: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")  # GPT-2's Conv1D layers: attention
    # (q, k, v and output) and MLP; adapting the MLP too helps a tiny model learn a new style.
    lr: Positive = 2e-3  # LoRA takes a larger lr than full fine-tuning; 2e-3 suits a 128-dim model
    warmup_steps: Whole = 10  # a short linear warmup, then linear decay to 0 (as HF Trainer's default)
    epochs: Count = 2  # two passes over 2,000 demonstrations: the eval loss has flattened by then
    batch_size: Count = 16  # demonstrations per step; 125 steps per epoch on the tiny world
    max_length: Annotated[int, Range(2)] = 96  # prompt + completion + EOS tokens: the tiny world's take at
    # most ~35, IMDB cuts of 30 words about 45 GPT-2 tokens; at most the model's positions (n_positions)
    completion_only: bool = True  # loss on completion tokens only (the prompt is given, not written)
    seed: Seed = 0  # LoRA init and batch order: same seed, same adapter
    eval_every: Count = 25  # steps between eval-loss measurements (the plotted curve)
    device: Device = "auto"  # CUDA, then MPS, then CPU

    def __post_init__(self):
        check_config(self)  # each field within its range: SFTConfig(lr=0) is refused here


def sft_config(fast: bool = False, **overrides) -> SFTConfig:
    """The lab's defaults. Full mode: 2 epochs over 2,000 demonstrations (250 steps). FAST mode (CI, a
    quick look): 1 epoch over 480 (30 steps) with twice the lr and half the warmup, which reaches most
    of the full run's drop in eval loss in a fifth of the time."""
    if fast:
        cfg = SFTConfig(n_train=480, n_eval=100, epochs=1, lr=4e-3, warmup_steps=5, eval_every=5)
    else:
        cfg = SFTConfig()
    for key in overrides:
        if not hasattr(cfg, key):
            raise LabError(f"SFTConfig has no field {key!r}; the fields are {list(config_to_dict(cfg))}.")
    return dataclasses.replace(cfg, **overrides)  # checked again, with the overrides


# -----------------------------------------------------------------------------
# data: one example, a batch, the loss


def build_example(tokenizer, prompt: str, completion: str, max_length: int = 96,
                  completion_only: bool = True) -> dict:
    """{"input_ids", "labels"}: prompt + completion + EOS as token ids, and what the loss predicts.

    EOS closes every completion so the model learns to stop. With completion_only, prompt tokens get
    label IGNORE_INDEX. Too long: the completion is cut at the end, EOS included (a cut text did not
    end, so it must not teach ending); a prompt longer than max_length keeps its last tokens.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt_ids) >= max_length:
        prompt_ids = prompt_ids[-(max_length // 2):]
    completion_ids = completion_ids[: max_length - len(prompt_ids)]
    input_ids = prompt_ids + completion_ids
    if completion_only:
        labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    else:
        labels = list(input_ids)
    return {"input_ids": input_ids, "labels": labels}


def collate(examples: list[dict], tokenizer, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad a list of build_example dicts into tensors: input_ids, attention_mask, position_ids, labels.

    Padding is known by position (each example's length), never by comparing ids with pad_token_id:
    for the hub's GPT-2, pad == EOS and the real EOS must keep its label. Position ids count real
    tokens only (mask.cumsum(-1) - 1), so a left-padded example sees the same positions as a
    right-padded one.
    """
    if padding_side not in ("left", "right"):
        raise LabError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
    T = max(len(e["input_ids"]) for e in examples)
    B = len(examples)
    input_ids = torch.full((B, T), tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)                 # (B, T)
    attention_mask = torch.zeros((B, T), dtype=torch.long)                      # (B, T)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        span = slice(0, n) if padding_side == "right" else slice(T - n, T)
        input_ids[i, span] = torch.tensor(e["input_ids"])
        labels[i, span] = torch.tensor(e["labels"])
        attention_mask[i, span] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)                 # (B, T)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
            "labels": labels}


def completion_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy over the tokens whose label is not IGNORE_INDEX.

    logits (B, T, V) at position t predict token t + 1, so logits[:, :-1] meet labels[:, 1:].
    reduction: "mean" over all counted tokens of the batch (the training loss), "per_example" (B,)
    mean over each example's tokens, "sum" of all token losses.
    """
    logits = logits[:, :-1]                      # (B, T-1, V)
    targets = labels[:, 1:]                      # (B, T-1)
    mask = targets != IGNORE_INDEX               # (B, T-1)
    token_loss = torch.zeros(targets.shape, dtype=torch.float32, device=logits.device)  # (B, T-1)
    # only the counted positions enter cross_entropy: logits at padding may be anything, even NaN
    token_loss[mask] = F.cross_entropy(logits[mask].float(), targets[mask], reduction="none")
    if reduction == "mean":
        return token_loss.sum() / mask.sum().clamp(min=1)
    if reduction == "per_example":
        return token_loss.sum(-1) / mask.sum(-1).clamp(min=1)  # (B,)
    if reduction == "sum":
        return token_loss.sum()
    raise LabError(f"reduction must be 'mean', 'per_example' or 'sum', got {reduction!r}.")


def forward_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, T, V) logits of a collated batch, with its attention mask and position ids."""
    device = next(model.parameters()).device
    with autocast(device):  # bf16 on a GPU that has it (utils.autocast); completion_loss upcasts
        out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                    position_ids=batch["position_ids"].to(device))
    return out.logits


def stop_if_diverged(stage: str, step: int, total: int, advice: str, **values) -> None:
    """Stop a training loop before its optimizer step if the loss or the gradient is NaN or infinite:
    one such step makes every trained weight NaN, and the run would go on to save nonsense."""
    for name, value in values.items():
        value = value.detach()
        if not bool(torch.isfinite(value).all()):
            what = {"loss": "the loss", "grad_norm": "the gradient norm"}.get(name, name)
            raise TrainingDiverged(f"{stage} stopped at step {step} of {total}: {what} is {float(value):g}, not a "
                                   f"finite number, so the weights would turn to NaN; {advice}")


def check_max_length(model, cfg) -> None:
    """Refuse a cfg.max_length beyond the model's positions (n_positions) before any training: past
    them the position embedding has no row and the forward pass fails deep inside with an IndexError."""
    from .generation import model_positions

    n_positions = model_positions(model)
    if n_positions is not None and cfg.max_length > n_positions:
        raise ConfigError(f"max_length={cfg.max_length} is more than the model's {n_positions} positions "
                          f"(n_positions); set it to {n_positions} or less.", type(cfg).__name__, ("max_length",))


def tokenize_demonstrations(dataset, tokenizer, cfg: SFTConfig) -> list[dict]:
    """build_example for every row of a dataset (or list of dicts) with prompt and completion."""
    return [build_example(tokenizer, row["prompt"], row["completion"], cfg.max_length, cfg.completion_only)
            for row in dataset]


# -----------------------------------------------------------------------------
# LoRA


@contextlib.contextmanager
def _quiet_peft():
    """peft 0.21 asks transformers 5 for a renamed property; the FutureWarning is theirs, not ours."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def lora_adapter(model, target_modules, r: int, lora_alpha: float, lora_dropout: float = 0.0,
                 adapter_name: str = "default") -> PeftModel:
    """Wrap `model` (in place, as peft does) with a fresh LoRA adapter on `target_modules`; only it
    trains. Every stage builds its adapter here (SFT, the reward model, the PPO policy).

    GPT-2's layers are transformers' Conv1D, which store the weight as (in, out): peft must know
    (fan_in_fan_out=True) or it would transpose the update.
    """
    targets = [m for name, m in model.named_modules() if name.split(".")[-1] in target_modules]
    if not targets:
        raise LabError(f"None of the target modules {list(target_modules)} is in this model. GPT-2 "
                       "uses c_attn, c_proj, c_fc; Llama-style models q_proj, k_proj, v_proj, o_proj.")
    config = LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                        target_modules=list(target_modules), bias="none", task_type="CAUSAL_LM",
                        fan_in_fan_out=isinstance(targets[0], Conv1D))
    with _quiet_peft():
        return get_peft_model(model, config, adapter_name=adapter_name)


def add_lora(model, cfg: SFTConfig) -> PeftModel:
    """Wrap `model` (in place, as peft does) with LoRA adapters on cfg.target_modules; only they train."""
    return lora_adapter(model, cfg.target_modules, cfg.r, cfg.lora_alpha, cfg.lora_dropout)


def count_parameters(model) -> dict:
    """Trainable and total parameters, and the trainable share."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "share": trainable / total}


GPT2_SIZES = {  # (n_layer, n_embd, n_head) of the hub's GPT-2 family (Radford et al. 2019)
    "gpt2": (12, 768, 12), "gpt2-medium": (24, 1024, 16), "gpt2-large": (36, 1280, 20),
    "gpt2-xl": (48, 1600, 25),
}


def lora_size_table(cfg: SFTConfig, model=None, names=tuple(GPT2_SIZES)) -> list[dict]:
    """What LoRA trains, in numbers: one row per model (the given one, then the GPT-2 family).

    The GPT-2 sizes are built on the "meta" device: shapes only, no memory, no download.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    rows = []
    if model is not None:
        rows.append({"model": "this model"} | count_parameters(add_lora(copy.deepcopy(model), cfg)))
    for name in names:
        n_layer, n_embd, n_head = GPT2_SIZES[name]
        with torch.device("meta"):
            gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head))
        rows.append({"model": name} | count_parameters(add_lora(gpt2, cfg)))
    return rows


def _dropout_off_in_trunk(model) -> None:
    """Keep the pretrained trunk's dropout off while training: only LoRA's own dropout may act.

    The trunk is frozen, and the later stages sample and score with dropout off (Ziegler et al. 2019),
    so SFT trains the network that they will use.
    """
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and ".lora_dropout." not in f".{name}.":
            module.eval()


# -----------------------------------------------------------------------------
# evaluation and training


@torch.no_grad()
def evaluate_loss(model, tokenizer, dataset, cfg: SFTConfig, batch_size: int | None = None,
                  examples: list[dict] | None = None) -> dict:
    """Mean loss per completion token (nats) on held-out demonstrations, and its perplexity exp(loss).

    examples: the demonstrations already tokenized (tokenize_demonstrations), so that a training loop
    that measures the loss every few steps tokenizes them once; `dataset` is then not read. Each batch
    runs in passes of at most LOGITS_PER_PASS logit entries (a few rows with GPT-2's 50,257 tokens).
    """
    examples = examples if examples is not None else tokenize_demonstrations(dataset, tokenizer, cfg)
    examples = distributed.shard(examples)  # under accelerate launch each process measures its share
    batch_size = batch_size or 4 * cfg.batch_size  # no gradients: larger batches fit
    V = getattr(model.config, "vocab_size", None) or len(tokenizer)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        T = max(len(e["input_ids"]) for e in chunk)
        rows = max(1, LOGITS_PER_PASS // (T * V))
        for first in range(0, len(chunk), rows):
            batch = collate(chunk[first:first + rows], tokenizer)
            logits = forward_logits(model, batch)                           # (B, T, V)
            total += completion_loss(logits, batch["labels"].to(logits.device), reduction="sum").item()
            count += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            del logits
    model.train(was_training)
    if distributed.world_size() > 1:  # every process's share summed
        total, count = distributed.reduce_sum(total), int(distributed.reduce_sum(count))
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": count}


@dataclass
class SFTResult:
    """What train_sft returns: the adapted model, its history and the losses before and after."""

    model: PeftModel  # the pretrained model with its trained LoRA adapter, in eval mode
    tokenizer: object
    config: SFTConfig
    history: list[dict] = field(default_factory=list)  # {"step", "train_loss", "eval_loss"} per eval
    eval_loss_before: float = float("nan")  # per completion token, the pretrained model
    eval_loss_after: float = float("nan")
    seconds: float = 0.0
    out_dir: Path | None = None
    completion_tokens: dict = field(default_factory=dict)  # the training completions' length with EOS (tokens):
    # mean, p95, max; to size generation (max_new_tokens) against: a model taught longer texts cannot stop in time

    @property
    def relative_drop(self) -> float:
        """How much of the pretrained model's eval loss SFT removed: 0.25 = 25% lower."""
        return 1.0 - self.eval_loss_after / self.eval_loss_before

    def summary(self) -> dict:
        return {"eval_loss_before": self.eval_loss_before, "eval_loss_after": self.eval_loss_after,
                "perplexity_before": math.exp(self.eval_loss_before),
                "perplexity_after": math.exp(self.eval_loss_after),
                "relative_drop": self.relative_drop, "seconds": self.seconds,
                "steps": self.history[-1]["step"] if self.history else 0,
                "completion_tokens": self.completion_tokens}


def train_sft(cfg: SFTConfig, model=None, tokenizer=None, train=None, eval=None,
              out_dir: str | Path | None = None, progress: bool = True) -> SFTResult:
    """Fine-tune LoRA adapters on demonstrations; return the adapted model and its history.

    model/tokenizer: a loaded pretrained model (it is copied, never changed); None loads cfg.model.
    train/eval: datasets (or lists of dicts) with prompt and completion; None loads cfg.data.
    out_dir: where the adapter (peft format), the tokenizer, the config and the history are saved.
    """
    from .demonstrations import load_demonstrations

    start_time = time.time()
    check_config(cfg)  # again: a field may have been set after the config was made
    set_seed(cfg.seed)
    device = pick_device(cfg.device)
    if model is None:
        model, tokenizer = load_model(cfg.model, device=device)
    else:
        model = copy.deepcopy(model).to(device)
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model)
    check_max_length(model, cfg)
    n_train = cfg.n_train if cfg.n_train is not None else N_TRAIN_MAX
    n_eval = cfg.n_eval if cfg.n_eval is not None else N_EVAL_MAX
    train = train if train is not None else load_demonstrations(cfg.data, "train", limit=n_train)
    eval = eval if eval is not None else load_demonstrations(cfg.data, "validation", limit=n_eval)
    import datasets

    if isinstance(train, datasets.Dataset) and cfg.n_train is not None:
        train = train.select(range(min(cfg.n_train, len(train))))
    if isinstance(eval, datasets.Dataset) and cfg.n_eval is not None:
        eval = eval.select(range(min(cfg.n_eval, len(eval))))
    examples = tokenize_demonstrations(train, tokenizer, cfg)
    if not examples:
        raise LabError("train_sft got no training demonstrations; check cfg.data and cfg.n_train.")

    eval_examples = tokenize_demonstrations(eval, tokenizer, cfg)  # once, for every measurement

    policy = add_lora(model, cfg)
    before = evaluate_loss(policy, tokenizer, None, cfg, examples=eval_examples)["loss"]  # B = 0: the pretrained model
    history = [{"step": 0, "train_loss": None, "eval_loss": before}]
    tracking.log("sft", history[0], 0)

    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=0.0)  # no decay: LoRA's B starts at 0 and should stay free
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch

    def lr_at(step: int) -> float:  # linear warmup, then linear decay to 0
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        return cfg.lr * max(0.0, (total_steps - step) / max(1, total_steps - cfg.warmup_steps))

    # under accelerate launch each process takes batch_size / N demonstrations of every batch and DDP
    # all-reduces the adapter's gradients (distributed.py); one process: ddp is None, nothing changes
    distributed.check_divisible(cfg.batch_size, "batch_size", "SFTConfig")
    ddp = distributed.prepare(policy)
    order_rng = torch.Generator().manual_seed(cfg.seed)
    policy.train()
    _dropout_off_in_trunk(policy)
    step, window = 0, []
    bar = tqdm(total=total_steps, desc="SFT", disable=not progress or not distributed.is_main())
    for _ in range(cfg.epochs):
        order = torch.randperm(len(examples), generator=order_rng).tolist()
        for i in range(0, len(order), cfg.batch_size):
            chunk = [examples[j] for j in order[i:i + cfg.batch_size]]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            if ddp is None:
                batch = collate(chunk, tokenizer)
                logits = forward_logits(policy, batch)                      # (B, T, V)
                loss = completion_loss(logits, batch["labels"].to(logits.device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            else:
                optimizer.zero_grad(set_to_none=True)
                loss = sharded_backward(ddp, chunk, tokenizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            stop_if_diverged("SFT", step + 1, total_steps, loss=loss, grad_norm=grad_norm,
                             advice="try a lower lr (--sft-lr).")
            optimizer.step()
            step += 1
            window.append(loss.item())
            bar.update(1)
            if step % cfg.eval_every == 0 or step == total_steps:
                eval_loss = evaluate_loss(policy, tokenizer, None, cfg, examples=eval_examples)["loss"]
                history.append({"step": step, "train_loss": sum(window) / len(window), "eval_loss": eval_loss})
                tracking.log("sft", history[-1], step)
                bar.set_postfix(train_loss=f"{history[-1]['train_loss']:.3f}", eval_loss=f"{eval_loss:.3f}")
                window = []
    bar.close()
    policy.eval()
    result = SFTResult(model=policy, tokenizer=tokenizer, config=cfg, history=history,
                       eval_loss_before=before, eval_loss_after=history[-1]["eval_loss"],
                       seconds=time.time() - start_time, completion_tokens=completion_lengths(examples))
    if out_dir is not None:
        result.out_dir = save_sft(result, out_dir) if distributed.is_main() else Path(out_dir)
        distributed.barrier()  # the other processes read the adapter only once it is written
    return result


def sharded_backward(ddp, chunk: list[dict], tokenizer) -> torch.Tensor:
    """Under accelerate launch: this process's slice of a batch of build_example dicts, forward through the
    DDP-wrapped model and backward, its loss the slice's share of the batch's mean over completion tokens
    (so the all-reduced gradient is the one-process gradient of the whole batch). Returns that mean # ()."""
    tokens = sum(label != IGNORE_INDEX for e in chunk for label in e["labels"][1:])  # completion_loss's count
    mine, weight = distributed.shard(chunk), 1.0
    if not mine:  # a last batch with fewer demonstrations than processes: a pass that adds nothing, since
        mine, weight = chunk[:1], 0.0  # every process must take part in each all-reduce
    batch = collate(mine, tokenizer)
    logits = forward_logits(ddp, batch)                                              # (b, T, V)
    loss_sum = completion_loss(logits, batch["labels"].to(logits.device), reduction="sum") * weight
    distributed.backward(loss_sum * distributed.share(1, max(tokens, 1)), ddp)
    return torch.tensor(distributed.reduce_sum(loss_sum.item()) / max(tokens, 1))


def completion_lengths(examples: list[dict]) -> dict:
    """Mean, 95th percentile and longest completion (EOS included; tokens the loss counts) of build_example
    dicts: what the model learns to write before it stops, to set against max_new_tokens."""
    lengths = sorted(sum(label != IGNORE_INDEX for label in e["labels"]) for e in examples)
    if not lengths:
        return {}
    return {"mean": sum(lengths) / len(lengths), "p95": lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))],
            "max": lengths[-1]}


# -----------------------------------------------------------------------------
# what changed: samples before and after


def ended_within(rows: list[dict], budget: int) -> float:
    """Share of samples that reached EOS within `budget` new tokens (EOS included), from samples drawn
    with a larger max_new_tokens: the same as sampling with max_new_tokens=budget, one draw cheaper."""
    return sum(r["ended"] and r["num_tokens"] <= budget for r in rows) / max(len(rows), 1)


def sample_and_score(model, tokenizer, prompts: list[str], max_new_tokens: int = 48, seed: int = 0,
                     batch_size: int = 64, short_budget: int = 32) -> tuple[list[dict], dict]:
    """Sample one completion per prompt (temperature 1, full distribution, as the RL stage will) and
    score prompt + completion with the gold labeler.

    Returns the rows (prompt, completion, ended, num_tokens, gold) and a summary: the share that ended
    with EOS within max_new_tokens and within short_budget tokens, the mean gold score, distinct-2
    and the mean length in tokens.
    """
    from .generation import sample
    from .gold import gold_scores
    from .metrics import distinct_n, eos_rate

    rows = sample(model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, seed=seed,
                  batch_size=batch_size)
    for row, score in zip(rows, gold_scores([r["prompt"] + r["completion"] for r in rows])):
        row["gold"] = score
    summary = {"n": len(rows), "max_new_tokens": max_new_tokens, "eos_share": eos_rate(rows),
               f"eos_share_{short_budget}": ended_within(rows, short_budget),
               "mean_gold": sum(r["gold"] for r in rows) / len(rows),
               "distinct_2": distinct_n([r["completion"] for r in rows], 2),
               "mean_tokens": sum(r["num_tokens"] for r in rows) / len(rows)}
    return rows, summary


@torch.no_grad()
def token_losses(model, tokenizer, prompt: str, completion: str) -> list[tuple[str, float]]:
    """(token, loss in nats) for every completion token and the closing EOS: what SFT's loss sees."""
    example = build_example(tokenizer, prompt, completion, max_length=10_000)
    batch = collate([example], tokenizer)
    was_training = model.training
    model.eval()
    logits = forward_logits(model, batch)[0, :-1].float()              # (T-1, V)
    model.train(was_training)
    targets = batch["labels"][0, 1:].to(logits.device)                 # (T-1,)
    losses = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="none")
    return [(tokenizer.decode([int(t)]), float(l)) for t, l in zip(targets, losses) if t != IGNORE_INDEX]


@torch.no_grad()
def mean_token_losses(model, tokenizer, rows: list[dict], batch_size: int = 64) -> list[float]:
    """The mean loss (nats per completion token, EOS included) of each row's completion after its prompt:
    what SFT's loss says of a whole text. rows: dicts with "prompt" and "completion"."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        batch = collate([build_example(tokenizer, r["prompt"], r["completion"], max_length=10_000) for r in chunk],
                        tokenizer)
        logits = forward_logits(model, batch)[:, :-1].float()                       # (B, T-1, V)
        targets = batch["labels"][:, 1:].to(logits.device)                          # (B, T-1)
        losses = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                                 reduction="none")                                  # (B, T-1), 0 where ignored
        counted = (targets != IGNORE_INDEX).sum(1)                                   # (B,)
        out += (losses.sum(1) / counted).tolist()
    model.train(was_training)
    return out


def comparison_html(before: list[dict], after: list[dict], n: int = 8,
                    labels: tuple[str, str] = ("pretrained", "after SFT")) -> str:
    """An HTML table: prompt, then each model's completion with its gold score, side by side.

    Model text is escaped: a sample may contain "<" or "&" and must show as text, not markup.
    """
    def cell(row):
        stop = "" if row["ended"] else " <i>(no EOS)</i>"
        return (f"<td style='text-align:left'>{html.escape(row['completion'])}{stop}</td>"
                f"<td>{row['gold']:+.2f}</td>")

    head = (f"<tr><th>prompt</th><th>{html.escape(labels[0])}</th><th>gold</th>"
            f"<th>{html.escape(labels[1])}</th><th>gold</th></tr>")
    body = "".join(f"<tr><td style='text-align:left'><b>{html.escape(b['prompt'])}</b></td>{cell(b)}{cell(a)}</tr>"
                   for b, a in list(zip(before, after))[:n])
    return f"<table>{head}{body}</table>"


# -----------------------------------------------------------------------------
# saving, loading, merging


def default_adapter_dir() -> Path:
    """Where notebook 01 saves the SFT adapter and where the later stages look for it: runs/01_sft/adapter."""
    return run_dir("01_sft") / "adapter"


def save_sft(result: SFTResult, out_dir: str | Path) -> Path:
    """The adapter in peft format (adapter_config.json, adapter_model.safetensors), the tokenizer,
    the resolved config (sft_config.json) and the history with the losses (sft_result.json)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # the lab never resizes or adapts the embeddings; "auto" would ask the hub for a hub-named base's config
    # on every save (offline: "Could not find a config file in gpt2")
    result.model.save_pretrained(out_dir, save_embedding_layers=False)
    result.tokenizer.save_pretrained(out_dir)
    save_config(result.config, out_dir / CONFIG_FILE)
    (out_dir / RESULT_FILE).write_text(json.dumps(result.summary() | {"history": result.history}, indent=2) + "\n")
    return out_dir


def load_sft(path: str | Path, device: str | torch.device | None = "auto", base: str | None = None):
    """(model, tokenizer): the pretrained model named in sft_config.json with the saved adapter on it.

    base overrides the pretrained model's name (e.g. after moving the repository).
    """
    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise LabError(f"No LoRA adapter in {path} (adapter_config.json is missing). Train one with "
                       "train_sft(cfg, out_dir=...) or run notebooks/01_sft.ipynb.")
    if base is None:
        if (path / CONFIG_FILE).is_file():
            base = read_json(path / CONFIG_FILE, "SFT config")["model"]
        else:  # an adapter saved by someone else: trust peft's record of its base
            base = read_json(path / "adapter_config.json", "adapter config")["base_model_name_or_path"]
    model, _ = load_model(base, device=device)
    tokenizer = load_tokenizer(path)
    with _quiet_peft(), reading_saved(path, "SFT adapter"):
        model = PeftModel.from_pretrained(model, str(path))
    model.eval()
    return model, tokenizer


def adapter_fingerprint(path: str | Path | None) -> str | None:
    """The first 16 hex digits of the SHA-256 of a saved adapter's weights (adapter_model.safetensors),
    or None if there is none. Names the adapter by what it is, not where it lies: a run folder that was
    copied or moved still matches."""
    import hashlib

    weights = Path(path) / "adapter_model.safetensors" if path is not None else None
    if weights is None or not weights.is_file():
        return None
    digest = hashlib.sha256()
    with weights.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def merge_adapter(peft_model: PeftModel):
    """A plain transformers model with the LoRA update added into its weights (W + alpha/r B A).

    Works on a copy, so `peft_model` stays as it was. Later stages can then treat the SFT model like
    any pretrained one (and put fresh adapters on it).
    """
    merged = copy.deepcopy(peft_model).merge_and_unload()
    merged.eval()
    return merged
