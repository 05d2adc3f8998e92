"""Direct preference optimisation (Rafailov et al. 2023): the policy learns from the preference pairs
themselves, with no reward model and no sampling while it trains.

    train, held_out = reward_model_split("runs/03_reward_model/reward_model", "runs/02_rankings/rankings.jsonl")
    cfg = dpo_config(fast=False, sft="runs/01_sft/adapter", reward_model="runs/03_reward_model/reward_model")
    result = train_dpo(cfg, train, held_out, out_dir="runs/05_dpo")   # resume=True after an interruption
    result.summary   # held-out pairs: loss, accuracy, margin, gold accuracy; samples: gold, RM score, KL
    model, tokenizer, reward = load_dpo("runs/05_dpo", with_reward=True)

DPO's observation (Rafailov et al. 2023, section 4): the policy that maximises E[r] - beta KL(pi || pi_ref)
is pi_ref(y|x) exp(r(x, y) / beta) / Z(x), so every policy implies a reward,
r(x, y) = beta log(pi(y|x) / pi_ref(y|x)) + beta log Z(x). Put that implicit reward into the reward
model's Bradley-Terry loss and log Z(x) cancels within each pair:
    loss = -log sigmoid(beta [(log pi - log pi_ref)(y_w) - (log pi - log pi_ref)(y_l)])
with each log-prob summed over the response's tokens (EOS included: the policy writes it). So the
pairs train the policy directly; beta, not a penalty in a reward, keeps it near the SFT model.
IPO (Azar et al. 2023, loss_type="ipo") regresses the same log-ratio difference onto 1 / (2 beta).

One trunk, as in PPO (trunk.py): the SFT model merged, the fresh LoRA "policy" on it (B = 0: the policy
starts as the reference, so the loss starts at log 2 and every implicit reward at 0), the reference
the same trunk with adapters off, computed in the same batch as the policy, so the two agree to the
bit before the first step. The reward model, if given, goes onto the same trunk only to score the
trained policy's samples the way PPO's are scored. Dropout is off (as TRL's DPOTrainer by default).

DPO trains on the reward model's pairs (reward_model_split: the same held-out prompts, the same at
most 2,000 training pairs), so DPO and RLHF spend the same label budget.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file
from tqdm.auto import tqdm

from . import distributed, tracking
from .config_args import Count, Device, OneOf, Positive, Range, Seed, Whole, check_config
from .ppo_math import dpo_loss, implicit_rewards, logprobs_from_hidden, pairwise_accuracy
from .trunk import (POLICY, ResponseForward, add_policy_adapter, build_trunk, forward_response, lm_head_weight,
                    parameter_memory, save_adapter, use_adapter)
from .utils import (LabError, config_to_dict, pick_device, reading_saved, replacing_folder, rng_states, save_config,
                    saved_folder, set_rng_states, set_seed, write_torch)

if TYPE_CHECKING:
    import datasets  # pairs arrive as a datasets.Dataset; this module needs no import (loading.py says why)

CONFIG_FILE = "dpo_config.json"
RESULT_FILE = "dpo_result.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoint"


# -----------------------------------------------------------------------------
# configuration


@dataclass
class DPOConfig:
    """Everything that decides a DPO run; saved as dpo_config.json with the run."""

    # models and data
    model: str = "tiny"  # the pretrained model under the SFT adapter
    sft: str | None = None  # SFT adapter folder, merged into the trunk; None: pipeline.ensure_sft()
    reward_model: str | None = None  # a reward model to score the trained policy's samples, as PPO's are
    # scored (DPO itself never reads it); None: no reward-model score
    prompts: str = "tiny"  # held-out prompts for the samples: loading.load_prompts(prompts, "validation")
    # --- the loss
    loss_type: Annotated[str, OneOf("sigmoid", "ipo")] = "sigmoid"  # sigmoid: DPO; ipo: IPO (Azar et al. 2023)
    beta: Positive = 0.3  # the KL's weight in the objective DPO solves (Rafailov et al. 2023 and TRL: 0.1);
    # full mode, seed 0: beta 0.1 drifts to 24 nats of KL; 0.3 gains +1.07 gold at 4.2 nats (PPO: +1.14 at
    # 4.1); 1.0 +0.87 at 1.6. For ipo, beta is tau (the margin 1 / (2 tau))
    # --- training
    epochs: Count = 3  # passes over the pairs; 2,000 pairs make 56 steps an epoch (whole rankings of 6 pairs)
    batch_size: Count = 32  # pairs per step, whole rankings at a time (each text scored once), as the RM
    lr: Positive = 1e-3  # Adam on the LoRA, as PPO's (FAST: 3e-3, for its ~300 pairs)
    warmup_steps: Whole = 5  # a short linear warmup, then linear decay to 0, as the reward model
    max_grad_norm: Positive = 1.0  # clip the global gradient norm
    max_length: Annotated[int, Range(2)] = 96  # prompt + response + EOS tokens, as the reward model's
    # --- the policy's LoRA (Hu et al. 2021), as PPO's
    r: Count = 8  # LoRA rank, as for SFT, the reward model and PPO
    lora_alpha: Positive = 16.0  # update scale alpha / r = 2
    target_modules: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")  # GPT-2's Conv1D layers
    fused_gelu: bool = True  # GPT-2's gelu_new as torch's fused op, as in PPO (trunk.use_fused_gelu)
    # --- evaluation: held-out pairs while training, the policy's samples at the end
    eval_every: Count = 25  # steps between held-out pair measurements (the plotted curve)
    eval_prompts: Annotated[int, Range(2)] = 256  # held-out prompts sampled by SFT and DPO, as PPO's
    eval_batch_size: Count = 64  # prompts sampled at a time: PPO's batch_size, so SFT's samples are PPO's draws
    max_new_tokens: Count = 48  # the samples' length limit, as PPO's
    temperature: Positive = 1.0  # sampling temperature of the samples, as PPO's
    # --- bookkeeping
    seed: Seed = 0  # LoRA init, batch order, sampling: same seed, same run
    checkpoint_every: Count = 25  # steps between checkpoints (resume=True continues from the last one)
    device: Device = "auto"  # CUDA, then MPS, then CPU

    def __post_init__(self):
        check_config(self)  # each field within its range: DPOConfig(beta=0) is refused


def dpo_config(fast: bool = False, **overrides) -> DPOConfig:
    """The lab's defaults: full mode 3 epochs over the reward model's ~2,000 pairs; FAST mode (CI, a quick
    look: ~300 pairs, 9 steps an epoch) lr 3e-3 and 128 evaluation prompts sampled 32 at a time (PPO's FAST batch)."""
    cfg = DPOConfig(lr=3e-3, eval_every=5, eval_prompts=128, eval_batch_size=32, checkpoint_every=10) if fast \
        else DPOConfig()
    names = {f.name for f in fields(DPOConfig)}
    for key in overrides:
        if key not in names:
            raise LabError(f"DPOConfig has no field {key!r}; the fields are {sorted(names)}.")
    return dataclasses.replace(cfg, **overrides)  # checked again, with the overrides


def reward_model_split(reward_model: str | Path, rankings: str | Path):
    """(train, held_out) pairs: those the reward model in `reward_model` was trained and measured on,
    from the rankings file it was trained from (pipeline.reward_model_pairs with its eval_fraction and
    seed), so that DPO learns from exactly the labels the RLHF pipeline spent."""
    from .pipeline import reward_model_pairs
    from .preferences import load_preferences
    from .reward_model import RewardConfig, reward_model_info

    saved = reward_model_info(reward_model).get("config", {})
    defaults = RewardConfig()
    split = types.SimpleNamespace(eval_fraction=saved.get("eval_fraction", defaults.eval_fraction),
                                  seed=saved.get("seed", defaults.seed))
    return reward_model_pairs(load_preferences(rankings), split)


# -----------------------------------------------------------------------------
# pairs -> token ids -> a batch in the rollouts' layout


def encode_response(tokenizer, prompt: str, response: str, max_length: int = 96) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids + EOS), tokenized apart as the policy produced them (reward_model.encode
    does the same). Too long: the prompt loses its start; the response is kept whole where it fits."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    response_ids = response_ids[:max_length - 1]  # at least one prompt token to condition on
    prompt_ids = prompt_ids[-(max_length - len(response_ids)):]
    if not prompt_ids:
        raise LabError(f"a pair has an empty prompt (response {response[:40]!r}): DPO scores a response given its "
                       "prompt. Remove such pairs from the preference file.")
    return prompt_ids, response_ids


def collate_responses(items: list[tuple[list[int], list[int]]], pad_token_id: int, device) -> dict:
    """The rollouts' layout (trunk.forward_response): prompts left-padded to Tq, responses right-padded to T.

    returns input_ids, attention_mask # (B, Tq + T); query_length Tq; response, mask # (B, T)
    Padding is known by position, never by comparing ids with pad_token_id (the hub's GPT-2: pad = EOS).
    """
    Tq, T = max(len(p) for p, _ in items), max(len(r) for _, r in items)
    input_ids = torch.full((len(items), Tq + T), pad_token_id, dtype=torch.long)   # (B, Tq + T)
    attention_mask = torch.zeros_like(input_ids)                                   # (B, Tq + T)
    for i, (prompt, response) in enumerate(items):
        input_ids[i, Tq - len(prompt):Tq] = torch.tensor(prompt)
        input_ids[i, Tq:Tq + len(response)] = torch.tensor(response)
        attention_mask[i, Tq - len(prompt):Tq + len(response)] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "query_length": Tq,
            "response": input_ids[:, Tq:], "mask": attention_mask[:, Tq:]}


def sequence_logps(model, batch: dict) -> torch.Tensor:
    """log pi(y|x) of each response, summed over its tokens (EOS included), with whichever adapter is
    active; # (B,). Gradients flow unless the caller is in no_grad."""
    hidden, _ = forward_response(model, batch["input_ids"], batch["attention_mask"], batch["query_length"],
                                 logits=False)                                              # (B, T, C)
    return summed_logps(hidden, lm_head_weight(model), batch)


def summed_logps(hidden: torch.Tensor, head_weight: torch.Tensor, batch: dict) -> torch.Tensor:
    """The responses' log-probs # (B,) from the LM head's input # (B, T, C) (forward_response with
    logits=False) and weight # (V, C), summed over each one's tokens; the (B, T, V) logits are never whole."""
    logprobs = logprobs_from_hidden(hidden, head_weight, batch["response"])                 # (B, T)
    return torch.where(batch["mask"].bool(), logprobs, torch.zeros_like(logprobs)).sum(1)   # (B,)


# -----------------------------------------------------------------------------
# the trainer


class DPOTrainer:
    """DPO on one shared trunk. `step()` runs one optimizer step on one batch of pairs and returns its
    metrics; `train()` runs all; `evaluate_pairs()` measures the held-out pairs.

    model:       a PeftModel with the adapter "policy" (trunk.add_policy_adapter); adapters off = reference
    train_pairs: rows with prompt, chosen, rejected (e.g. reward_model_split's train)
    eval_pairs:  held-out pairs (whole prompts the training pairs do not have), or None
    out_dir:     where checkpoints and metrics.jsonl go (None: nowhere)
    """

    def __init__(self, cfg: DPOConfig, model: PeftModel, tokenizer, train_pairs, eval_pairs=None,
                 out_dir: str | Path | None = None):
        from .reward_model import _batches_of_rankings, _unique_texts, fit_pairs, gold_order

        if not isinstance(model, PeftModel) or POLICY not in model.peft_config:
            raise LabError(f"DPOTrainer needs a PeftModel with the adapter {POLICY!r}: wrap the SFT trunk with "
                           "trunk.add_policy_adapter(trunk, cfg) first.")
        check_config(cfg)  # again: a field may have been set after the config was made
        for what, pairs in (("training", train_pairs), ("held-out", eval_pairs)):
            missing = {"prompt", "chosen", "rejected"} - set(pairs.column_names if pairs is not None else ())
            if pairs is not None and missing:
                raise LabError(f"the {what} pairs lack the columns {sorted(missing)}; build them with "
                               "preferences.load_preferences or dpo.reward_model_split.")
        if train_pairs is None or len(train_pairs) == 0:
            raise LabError("DPOTrainer got no training pairs: rank more samples (rlhf-lab rank), or check the "
                           "preference file.")
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.device = next(model.parameters()).device

        set_seed(cfg.seed)
        model.set_adapter(POLICY)  # the policy active and trainable; every other adapter frozen
        model.eval()  # dropout off: policy and reference are the same network at the start
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params or not all(f".{POLICY}." in n for n, p in model.named_parameters() if p.requires_grad):
            raise LabError("internal: only the policy adapter's weights may train.")
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.lr)
        # under accelerate launch each process takes its slice of every batch's pairs and DDP all-reduces the
        # adapter's gradients (distributed.py); one process: ddp is None, nothing changes
        self.ddp = distributed.prepare(ResponseForward(model))

        self.train_pairs = fit_pairs(train_pairs, tokenizer, cfg.max_length, "training pairs")
        texts, self.chosen_idx, self.rejected_idx = _unique_texts(self.train_pairs)
        self.texts = [encode_response(tokenizer, p, r, cfg.max_length) for p, r in texts]
        generator = torch.Generator().manual_seed(cfg.seed)
        # every epoch's batches fixed up front: a resumed run takes the batches the uninterrupted run would
        self.batches = [rows for _ in range(cfg.epochs)
                        for rows in _batches_of_rankings(self.train_pairs, cfg.batch_size, generator)]
        self.eval_pairs = None
        if eval_pairs is not None and len(eval_pairs):
            self.eval_pairs = fit_pairs(eval_pairs, tokenizer, cfg.max_length, "held-out pairs", required=False)
            texts, self.eval_chosen_idx, self.eval_rejected_idx = _unique_texts(self.eval_pairs)
            self.eval_texts = [encode_response(tokenizer, p, r, cfg.max_length) for p, r in texts]
            self.eval_gold = torch.tensor(gold_order(self.eval_pairs), dtype=torch.float32)  # (N,) +1, -1, 0
        self.step_count = 0
        self.history: list[dict] = []
        self.build_seconds = 0.0  # set by build_dpo_trainer

    @property
    def total_steps(self) -> int:
        return len(self.batches)

    def lr_at(self, step: int) -> float:
        """Linear warmup, then linear decay to 0 (as the reward model's)."""
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        return cfg.lr * max(0.0, (self.total_steps - step) / max(1, self.total_steps - cfg.warmup_steps))

    # --- one step ----------------------------------------------------------------------------------

    def step(self) -> dict:
        """One optimizer step on the next batch of pairs: each distinct text scored once by the policy (with
        gradients) and by the reference (adapters off, the same batch), then the loss over its pairs."""
        from .sft import stop_if_diverged

        cfg = self.cfg
        start = time.perf_counter()
        rows = all_rows = self.batches[self.step_count]
        weight = 1.0  # this process's share of the batch's pairs
        if self.ddp is not None:
            rows = distributed.shard(all_rows)
            weight = len(rows) / len(all_rows)
            rows = rows or all_rows[:1]  # fewer pairs than processes: a pass that adds nothing (weight 0)
        needed = sorted({self.chosen_idx[i] for i in rows} | {self.rejected_idx[i] for i in rows})
        where = {t: n for n, t in enumerate(needed)}
        batch = collate_responses([self.texts[t] for t in needed], self.tokenizer.pad_token_id, self.device)
        with torch.no_grad(), use_adapter(self.model, None):
            ref_logps = sequence_logps(self.model, batch)                     # (U,) U distinct texts
        if self.ddp is None:
            logps = sequence_logps(self.model, batch)                         # (U,) with gradients
        else:  # the same pass through DDP, which all-reduces the gradients in the backward pass
            logps = summed_logps(self.ddp(batch["input_ids"], batch["attention_mask"], batch["query_length"],
                                          logits=False)[0], lm_head_weight(self.model), batch)
        chosen = torch.tensor([where[self.chosen_idx[i]] for i in rows], device=self.device)      # (N,)
        rejected = torch.tensor([where[self.rejected_idx[i]] for i in rows], device=self.device)  # (N,)
        loss = dpo_loss(logps[chosen], logps[rejected], ref_logps[chosen], ref_logps[rejected], cfg.beta,
                        cfg.loss_type)
        lr = self.lr_at(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        if self.ddp is None:
            loss.backward()
        else:  # the slice's mean, weighted by its share of the pairs (DDP averages over the processes)
            distributed.backward(loss * distributed.share(weight, 1.0), self.ddp)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        stop_if_diverged("DPO", self.step_count + 1, self.total_steps, loss=loss, grad_norm=grad_norm,
                         advice="try a lower lr (--dpo-lr) or a larger beta (--dpo-beta).")
        self.optimizer.step()
        self.step_count += 1
        with torch.no_grad():
            chosen_rewards = implicit_rewards(logps[chosen].detach(), ref_logps[chosen], cfg.beta)        # (N,)
            rejected_rewards = implicit_rewards(logps[rejected].detach(), ref_logps[rejected], cfg.beta)  # (N,)
        seconds = time.perf_counter() - start
        metrics = {
            "step": self.step_count,
            "pairs": len(all_rows),
            "loss": loss.item(),
            "accuracy": pairwise_accuracy(chosen_rewards, rejected_rewards).item(),  # vs the annotators' labels
            "margin": (chosen_rewards - rejected_rewards).mean().item(),  # implicit reward units (beta nats)
            "chosen_reward": chosen_rewards.mean().item(),
            "rejected_reward": rejected_rewards.mean().item(),
            "grad_norm": grad_norm.item(),
            "lr": lr,
            "seconds": seconds,
            "pairs_per_second": len(all_rows) / seconds,
        }
        if self.ddp is not None:  # the batch's means: each process's share, summed
            metrics |= distributed.reduce_metrics({k: metrics[k] * weight for k in ("loss", "accuracy", "margin",
                                                                                 "chosen_reward", "rejected_reward")})
        if self.eval_pairs is not None and (self.step_count % cfg.eval_every == 0
                                            or self.step_count == self.total_steps):
            metrics |= {f"eval_{k}": v for k, v in self.evaluate_pairs().items() if not k.startswith("n_")}
        self._record(metrics)
        return metrics

    def _record(self, metrics: dict) -> None:
        """Into the history, and a line of metrics.jsonl."""
        self.history.append(metrics)
        tracking.log("dpo", metrics, metrics.get("step", self.step_count))
        if self.out_dir is not None and distributed.is_main():  # one process writes (distributed.py)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(metrics) + "\n")

    @torch.no_grad()
    def evaluate_pairs(self, chunk: int = 64) -> dict:
        """The held-out pairs under the current policy: DPO loss, implicit-reward accuracy against the
        annotators' labels (ties count as wrong, so 0 before training), mean margin and chosen / rejected
        rewards, and accuracy against the gold labeler on the pairs it does not tie."""
        if self.eval_pairs is None:
            raise LabError("this DPOTrainer has no held-out pairs; pass eval_pairs=... to measure them.")
        cfg = self.cfg
        logps, ref_logps = [], []
        for start in range(0, len(self.eval_texts), chunk):  # policy and reference on the very same batch
            batch = collate_responses(self.eval_texts[start:start + chunk], self.tokenizer.pad_token_id, self.device)
            logps.append(sequence_logps(self.model, batch))
            with use_adapter(self.model, None):
                ref_logps.append(sequence_logps(self.model, batch))
        logps, ref_logps = torch.cat(logps).cpu(), torch.cat(ref_logps).cpu()             # (U,), (U,)
        c, r = self.eval_chosen_idx, self.eval_rejected_idx
        chosen_rewards = implicit_rewards(logps[c], ref_logps[c], cfg.beta)                 # (N,)
        rejected_rewards = implicit_rewards(logps[r], ref_logps[r], cfg.beta)               # (N,)
        margin = chosen_rewards - rejected_rewards                                          # (N,)
        untied = self.eval_gold != 0
        return {
            "loss": dpo_loss(logps[c], logps[r], ref_logps[c], ref_logps[r], cfg.beta, cfg.loss_type).item(),
            "accuracy": pairwise_accuracy(chosen_rewards, rejected_rewards).item(),
            "margin": margin.mean().item(),
            "chosen_reward": chosen_rewards.mean().item(),
            "rejected_reward": rejected_rewards.mean().item(),
            "gold_accuracy": ((margin * self.eval_gold)[untied] > 0).float().mean().item() if untied.any()
            else float("nan"),
            "n_pairs": len(c),
            "n_gold_pairs": int(untied.sum()),
        }

    def train(self, steps: int | None = None, callback: Callable[[dict, "DPOTrainer"], None] | None = None,
              progress: bool = True) -> list[dict]:
        """Run steps until `steps` (default: every epoch's batches) are done, checkpointing every
        cfg.checkpoint_every; the held-out pairs are measured first (step 0) and every cfg.eval_every."""
        steps = self.total_steps if steps is None else min(steps, self.total_steps)
        if not self.history and self.eval_pairs is not None:
            self._record({"step": 0} | {f"eval_{k}": v for k, v in self.evaluate_pairs().items()
                                        if not k.startswith("n_")})
        bar = tqdm(total=steps, initial=self.step_count, desc="DPO", disable=not progress or not distributed.is_main())
        while self.step_count < steps:
            metrics = self.step()
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.2f}",
                            margin=f"{metrics['margin']:+.2f}")
            if callback is not None:
                callback(metrics, self)
            if self.out_dir is not None and (self.step_count % self.cfg.checkpoint_every == 0
                                             or self.step_count == steps):
                self.save_checkpoint()
        bar.close()
        return self.history

    # --- checkpoints -------------------------------------------------------------------------------

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """The policy adapter (peft format), optimizer, step, history and RNG states, replaced whole
        (utils.replacing_folder: a kill during the save leaves the previous checkpoint). Under accelerate
        launch the main process writes it."""
        path = Path(path) if path is not None else self.out_dir / CHECKPOINT_DIR
        if not distributed.is_main():
            return path
        with replacing_folder(path) as tmp:
            save_adapter(self.model, POLICY, tmp / "policy")
            write_torch({"step": self.step_count, "history": self.history, "optimizer": self.optimizer.state_dict(),
                         "rng": rng_states(), "config": config_to_dict(self.cfg)}, tmp / "trainer_state.pt")
        return path

    def load_checkpoint(self, path: str | Path | None = None) -> bool:
        """Restore a checkpoint written by save_checkpoint; False if there is none."""
        path = saved_folder(Path(path) if path is not None else self.out_dir / CHECKPOINT_DIR, "trainer_state.pt")
        if path is None:
            return False
        with reading_saved(path, "DPO checkpoint"):
            state = torch.load(path / "trainer_state.pt", weights_only=True)
        missing = {"step", "history", "optimizer", "rng", "config"} - set(state if isinstance(state, dict) else ())
        if missing:
            raise LabError(f"{path / 'trainer_state.pt'} is not a checkpoint the lab wrote (it has no "
                           f"{', '.join(sorted(missing))}). Delete {path} and run DPO again (without --resume).")
        now = config_to_dict(self.cfg)
        for key in ("loss_type", "beta", "epochs", "batch_size", "lr", "warmup_steps", "max_length", "seed", "r",
                    "lora_alpha"):
            if state["config"].get(key) != now[key]:
                raise LabError(f"cannot resume from {path}: it was written with {key}={state['config'].get(key)!r}, "
                               f"this run has {key}={now[key]!r}. Use the same settings, or a new output folder.")
        if state["step"] > self.total_steps:
            raise LabError(f"cannot resume from {path}: it is at step {state['step']}, but these pairs make only "
                           f"{self.total_steps} steps (other pairs than the run began with?). Use a new output folder.")
        with reading_saved(path, "DPO checkpoint"):
            adapter = load_file(str(path / "policy" / "adapter_model.safetensors"))
        set_peft_model_state_dict(self.model, adapter, adapter_name=POLICY)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count, self.history = state["step"], state["history"]
        set_rng_states(state["rng"])
        if self.out_dir is not None and distributed.is_main():  # metrics.jsonl as it was at the checkpoint
            with open(self.out_dir / METRICS_FILE, "w") as f:
                f.writelines(json.dumps(m) + "\n" for m in self.history)
        return True

    def save(self, out_dir: str | Path | None = None) -> Path:
        """The trained policy adapter in peft format (PeftModel.from_pretrained on the SFT trunk loads it),
        the tokenizer and the resolved config."""
        out_dir = Path(out_dir) if out_dir is not None else self.out_dir
        save_adapter(self.model, POLICY, out_dir)
        self.tokenizer.save_pretrained(out_dir)
        save_config(self.cfg, out_dir / CONFIG_FILE)
        return out_dir


# -----------------------------------------------------------------------------
# the whole stage: build, train, evaluate, save


@dataclass
class DPOResult:
    trainer: DPOTrainer  # holds the model (policy adapter on the shared trunk) and the reward, if any
    config: DPOConfig
    history: list[dict] = field(default_factory=list)  # per step: loss, accuracy, margin; eval_* every eval_every
    summary: dict = field(default_factory=dict)  # held-out pairs before and after; samples' gold, reward, KL
    samples: list[dict] = field(default_factory=list)  # the evaluation samples of SFT and DPO
    reward: object = None  # the reward model on the trunk (ppo.TrunkRewardModel), or None
    out_dir: Path | None = None


def build_dpo_trainer(cfg: DPOConfig, train_pairs=None, eval_pairs=None, out_dir: str | Path | None = None,
                      resume: bool = False, progress: bool = True) -> tuple[DPOTrainer, object]:
    """(trainer, reward): the shared trunk (SFT merged), the policy adapter, the reward model on the same
    trunk if cfg.reward_model names one (else None), and the trainer.

    cfg.sft None: the pipeline's. train_pairs None: the pipeline's reward model's pairs and split
    (reward_model_split; cfg.reward_model None then becomes that reward model). out_dir: resume=True
    continues from its checkpoint; otherwise an earlier run's checkpoint and metrics there are cleared.
    """
    from . import pipeline
    from .ppo import trunk_reward_model

    start_time = time.time()
    if cfg.sft is None:
        cfg.sft = str(pipeline.ensure_sft())
    if train_pairs is None:
        if cfg.reward_model is None:
            cfg.reward_model = str(pipeline.ensure_reward_model())
        train_pairs, eval_pairs = reward_model_split(cfg.reward_model, pipeline.ensure_rankings())
    set_seed(cfg.seed)
    trunk, tokenizer = build_trunk(cfg.sft, base=cfg.model, device=pick_device(cfg.device))
    model = add_policy_adapter(trunk, cfg)
    reward = (trunk_reward_model(cfg.reward_model, cfg.sft, model, tokenizer, stage="DPO")
              if cfg.reward_model is not None else None)
    trainer = DPOTrainer(cfg, model, tokenizer, train_pairs, eval_pairs, out_dir)
    if trainer.out_dir is not None:
        trainer.out_dir.mkdir(parents=True, exist_ok=True)
        resumed = resume and trainer.load_checkpoint()
        if not resumed and distributed.is_main():  # a fresh run: no metrics of an earlier one may stay
            (trainer.out_dir / METRICS_FILE).unlink(missing_ok=True)
            shutil.rmtree(trainer.out_dir / CHECKPOINT_DIR, ignore_errors=True)
        if distributed.is_main():
            save_config(cfg, trainer.out_dir / CONFIG_FILE)
        if resumed and progress and distributed.is_main():
            print(f"resumed from {trainer.out_dir / CHECKPOINT_DIR} at step {trainer.step_count} of "
                  f"{trainer.total_steps}")
        distributed.barrier()  # every process has read the checkpoint before the main one writes the next
    trainer.build_seconds = time.time() - start_time
    return trainer, reward


def run_dpo(trainer: DPOTrainer, reward=None, callback=None, progress: bool = True,
            evaluate: bool = True) -> DPOResult:
    """Train every step, then compare DPO's samples with the SFT model's on held-out prompts (gold,
    the reward model's score if `reward`, KL to the SFT model: the numbers PPO's summary has, with
    "_dpo" where PPO's say "_ppo"), and save (adapter, config, metrics.jsonl, dpo_result.json)."""
    from .evaluation import compare_with_sft
    from .loading import load_prompts

    cfg = trainer.cfg
    start_time = time.time()
    trainer.train(callback=callback, progress=progress)
    result = DPOResult(trainer=trainer, config=cfg, history=trainer.history, reward=reward, out_dir=trainer.out_dir)
    steps = [m for m in trainer.history if "pairs" in m]
    steps_seconds = sum(m["seconds"] for m in steps)
    heads = [reward.reward_model.head] if reward is not None else []
    result.summary = {
        "algo": "dpo",
        "loss_type": cfg.loss_type,
        "beta": cfg.beta,
        "steps": trainer.step_count,
        "train_pairs": len(trainer.train_pairs),
        "eval_pairs": len(trainer.eval_pairs) if trainer.eval_pairs is not None else 0,
        "pairs_per_second": sum(m["pairs"] for m in steps) / steps_seconds if steps_seconds else float("nan"),
        "train_seconds": time.time() - start_time,  # this session's share when resumed
        "parameter_memory": parameter_memory(trainer.model, heads=heads),
    }
    evals = [m for m in trainer.history if "eval_loss" in m]
    if evals:  # the held-out pairs before training (loss log 2, accuracy 0) and after
        for key in ("loss", "accuracy", "margin", "gold_accuracy"):
            result.summary[f"heldout_{key}_before"] = evals[0][f"eval_{key}"]
            result.summary[f"heldout_{key}"] = evals[-1][f"eval_{key}"]
    # the held-out comparison and the files: the main process alone (the others wait at the barrier)
    if evaluate and distributed.is_main():
        prompts = load_prompts(cfg.prompts, "validation", limit=cfg.eval_prompts)["prompt"]
        scores, result.samples = compare_with_sft(
            trainer.model, trainer.tokenizer, prompts, POLICY, name="dpo", reward=reward, seed=cfg.seed,
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, batch_size=cfg.eval_batch_size,
            config="DPOConfig")
        result.summary |= scores
    result.summary["seconds"] = trainer.build_seconds + time.time() - start_time
    if trainer.out_dir is not None and distributed.is_main():
        trainer.save()
        (trainer.out_dir / RESULT_FILE).write_text(json.dumps(result.summary, indent=2) + "\n")
    distributed.barrier()
    return result


def train_dpo(cfg: DPOConfig, train_pairs=None, eval_pairs=None, out_dir: str | Path | None = None,
              resume: bool = False, progress: bool = True, evaluate: bool = True) -> DPOResult:
    """The whole stage: build_dpo_trainer, then run_dpo. See both for the arguments."""
    trainer, reward = build_dpo_trainer(cfg, train_pairs, eval_pairs, out_dir, resume, progress)
    return run_dpo(trainer, reward, progress=progress, evaluate=evaluate)


def load_dpo(dpo_dir: str | Path, device="auto", with_reward: bool = False):
    """(model, tokenizer, reward) of a saved DPO run: the SFT trunk (from dpo_config.json) with the trained
    adapter "policy" active, and, if with_reward and the run named a reward model, that reward model on
    the same trunk (else None). `(model, None)` is then the SFT model, `(model, "policy")` DPO's."""
    from .ppo import trunk_reward_model

    dpo_dir = Path(dpo_dir)
    if not (dpo_dir / CONFIG_FILE).is_file() or not (dpo_dir / "adapter_config.json").is_file():
        raise LabError(f"{dpo_dir} holds no finished DPO run ({CONFIG_FILE} or adapter_config.json is missing). "
                       "Train one with train_dpo(cfg, out_dir=...) or `rlhf-lab dpo --out DIR`.")
    from .utils import read_json

    saved = read_json(dpo_dir / CONFIG_FILE, "DPO config")
    cfg = DPOConfig(**{k: tuple(v) if k == "target_modules" else v for k, v in saved.items()
                       if k in {f.name for f in fields(DPOConfig)}})
    trunk, tokenizer = build_trunk(cfg.sft, base=cfg.model, device=device)
    with reading_saved(dpo_dir, "DPO adapter"):
        model = PeftModel.from_pretrained(trunk, str(dpo_dir), adapter_name=POLICY)
    model.eval()
    reward = None
    if with_reward and cfg.reward_model is not None:
        reward = trunk_reward_model(cfg.reward_model, cfg.sft, model, tokenizer, stage="DPO")
        model.set_adapter(POLICY, inference_mode=True)
    return model, tokenizer, reward


# -----------------------------------------------------------------------------
# figures


def plot_history(history: list[dict]):
    """DPO's loss and the implicit rewards' accuracy and margin per step (training), with the held-out
    curves and the accuracy against gold."""
    import matplotlib.pyplot as plt

    train = [m for m in history if "loss" in m]
    evals = [m for m in history if "eval_loss" in m]
    fig, (ax_loss, ax_acc, ax_margin) = plt.subplots(1, 3, figsize=(13, 3.4))
    steps = [m["step"] for m in train]
    ax_loss.plot(steps, [m["loss"] for m in train], alpha=0.6, label="train")
    ax_acc.plot(steps, [m["accuracy"] for m in train], alpha=0.6, label="train vs annotators")
    ax_margin.plot(steps, [m["margin"] for m in train], alpha=0.6, label="train")
    if evals:
        eval_steps = [m["step"] for m in evals]
        ax_loss.plot(eval_steps, [m["eval_loss"] for m in evals], "o-", label="held out")
        ax_acc.plot(eval_steps, [m["eval_accuracy"] for m in evals], "o-", label="held out vs annotators")
        ax_acc.plot(eval_steps, [m["eval_gold_accuracy"] for m in evals], "s-", label="held out vs gold")
        ax_margin.plot(eval_steps, [m["eval_margin"] for m in evals], "o-", label="held out")
    ax_loss.axhline(math.log(2), color="#999", linestyle=":", label="log 2 (the start)")
    ax_acc.axhline(0.5, color="#999", linestyle=":", label="chance")
    ax_loss.set(xlabel="step", title="DPO loss")
    ax_acc.set(xlabel="step", ylabel="share of pairs ordered right", title="implicit-reward accuracy",
               ylim=(-0.02, 1.02))
    ax_margin.set(xlabel="step", ylabel="beta * log-ratio difference", title="implicit-reward margin")
    for ax in (ax_loss, ax_acc, ax_margin):
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
