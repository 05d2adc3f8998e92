"""One synchronised step of SFT, the reward model, DPO and PPO, as tests/test_distributed.py compares them.

Run by the test in 2 processes on the CPU (gloo), as a user launches the lab:
    accelerate launch --multi_gpu --num_processes 2 tests/distributed_worker.py OUT_DIR
each process writes OUT_DIR/rank{N}.pt: every stage's loss and trainable weights after the step (PPO: also
the gathered batch and the RNG state it was updated with). The test then takes the same steps in one process
with the same builders (sft_step, reward_step, dpo_step, ppo_trainer, below) and compares.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

SEED = 0


def trainable(module: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """{"weights", "grads"}: the weights that train (LoRA adapters, heads) by name, and the gradients of the
    last step (all-reduced, clipped) that moved them; copies."""
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    return {"weights": {name: p.detach().clone() for name, p in named},
            "grads": {name: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for name, p in named}}


@contextlib.contextmanager
def recording_grad_norms():
    """The gradient norms a stage clips (before clipping), in a list: the one number that shows a gradient's
    scale, which Adam's step (g / sqrt(v)) would hide from the weights."""
    norms, clip = [], torch.nn.utils.clip_grad_norm_

    def recording(*args, **kwargs):
        norm = clip(*args, **kwargs)
        norms.append(float(norm))
        return norm

    torch.nn.utils.clip_grad_norm_ = recording
    try:
        yield norms
    finally:
        torch.nn.utils.clip_grad_norm_ = clip


# -----------------------------------------------------------------------------
# the three stages, each one optimizer step on one global batch


def sft_step() -> dict:
    """train_sft on 8 demonstrations in one batch of 8: one step (4 demonstrations a process in 2).

    With the trunk's dropout at p = 0: transformers' GPT-2 drops attention weights inside
    scaled_dot_product_attention whenever the attention module is in training mode, whatever its Dropout
    module's mode, and each process would draw its own masks (a different network than one process's)."""
    from rlhf_lab.loading import load_model
    from rlhf_lab.sft import sft_config, train_sft

    cfg = sft_config(fast=True, n_train=8, n_eval=8, batch_size=8, epochs=1, warmup_steps=1, eval_every=1,
                     seed=SEED, device="cpu")
    model, tokenizer = load_model("tiny", device="cpu")
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    with recording_grad_norms() as grad_norms:
        result = train_sft(cfg, model, tokenizer, progress=False)
    return {"loss": result.history[-1]["train_loss"], "eval_loss": result.history[-1]["eval_loss"],
            "eval_loss_before": result.eval_loss_before, "grad_norms": grad_norms} | trainable(result.model)


def preference_pairs():
    """(train, held_out): 4 prompts x 3 pairs (demonstrations against other completions), 1 prompt held out."""
    import datasets

    from rlhf_lab.demonstrations import load_demonstrations

    demos = list(load_demonstrations("tiny", "train", limit=10))
    rows = [{"prompt": demos[i]["prompt"], "chosen": demos[i]["completion"],
             "rejected": demos[(i + j) % len(demos)]["completion"]} for i in range(5) for j in (1, 2, 3)]
    return datasets.Dataset.from_list(rows[:12]), datasets.Dataset.from_list(rows[12:])


def reward_step() -> dict:
    """train_reward_model on 12 pairs in one batch (whole rankings): one step, dropout off (with it, each
    process would draw its own dropout masks, a different network than one process's)."""
    from rlhf_lab.reward_model import reward_config, train_reward_model

    train, held_out = preference_pairs()
    cfg = reward_config(fast=True, epochs=1, batch_size=12, warmup_steps=1, train_dropout=False, eval_every=1,
                        seed=SEED, device="cpu")
    with recording_grad_norms() as grad_norms:
        result = train_reward_model(cfg, train, eval_pairs=held_out, progress=False)
    step = result.history[-1]
    return {"loss": step["loss"], "accuracy": step["accuracy"], "margin": step["margin"],
            "eval_loss": step["eval_loss"], "grad_norms": grad_norms} | trainable(result.reward_model)


def dpo_step() -> dict:
    """One DPOTrainer step on the same 12 pairs in one batch, the tiny model as the SFT model."""
    from rlhf_lab.dpo import DPOTrainer, dpo_config
    from rlhf_lab.loading import load_model
    from rlhf_lab.trunk import add_policy_adapter
    from rlhf_lab.utils import set_seed

    train, held_out = preference_pairs()
    cfg = dpo_config(fast=True, batch_size=12, epochs=1, warmup_steps=1, eval_every=1, seed=SEED, device="cpu")
    set_seed(cfg.seed)
    model, tokenizer = load_model("tiny", device="cpu")
    trainer = DPOTrainer(cfg, add_policy_adapter(model, cfg), tokenizer, train, held_out)
    metrics = trainer.step()
    return {k: metrics[k] for k in ("loss", "accuracy", "margin", "grad_norm", "eval_loss")} | trainable(trainer.model)


def ppo_trainer(folder: Path):
    """A PPOTrainer as build_trainer makes one: the tiny model with a fresh LoRA "policy" and value head, and
    a reward model's adapter and head (untrained, saved into `folder` and loaded onto the same trunk: scoring
    switches adapters in the middle of the rollout, as in every run). Batches of 8 episodes, minibatches of
    4, one epoch: 2 optimizer steps."""
    from rlhf_lab.loading import load_model, load_prompts
    from rlhf_lab.ppo import PPOTrainer, TrunkRewardModel, add_policy_adapter, ppo_config
    from rlhf_lab.reward_model import (RewardConfig, RewardModel, add_reward_adapter, load_reward_model,
                                       save_reward_model)
    from rlhf_lab.utils import set_seed

    cfg = ppo_config(fast=True, batch_size=8, minibatch_size=4, ppo_epochs=1, max_new_tokens=16, seed=SEED,
                     device="cpu")
    set_seed(cfg.seed + 1)
    trunk, tokenizer = load_model("tiny", device="cpu")
    save_reward_model(RewardModel(add_reward_adapter(trunk, RewardConfig()), tokenizer=tokenizer), folder)
    set_seed(cfg.seed)
    model, tokenizer = load_model("tiny", device="cpu")
    model = add_policy_adapter(model, cfg)
    reward = TrunkRewardModel(load_reward_model(folder, trunk=model, tokenizer=tokenizer))
    prompts = load_prompts("tiny", "train")["prompt"][:64]
    return PPOTrainer(cfg, model, tokenizer, reward, prompts)


def ppo_update(trainer, batch) -> dict:
    """The update of one batch: advantages over the whole batch, then cfg.ppo_epochs of minibatches."""
    kl_coef = trainer.kl_ctl.value
    kl, advantages, returns = trainer.advantages(batch, kl_coef)
    trainer.update(batch, advantages, returns, kl_coef)
    policy, value_head = trainable(trainer.model), trainable(trainer.value_head)
    return {"losses": [s["loss"] for s in trainer.minibatch_stats], "stats": trainer.minibatch_stats} | {
        key: policy[key] | {f"value_head.{k}": v for k, v in value_head[key].items()} for key in policy}


def ppo_step(folder: Path) -> dict:
    """Each process samples its 4 of the batch's 8 episodes; the update runs on the gathered batch."""
    import dataclasses

    trainer = ppo_trainer(folder)
    batch = trainer.rollout(trainer.batch_prompts(0))
    rng = torch.get_rng_state()  # what the update's minibatch order is drawn from
    return ppo_update(trainer, batch) | {"batch": dataclasses.asdict(batch), "rng": rng}


if __name__ == "__main__":
    torch.set_num_threads(1)  # two processes on two cores
    from rlhf_lab import distributed

    out = Path(sys.argv[1])
    found = {"world_size": distributed.world_size(), "rank": distributed.rank(), "sft": sft_step(),
             "reward": reward_step(), "dpo": dpo_step(), "ppo": ppo_step(out / f"reward-model-{distributed.rank()}")}
    torch.save(found, out / f"rank{distributed.rank()}.pt")
    distributed.barrier()
