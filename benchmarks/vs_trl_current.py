"""Our DPO, RLOO and GRPO against the current TRL's DPOTrainer, RLOOTrainer and GRPOTrainer: samples
(or pairs) per second, peak memory and model-FLOPs utilisation, side by side.

    python3 -m venv .venv-trl-current && . .venv-trl-current/bin/activate   # TRL 1.16 beside the dev venv
    pip install torch==2.13.0 && pip install -e ".[dev,bench-current]"     # trl==1.16.0
    python benchmarks/vs_trl_current.py                      # 1 warm-up + 10 timed updates per method and side
    python benchmarks/vs_trl_current.py --updates 2          # a quick check that every side runs
    python benchmarks/vs_trl_current.py --methods grpo --rounds 3   # one method, each side's fastest of 3 rounds
    python benchmarks/vs_trl_current.py --heap               # where the memory goes: glibc's heap, in use and taken

One invocation runs each method and side in its own subprocess, one after the other (as ppo_vs_trl.py
does for PPO), on the same tiny GPT-2 (data/tiny-gpt2: 4 layers, 128 dims, vocabulary 2,858), the same
8-token prompts (openings of training reviews), LoRA r=8, alpha 16 on c_attn/c_proj/c_fc, fp32 on the
CPU (TRL: bf16=False; its default bf16=True would autocast to bf16 on the CPU), dropout off, no
gradient checkpointing (TRL's default True recomputes the forward pass: not equal work), no vLLM,
`--threads` torch threads.

RLOO and GRPO, the same shape on both sides: 64 samples per update = 16 prompts x k = 4 samples each,
24 sampled tokens at temperature 1 (top_k 0, top_p 1), 4 optimizer steps on each batch (ours:
ppo_epochs=4 over one minibatch of 64; TRL: num_iterations=4, steps_per_generation = gradient
accumulation steps, so one generation per 4 optimizer steps), a fixed KL coefficient 0.05 (RLOO: in the
reward, k1 summed over the response; GRPO: a k3 loss term), clipping 0.2, one reward function.
What each side computes per update (the designs differ; that is what is measured):
  ours  one PeftModel on one trunk (rlhf_lab.ppo.PPOTrainer, algo "rloo" or "grpo"): sample with the
        "policy" adapter (own KV-cache loop, stops when every response has EOS); one pass with the policy
        (old log-probs), one with adapters off (reference), one with the "reward" adapter + head
        (reward, read from the sampled ids); 4 x (forward + backward) of the policy.
  TRL   RLOOTrainer / GRPOTrainer on a PeftModel (LoRA): `generate` (KV cache); decode the completions;
        one pass with the policy (old log-probs: RLOO always, GRPO because num_iterations > 1), one
        with the adapter disabled (reference; TRL's PEFT path, as ours); the reward model, a second
        GPT-2 (GPT2ForSequenceClassification) that re-tokenizes prompt + completion text (without the
        EOS: TRL decodes with skip_special_tokens); 4 x (forward + backward) of the policy.
Losses differ as the libraries define them (ours: PPO's token-level clipped loss for both; TRL's RLOO
a sequence-level ratio, its GRPO loss_type "dapo"); they cost the same to within a few small ops.

DPO, the same pairs, batch and length on both sides: K = 4 samples of the tiny model per prompt, each
exactly 23 tokens + EOS (EOS suppressed while sampling, so every text is 8 + 24 = 32 tokens and no side
pads), ranked by the gold labeler, all K(K-1)/2 = 6 pairs of each ranking (the lab's rankings, as
rankings_to_pairs makes them); 48 pairs (8 prompts) per optimizer step, beta 0.1, sigmoid loss,
max_length 32. Only texts whose tokens survive decode + re-tokenize (both ways each side tokenizes)
are kept, so both sides see the same token ids.
  ours  rlhf_lab.dpo.DPOTrainer: whole rankings per batch; each distinct text once through the
        reference (adapters off) and once through the policy (with gradients): 32 sequences a step.
  TRL   DPOTrainer with a peft LoraConfig (reference = adapter disabled, as ours; no
        precompute_ref_log_probs): chosen and rejected of every pair through reference and policy:
        96 sequences a step, each text of a ranking three times (its pairs are shuffled apart).
  --dpo-samples-per-prompt 2 makes one pair per prompt, so no text is shared and both sides score
  96 sequences a step: the comparison without our batching of whole rankings.

The reward is one function on both sides (bench_common.save_reward_models, as in ppo_vs_trl.py): the
tiny trunk, a LoRA "reward" adapter whose B is zero (it adds nothing, but ours pays for running it)
and a linear head; TRL gets it as a GPT2ForSequenceClassification with the same head weights. The
`prepare` step checks that both score the same token ids alike. Its scores mean nothing: speed and
memory do not depend on what the reward likes. Neither side can be told to sample a fixed length
(ours stops at max_new_tokens or when every response has its EOS), so each side logs the tokens it
generated per update: with 64 samples of 24 tokens some sample always runs to the end.

Measured per method and side: samples (DPO: pairs) per second, the median over the timed updates,
each update's wall time one full trip of the training loop (RLOO, GRPO: from one generation to the
next, 4 optimizer steps; DPO: one optimizer step, TRL's from one on_step_end to the next); peak
resident memory (VmHWM of the subprocess, cross-checked with wait4's ru_maxrss); resident memory after
the imports and with the models built; the time split generation / scoring / update for RLOO and GRPO;
and model-FLOPs utilisation (MFU): the task's model FLOPs per second over the fp32 matmul rate that a
`matmul` step measures on the same machine at the same thread count (bench_common.child_matmul). The
task's FLOPs are one count for both sides (update_flops, nanoGPT's estimate_mfu way, with LoRA's frozen
weights getting no gradient): what a design adds (TRL's three passes of each DPO text) or saves does not
count, so MFU measures useful work, and ours / TRL for MFU equals ours / TRL for throughput.
The machine's load average is printed: on a shared machine the figures move.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench_common import (GIB, HEAP_NOTE, TINY, check_heap, child_main, child_matmul, config_from_args,
                          config_parser, heap_rows, machine_line, model_shape, our_trainer, pass_flops,
                          pick_prompts, proc_status, run_child, run_info, save_reward_models, time_our_updates,
                          write_record)

TRL_VERSION = "1.16.0"  # pyproject.toml's bench-current extra: the newest TRL that installs with transformers 5.x
METHODS = ("dpo", "rloo", "grpo")


@dataclass
class BenchConfig:
    """One benchmark run; saved as config.json in the work folder and handed to each side."""

    updates: int = 10  # timed updates per method and side (RLOO, GRPO: a rollout and its epochs; DPO: a step)
    warmup: int = 1  # updates run first and not timed (allocator, first-call overheads)
    threads: int = 2  # torch threads in each subprocess (the dev venv's sitecustomize would set 1)
    methods: tuple[str, ...] = METHODS  # which methods to run, in this order
    sides: tuple[str, ...] = ("ours", "trl")  # which sides to run, in this order
    rounds: int = 1  # run everything this many times, interleaved, and keep each side's fastest round
    # --- RLOO and GRPO
    batch_size: int = 64  # samples per update: batch_size / group_size prompts x group_size samples
    group_size: int = 4  # k samples per prompt (Ahmadian et al. 2024 found 4 better than 2); TRL: num_generations
    epochs: int = 4  # optimizer steps on each batch, one minibatch of batch_size each (ours: ppo_epochs;
    # TRL: num_iterations, the mu of Shao et al. 2024)
    micro_batch_size: int = 64  # samples per forward + backward, both sides; below batch_size the chunks'
    # gradients are summed into one optimizer step (ours: PPOConfig.micro_batch_size; TRL:
    # per_device_train_batch_size x gradient_accumulation_steps)
    query_length: int = 8  # prompt tokens: the openings of training reviews, cut to exactly this many
    response_length: int = 24  # RL: new tokens sampled per sample (TRL: max_completion_length); DPO: each
    # response's tokens, EOS included
    kl_coef: float = 0.05  # fixed beta, both sides (TRL's RLOO default): RLOO's in the reward, GRPO's k3 loss term
    temperature: float = 1.0  # sampling temperature, top_k 0, top_p 1 on both sides
    # --- DPO
    dpo_batch_size: int = 48  # pairs per optimizer step: 8 prompts x 6 pairs; a multiple of K(K-1)/2
    dpo_samples_per_prompt: int = 4  # K ranked samples per prompt, all K(K-1)/2 pairs; 2: one pair per prompt
    dpo_beta: float = 0.1  # DPO's beta, both sides (Rafailov et al. 2023 and TRL's default)
    # --- both
    lora_r: int = 8  # LoRA rank of the policy, both sides
    lora_alpha: float = 16.0  # LoRA scale alpha / r = 2, both sides
    lr: float = 3e-4  # Adam(W) learning rate, both sides, constant; speed does not depend on it
    seed: int = 0  # prompts, samples, LoRA, heads, sampling
    heap: bool = False  # also watch glibc's heap in each side (peak malloc'd bytes in use against the heap
    # taken for them: bench_common.HeapWatch); its thread slows the sides, so --record takes it only to a
    # file of its own, with "heap" in its name

    @property
    def pairs_per_prompt(self) -> int:
        return self.dpo_samples_per_prompt * (self.dpo_samples_per_prompt - 1) // 2

    def check(self) -> None:
        """The rules between fields, in words."""
        if self.batch_size % self.group_size or self.group_size < 2:
            raise SystemExit(f"--group-size {self.group_size} must be 2 or more and divide --batch-size "
                             f"{self.batch_size}")
        if not 0 < self.micro_batch_size <= self.batch_size or self.batch_size % self.micro_batch_size:
            raise SystemExit(f"--micro-batch-size {self.micro_batch_size} must divide --batch-size {self.batch_size}")
        if self.dpo_samples_per_prompt < 2 or self.dpo_batch_size % self.pairs_per_prompt:
            raise SystemExit(f"--dpo-batch-size {self.dpo_batch_size} must be a multiple of the "
                             f"{self.pairs_per_prompt} pairs of each prompt (--dpo-samples-per-prompt "
                             f"{self.dpo_samples_per_prompt}), so that our whole-ranking batches hold exactly that "
                             "many pairs")


# -----------------------------------------------------------------------------
# the task's model FLOPs, one count for both sides (standard library only: the parent imports no torch)


def update_flops(cfg: BenchConfig, method: str, shape: dict) -> float:
    """Model FLOPs of one update of `method` at this shape (bench_common.pass_flops): what the task needs.

    rloo, grpo: sampling (prompt + response through the policy, the LM head at the response positions),
    one no-grad pass of the policy (RLOO always: its KL in the reward needs the log-probs; GRPO only with
    epochs > 1, for the old log-probs), of the reference, of the reward model (a scalar head), and
    `epochs` forward + backward passes of the policy.
    dpo: each distinct text of the step's pairs once through the reference and once through the policy
    with gradients (K texts per prompt, however many pairs they make).
    """
    T, R = cfg.query_length + cfg.response_length, cfg.response_length
    if method == "dpo":
        texts = cfg.dpo_batch_size // cfg.pairs_per_prompt * cfg.dpo_samples_per_prompt
        return pass_flops(shape, texts, T, R, lora=False) + pass_flops(shape, texts, T, R, backward=True)
    B = cfg.batch_size
    old_logprobs = method == "rloo" or cfg.epochs > 1
    return (pass_flops(shape, B, T, R)                                           # generation
            + (pass_flops(shape, B, T, R) if old_logprobs else 0)                # policy, no grad
            + (pass_flops(shape, B, T, R, lora=False) if cfg.kl_coef else 0)     # reference
            + pass_flops(shape, B, T, 0, lora=False)                             # reward model
            + cfg.epochs * pass_flops(shape, B, T, R, backward=True))            # the optimizer steps


def summarise_updates(updates: list[dict], warmup: int, per_update: int) -> dict:
    """Median samples (pairs) per second and mean phase seconds over the timed updates (warm-up left out)."""
    timed = updates[warmup:]
    if not timed:
        raise SystemExit("no timed updates: use --updates 1 or more")
    seconds = [u["seconds"] for u in timed]
    rates = [per_update / s for s in seconds]
    phases = {k: statistics.mean(u[k] for u in timed) for k in ("generation", "scoring", "update") if k in timed[0]}
    if phases:
        phases["other"] = max(0.0, statistics.mean(seconds) - sum(phases.values()))
    return {"per_second": statistics.median(rates), "per_second_min": min(rates), "per_second_max": max(rates),
            "timed_seconds": sum(seconds), "mean_seconds": statistics.mean(seconds), "phase_seconds": phases}


# -----------------------------------------------------------------------------
# child: the shared inputs (prompts, DPO's pairs, the reward model in both formats) and their checks


def child_prepare(cfg: BenchConfig, work: Path) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhf_lab.generation import Rollout
    from rlhf_lab.loading import load_model
    from rlhf_lab.ppo import PPOConfig, TrunkRewardModel, add_policy_adapter
    from rlhf_lab.reward_model import load_reward_model

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    trunk, tokenizer = load_model(str(TINY), device="cpu")
    prompts, ids = pick_prompts(tokenizer, cfg.query_length)
    if len(prompts) < cfg.batch_size // cfg.group_size:
        raise SystemExit(f"only {len(prompts)} prompts of {cfg.query_length} tokens; need {cfg.batch_size}")
    (work / "prompts.json").write_text(json.dumps({"prompts": prompts, "input_ids": ids}))
    pairs = sample_pairs(cfg, trunk, tokenizer, prompts, ids)  # before the reward adapter wraps the trunk
    (work / "pairs.json").write_text(json.dumps(pairs))
    save_reward_models(trunk, tokenizer, work, cfg.lora_r, cfg.lora_alpha)

    # check: both reward models score the same ids alike (TRL scores them after decode + re-tokenize)
    B, T = 16, cfg.response_length
    query = torch.tensor(ids[:B])                                                  # (B, Tq)
    response = torch.randint(2, len(tokenizer), (B, T))                            # (B, T) no EOS, no pad
    rollout = Rollout(query, torch.ones_like(query), response, torch.ones_like(response),
                      torch.zeros(B, dtype=torch.bool))
    trunk2, _ = load_model(str(TINY), device="cpu")
    policy = add_policy_adapter(trunk2, PPOConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha))
    ours_scores = TrunkRewardModel(load_reward_model(work / "reward_ours", trunk=policy, tokenizer=tokenizer)) \
        .score([""] * B, [""] * B, rollout)                                        # (B,)
    trl_rm = AutoModelForSequenceClassification.from_pretrained(work / "reward_trl", num_labels=1).eval()
    with torch.no_grad():
        trl_scores = trl_rm(input_ids=torch.cat([query, response], 1)).logits[:, 0]  # (B,) as GRPO reads it
    diff = (ours_scores - trl_scores).abs().max().item()
    if not diff < 1e-4:
        raise SystemExit(f"the two reward models disagree (max abs difference {diff:.2e}); the benchmark "
                         "would not compare like with like")
    # the policy adapter's weights only: load_reward_model put the "reward" adapter on the same model
    lora_params = sum(p.numel() for n, p in policy.named_parameters() if "lora_" in n and ".policy." in n)
    return {"prompts": len(prompts), "pairs": len(pairs["prompt"]), "reward_max_abs_difference": diff,
            "shape": model_shape(trunk2, lora_params)}


def sample_pairs(cfg: BenchConfig, model, tokenizer, prompts: list[str], ids: list[list[int]]) -> dict:
    """DPO's pairs for warmup + updates steps: K samples of the tiny model per prompt, each exactly
    response_length - 1 tokens (EOS suppressed) + EOS, ranked by the gold labeler, every pair of each
    ranking. A prompt is used only if each of its samples survives both tokenizations: ours tokenizes the
    response alone (dpo.encode_response), TRL prompt + response + EOS text in one go."""
    import torch

    from rlhf_lab.gold import gold_score
    from rlhf_lab.rankings import rankings_to_pairs

    K, T = cfg.dpo_samples_per_prompt, cfg.response_length - 1
    wanted = (cfg.warmup + cfg.updates) * cfg.dpo_batch_size // cfg.pairs_per_prompt  # prompts
    eos, records = tokenizer.eos_token_id, []
    for start in range(0, len(prompts), 64):
        query = torch.tensor(ids[start:start + 64]).repeat_interleave(K, 0)               # (64 K, Tq)
        with torch.no_grad():
            out = model.generate(input_ids=query, attention_mask=torch.ones_like(query), do_sample=True,
                                 max_new_tokens=T, min_new_tokens=T, temperature=cfg.temperature, top_k=0,
                                 top_p=1.0, suppress_tokens=[tokenizer.pad_token_id],
                                 pad_token_id=tokenizer.pad_token_id)
        responses = out[:, query.shape[1]:].view(-1, K, T).tolist()                     # (64, K, T)
        for prompt, prompt_ids, samples in zip(prompts[start:start + 64], ids[start:start + 64], responses):
            texts = [tokenizer.decode(r) for r in samples]
            if all(tokenizer(t, add_special_tokens=False)["input_ids"] == r
                   and tokenizer(prompt + t + tokenizer.eos_token)["input_ids"] == prompt_ids + r + [eos]
                   for t, r in zip(texts, samples)) and len(set(texts)) == K:
                ranking = sorted(range(K), key=lambda i: -gold_score(prompt + texts[i]))
                records.append({"prompt": prompt, "completions": texts, "ranking": ranking})
        if len(records) >= wanted:
            break
    if len(records) < wanted:
        raise SystemExit(f"only {len(records)} prompts with {K} samples that tokenize back to themselves; need "
                         f"{wanted}: use fewer --updates or a smaller --dpo-batch-size")
    return rankings_to_pairs(records[:wanted]).to_dict()


# -----------------------------------------------------------------------------
# children: ours


def child_ours_dpo(cfg: BenchConfig, work: Path) -> dict:
    rss = {"after_imports": 0, "after_build": 0}
    import torch
    torch.set_num_threads(cfg.threads)
    from datasets import Dataset  # DPOTrainer takes its pairs as a Dataset, as preferences.py makes them

    from rlhf_lab import dpo as lab_dpo
    from rlhf_lab.loading import load_model
    from rlhf_lab.trunk import add_policy_adapter
    rss["after_imports"] = proc_status("VmRSS")

    build_start = time.perf_counter()
    pairs = Dataset.from_dict(json.loads((work / "pairs.json").read_text()))
    dcfg = lab_dpo.dpo_config(epochs=1, batch_size=cfg.dpo_batch_size, beta=cfg.dpo_beta, lr=cfg.lr, warmup_steps=0,
                              max_length=cfg.query_length + cfg.response_length, r=cfg.lora_r,
                              lora_alpha=cfg.lora_alpha, seed=cfg.seed, device="cpu")
    trunk, tokenizer = load_model(str(TINY), device="cpu")
    trainer = lab_dpo.DPOTrainer(dcfg, add_policy_adapter(trunk, dcfg), tokenizer, pairs)
    build_seconds = time.perf_counter() - build_start
    rss["after_build"] = proc_status("VmRSS")

    updates = []
    for i in range(cfg.warmup + cfg.updates):
        rows = trainer.batches[trainer.step_count]
        texts = len({trainer.chosen_idx[r] for r in rows} | {trainer.rejected_idx[r] for r in rows})
        start = time.perf_counter()
        metrics = trainer.step()
        seconds = time.perf_counter() - start
        updates.append({"seconds": seconds, "pairs": metrics["pairs"], "sequences": texts, "loss": metrics["loss"]})
        print(f"ours dpo step {i + 1}: {seconds:.3f} s, {metrics['pairs'] / seconds:.1f} pairs/s, {texts} sequences",
              flush=True)
    return {"updates": updates, "build_seconds": build_seconds, "rss": rss,
            "trainable_parameters": sum(p.numel() for p in trainer.params), "threads": torch.get_num_threads()}


def child_ours_rl(cfg: BenchConfig, work: Path, algo: str) -> dict:
    rss = {"after_imports": 0, "after_build": 0}
    import torch
    torch.set_num_threads(cfg.threads)
    from rlhf_lab import ppo as lab_ppo
    from rlhf_lab.loading import load_model  # noqa: F401 (imported here: "after_imports" counts them)
    from rlhf_lab.reward_model import load_reward_model  # noqa: F401
    rss["after_imports"] = proc_status("VmRSS")

    build_start = time.perf_counter()
    prompts = json.loads((work / "prompts.json").read_text())["prompts"]
    pcfg = lab_ppo.ppo_config(
        algo=algo, group_size=cfg.group_size, steps=cfg.warmup + cfg.updates + 2, batch_size=cfg.batch_size,
        minibatch_size=cfg.batch_size, micro_batch_size=cfg.micro_batch_size, ppo_epochs=cfg.epochs,
        max_new_tokens=cfg.response_length, temperature=cfg.temperature,
        no_eos_score=None,  # scores as the reward model gives them, as TRL's (no fixed score without EOS)
        kl_coef=cfg.kl_coef, adaptive_kl=False, kl_loss_coef=cfg.kl_coef, lr=cfg.lr, r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha, seed=cfg.seed, device="cpu")
    trainer, reward = our_trainer(pcfg, work, prompts)
    build_seconds = time.perf_counter() - build_start
    rss["after_build"] = proc_status("VmRSS")

    updates = time_our_updates(trainer, cfg.warmup + cfg.updates, f"{algo} ", "samples")
    return {"updates": updates, "build_seconds": build_seconds, "rss": rss,
            "trainable_parameters": sum(p.numel() for p in trainer.params), "threads": torch.get_num_threads()}


# -----------------------------------------------------------------------------
# children: TRL's trainers


def trl_common(cfg: BenchConfig, work: Path, method: str) -> dict:
    """The TrainingArguments every TRL side gets: fp32 on the CPU, no dropout, no gradient
    checkpointing, no saving or reporting, a constant learning rate, a log line per step (ours
    computes its metrics every step too)."""
    return dict(output_dir=str(work / f"trl_{method}_out"), report_to="none", save_strategy="no", disable_tqdm=True,
                logging_steps=1, seed=cfg.seed, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
                disable_dropout=True, learning_rate=cfg.lr, lr_scheduler_type="constant", dataloader_num_workers=0)


def trl_lora(cfg: BenchConfig):
    from peft import LoraConfig
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, bias="none",
                      target_modules=["c_attn", "c_proj", "c_fc"], task_type="CAUSAL_LM",
                      fan_in_fan_out=True)  # GPT-2's Conv1D stores (in, out)


def child_trl_dpo(cfg: BenchConfig, work: Path) -> dict:
    rss = {"after_imports": 0, "after_build": 0}
    import warnings

    import torch
    torch.set_num_threads(cfg.threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from trl import DPOConfig, DPOTrainer
    rss["after_imports"] = proc_status("VmRSS")

    build_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    pairs = Dataset.from_dict(json.loads((work / "pairs.json").read_text()))
    tokenizer = AutoTokenizer.from_pretrained(str(TINY))
    policy = AutoModelForCausalLM.from_pretrained(str(TINY), dtype=torch.float32)
    args = DPOConfig(**trl_common(cfg, work, "dpo"), per_device_train_batch_size=cfg.dpo_batch_size,
                     gradient_accumulation_steps=1, max_steps=cfg.warmup + cfg.updates, beta=cfg.dpo_beta,
                     loss_type=["sigmoid"], max_length=cfg.query_length + cfg.response_length,
                     precompute_ref_log_probs=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        trainer = DPOTrainer(model=policy, args=args, train_dataset=pairs, processing_class=tokenizer,
                             peft_config=trl_lora(cfg))
    build_seconds = time.perf_counter() - build_start
    rss["after_build"] = proc_status("VmRSS")

    # clocks: a step's trip runs from the previous on_step_end (the first: on_train_begin) to its own
    marks, shapes = [], []
    compute_loss = trainer.compute_loss

    def shaped_loss(model, inputs, *a, **k):
        shapes.append(tuple(inputs["input_ids"].shape))
        return compute_loss(model, inputs, *a, **k)

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

    trainer.compute_loss = shaped_loss
    trainer.add_callback(Clock())
    trainer.train()
    updates = []
    for i in range(len(marks) - 1):
        seconds = marks[i + 1] - marks[i]
        updates.append({"seconds": seconds, "pairs": cfg.dpo_batch_size, "sequences": shapes[i][0],
                        "sequence_length": shapes[i][1]})
        print(f"trl dpo step {i + 1}: {seconds:.3f} s, {cfg.dpo_batch_size / seconds:.1f} pairs/s, "
              f"{shapes[i][0]} sequences of {shapes[i][1]} tokens", flush=True)
    return {"updates": updates, "build_seconds": build_seconds, "rss": rss,
            "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "threads": torch.get_num_threads()}


def child_trl_rl(cfg: BenchConfig, work: Path, algo: str) -> dict:
    rss = {"after_imports": 0, "after_build": 0}
    import warnings

    import torch
    torch.set_num_threads(cfg.threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
    rss["after_imports"] = proc_status("VmRSS")

    build_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    prompts = json.loads((work / "prompts.json").read_text())["prompts"]
    tokenizer = AutoTokenizer.from_pretrained(str(TINY))
    policy = AutoModelForCausalLM.from_pretrained(str(TINY), dtype=torch.float32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(work / "reward_trl", num_labels=1)
    accumulation = cfg.batch_size // cfg.micro_batch_size
    shared = dict(
        # batch_size samples per generation, in optimizer steps of batch_size (micro-batches of
        # micro_batch_size accumulated); the generation reused for `epochs` optimizer steps
        per_device_train_batch_size=cfg.micro_batch_size, gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation, num_iterations=cfg.epochs, num_generations=cfg.group_size,
        max_steps=(cfg.warmup + cfg.updates) * cfg.epochs, max_completion_length=cfg.response_length,
        temperature=cfg.temperature, top_k=0, top_p=1.0, beta=cfg.kl_coef, epsilon=0.2)
    if algo == "grpo":
        args = GRPOConfig(**trl_common(cfg, work, algo), **shared, loss_type="dapo", scale_rewards="group")
        trainer_class = GRPOTrainer
    else:
        args = RLOOConfig(**trl_common(cfg, work, algo), **shared)
        trainer_class = RLOOTrainer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        trainer = trainer_class(model=policy, reward_funcs=reward_model, args=args,
                                train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer,
                                reward_processing_classes=tokenizer, peft_config=trl_lora(cfg))
    build_seconds = time.perf_counter() - build_start
    rss["after_build"] = proc_status("VmRSS")

    # clocks: _generate_and_score_completions opens each update (sampling is its _generate); the
    # optimizer steps follow; the next update's generation (or the end of train) closes the trip
    marks = {"start": [], "generated": [], "scored": [], "step_end": [], "tokens": [], "eos_share": []}
    generate_and_score, generate = trainer._generate_and_score_completions, trainer._generate

    def timed_generate_and_score(*a, **k):
        marks["start"].append(time.perf_counter())
        out = generate_and_score(*a, **k)
        marks["scored"].append(time.perf_counter())
        return out

    def timed_generate(*a, **k):
        out = generate(*a, **k)
        marks["generated"].append(time.perf_counter())
        completion_ids = out[1]
        marks["tokens"].append(max(len(c) for c in completion_ids))
        marks["eos_share"].append(statistics.mean(c[-1] == tokenizer.eos_token_id for c in completion_ids))
        return out

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks["step_end"].append(time.perf_counter())

    trainer._generate_and_score_completions, trainer._generate = timed_generate_and_score, timed_generate
    trainer.add_callback(Clock())
    trainer.train()
    train_end = time.perf_counter()

    updates = []
    starts = marks["start"] + [train_end]
    for i in range(len(marks["start"])):
        last_step = max(t for t in marks["step_end"] if starts[i] < t <= starts[i + 1])
        updates.append({"seconds": starts[i + 1] - starts[i],
                        "generation": marks["generated"][i] - marks["start"][i],
                        "scoring": marks["scored"][i] - marks["generated"][i],
                        "update": last_step - marks["scored"][i],
                        "generated_tokens": marks["tokens"][i], "eos_share": marks["eos_share"][i]})
        print(f"trl {algo} update {i + 1}: {updates[-1]['seconds']:.2f} s, "
              f"{cfg.batch_size / updates[-1]['seconds']:.1f} samples/s", flush=True)
    return {"updates": updates, "build_seconds": build_seconds, "rss": rss,
            "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "threads": torch.get_num_threads()}


CHILDREN = {
    "prepare": child_prepare,
    "matmul": lambda cfg, work: child_matmul(cfg.threads),
    "ours-dpo": child_ours_dpo,
    "trl-dpo": child_trl_dpo,
    "ours-rloo": lambda cfg, work: child_ours_rl(cfg, work, "rloo"),
    "trl-rloo": lambda cfg, work: child_trl_rl(cfg, work, "rloo"),
    "ours-grpo": lambda cfg, work: child_ours_rl(cfg, work, "grpo"),
    "trl-grpo": lambda cfg, work: child_trl_rl(cfg, work, "grpo"),
}


# -----------------------------------------------------------------------------
# parent: run the methods and sides, one subprocess each, and print the comparison


def per_update(cfg: BenchConfig, method: str) -> int:
    """Samples (RLOO, GRPO) or pairs (DPO) per update."""
    return cfg.dpo_batch_size if method == "dpo" else cfg.batch_size


def report(cfg: BenchConfig, results: dict, info: dict) -> str:
    """The Markdown tables for the README: a summary per method, then each method's details."""
    trl_name = f"TRL {info['versions']['trl']}"
    unit = {"dpo": "pairs / s", "rloo": "samples / s", "grpo": "samples / s"}
    trainer = {"dpo": "DPOTrainer", "rloo": "RLOOTrainer", "grpo": "GRPOTrainer"}
    methods = [m for m in cfg.methods if results.get(m)]
    rounds = f", fastest of {cfg.rounds} rounds" if cfg.rounds > 1 else ""
    lines = [
        f"rlhf_lab against {trl_name} on the tiny GPT-2 (LoRA r={cfg.lora_r}, fp32 CPU, {cfg.threads} "
        f"thread{'s' if cfg.threads > 1 else ''}; median of {cfg.updates} updates after {cfg.warmup} warm-up{rounds}). "
        f"RLOO, GRPO: {cfg.batch_size} samples per update ({cfg.batch_size // cfg.group_size} prompts x "
        f"{cfg.group_size}), {cfg.query_length}-token prompts, {cfg.response_length}-token responses, {cfg.epochs} "
        f"optimizer steps per batch" + (f" in chunks of {cfg.micro_batch_size}" if cfg.micro_batch_size < cfg.batch_size
                                       else "")
        + f". DPO: {cfg.dpo_batch_size} pairs per step ({cfg.dpo_batch_size // cfg.pairs_per_prompt} prompts x "
        f"{cfg.pairs_per_prompt} pairs of {cfg.dpo_samples_per_prompt} samples), "
        f"{cfg.query_length + cfg.response_length} tokens per text.",
        machine_line(info) + f"; fp32 matmul {info['matmul']['flops_per_second'] / 1e9:.0f} GFLOP/s",
        "",
        f"| method | throughput | rlhf_lab | {trl_name} | ours / TRL | peak RSS ours (GiB) | TRL | ours / TRL "
        "| MFU ours | TRL | goal: >= 2x, <= 0.6x |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in methods:
        ours, trl = results[m].get("ours"), results[m].get("trl")
        cells = [m.upper(), unit[m]]
        speed = memory = None
        cells += [f"{ours['summary']['per_second']:.1f}" if ours else "",
                  f"{trl['summary']['per_second']:.1f}" if trl else ""]
        if ours and trl:
            speed = ours["summary"]["per_second"] / trl["summary"]["per_second"]
            memory = ours["peak_rss"] / trl["peak_rss"]
        cells.append(f"{speed:.2f}x" if speed else "")
        cells += [f"{ours['peak_rss'] / GIB:.2f}" if ours else "", f"{trl['peak_rss'] / GIB:.2f}" if trl else "",
                  f"{memory:.2f}x" if memory else ""]
        cells += [f"{ours['mfu']:.1%}" if ours else "", f"{trl['mfu']:.1%}" if trl else ""]
        cells.append(("met" if speed >= 2 and memory <= 0.6 else
                      f"not met ({'speed' if speed < 2 else ''}{' and ' if speed < 2 and memory > 0.6 else ''}"
                      f"{'memory' if memory > 0.6 else ''})") if speed else "")
        lines.append("| " + " | ".join(cells) + " |")

    for m in methods:
        sides = [s for s in ("ours", "trl") if s in results[m]]
        res = results[m]

        def row(label, fmt, value, ratio=True):
            cells = [fmt(value(s)) for s in sides]
            if len(sides) == 2:
                a, b = value("ours"), value("trl")
                cells.append(f"{a / b:.2f}x" if ratio and b else "")
            return f"| {label} | " + " | ".join(cells) + " |"

        names = {"ours": "rlhf_lab", "trl": f"{trl_name} {trainer[m]}"}
        lines += ["", f"{m.upper()}:", "",
                  "| | " + " | ".join(names[s] for s in sides) + (" | ours / TRL |" if len(sides) == 2 else " |"),
                  "|---|" + "---:|" * (len(sides) + (1 if len(sides) == 2 else 0)),
                  row(f"{unit[m]} (median)", lambda v: f"{v:.1f}", lambda s: res[s]["summary"]["per_second"]),
                  row(f"{unit[m]} (min to max)", lambda v: v, lambda s: f"{res[s]['summary']['per_second_min']:.1f} to "
                      f"{res[s]['summary']['per_second_max']:.1f}", ratio=False),
                  row(f"seconds, {cfg.updates} timed updates", lambda v: f"{v:.1f}",
                      lambda s: res[s]["summary"]["timed_seconds"]),
                  row("seconds, whole subprocess", lambda v: f"{v:.1f}", lambda s: res[s]["wall_seconds"]),
                  row("peak RSS (GiB)" + (", highest round" if cfg.rounds > 1 else ""), lambda v: f"{v / GIB:.2f}",
                      lambda s: res[s]["peak_rss"]),
                  row("RSS after imports (GiB)", lambda v: f"{v / GIB:.2f}", lambda s: res[s]["rss"]["after_imports"]),
                  row("RSS with models built (GiB)", lambda v: f"{v / GIB:.2f}",
                      lambda s: res[s]["rss"]["after_build"]),
                  row("trainable parameters", lambda v: f"{v:,}", lambda s: res[s]["trainable_parameters"]),
                  row("model GFLOP/s (the task's FLOPs)", lambda v: f"{v / 1e9:.2f}",
                      lambda s: res[s]["model_flops_per_second"]),
                  row("MFU", lambda v: f"{v:.1%}", lambda s: res[s]["mfu"])]
        lines += heap_rows(row, lambda s, res=res: res[s], cfg.heap)
        if m == "dpo":
            lines.append(row("sequences through the model per step", lambda v: f"{v}",
                             lambda s: res[s]["updates"][-1]["sequences"]))
        else:
            lines.append(row("tokens generated per update", lambda v: v, lambda s: ", ".join(
                str(t) for t in sorted({u["generated_tokens"] for u in res[s]["updates"]})), ratio=False))
            for phase in ("generation", "scoring", "update", "other"):
                lines.append(row(f"s per update: {phase}", lambda v: v, lambda s, p=phase: (
                    f"{res[s]['summary']['phase_seconds'][p]:.2f} "
                    f"({res[s]['summary']['phase_seconds'][p] / res[s]['summary']['mean_seconds']:.0%})"), ratio=False))
    if cfg.heap:
        lines += ["", HEAP_NOTE + "."]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = config_parser(BenchConfig, __doc__, {"methods": list(METHODS), "sides": ["ours", "trl"]}).parse_args(argv)
    if args.child:  # in a subprocess: one method of one side
        cfg = BenchConfig(**json.loads((args.work / "config.json").read_text()))
        child_main(CHILDREN, args.child, args.work, dataclasses.replace(cfg, methods=tuple(cfg.methods),
                                                                        sides=tuple(cfg.sides)))
        return

    cfg = config_from_args(BenchConfig, args)
    cfg.check()
    check_heap(cfg, args.record)
    from importlib.metadata import PackageNotFoundError, version
    try:
        trl = version("trl")
    except PackageNotFoundError:
        raise SystemExit('trl is not installed: make a venv of its own for it and '
                         'pip install -e ".[dev,bench-current]" '
                         f"(trl=={TRL_VERSION}; ppo_vs_trl.py's trl==1.12.0 cannot share an environment with "
                         "it)") from None
    if trl != TRL_VERSION:
        print(f"note: this is trl {trl}; the figures in benchmarks/README.md are for trl {TRL_VERSION}", flush=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="vs_trl_current_"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    print(f"work folder: {work}", flush=True)
    info = run_info(cfg) | {"work": str(work)}

    def run(child: str) -> dict:
        return run_child(__file__, child, work, cfg.threads, args.verbose)

    prepare = run("prepare")
    print(f"prepared {prepare['prompts']} prompts and {prepare['pairs']} DPO pairs; the two reward models agree to "
          f"{prepare['reward_max_abs_difference']:.1e}", flush=True)
    info["matmul"] = run("matmul")
    flops = {m: update_flops(cfg, m, prepare["shape"]) for m in cfg.methods}
    print(f"fp32 matmul at {cfg.threads} thread(s): {info['matmul']['flops_per_second'] / 1e9:.1f} GFLOP/s; model "
          "work per update: " + ", ".join(f"{m} {f / 1e9:.1f} GFLOP" for m, f in flops.items()), flush=True)

    rounds = {m: {side: [] for side in cfg.sides} for m in cfg.methods}
    for r in range(cfg.rounds):
        for m in cfg.methods:
            for side in cfg.sides:
                print(f"running {side} {m} (round {r + 1} of {cfg.rounds}) ...", flush=True)
                result = run(f"{side}-{m}")
                result["summary"] = summarise_updates(result["updates"], cfg.warmup, per_update(cfg, m))
                rounds[m][side].append(result)
                tokens = sorted({u.get("generated_tokens") or u.get("sequences") for u in result["updates"]})
                print(f"  {side} {m}: {result['summary']['per_second']:.1f} {'pairs' if m == 'dpo' else 'samples'}/s, "
                      f"peak RSS {result['peak_rss'] / GIB:.2f} GiB (ru_maxrss {result['ru_maxrss'] / GIB:.2f}), "
                      f"{result['cpu_seconds']:.0f} CPU s in {result['wall_seconds']:.0f} s, load average "
                      f"{os.getloadavg()[0]:.2f}, "
                      f"{'sequences per step' if m == 'dpo' else 'tokens generated per update'} {tokens}", flush=True)
    info["load_after"] = os.getloadavg()
    # other jobs only ever slow the matmul down too: MFU is against the faster of its two measurements
    info["matmul"] = max(info["matmul"], run("matmul"), key=lambda m: m["flops_per_second"])
    # other jobs only ever slow a side down: keep each side's fastest round, and its highest peak memory
    results = {m: {} for m in cfg.methods}
    for m, sides in rounds.items():
        for side, runs in sides.items():
            best = max(runs, key=lambda res: res["summary"]["per_second"])
            model_flops = flops[m] * best["summary"]["per_second"] / per_update(cfg, m)
            results[m][side] = best | {"peak_rss": max(res["peak_rss"] for res in runs),
                                       "model_flops_per_update": flops[m], "model_flops_per_second": model_flops,
                                       "mfu": model_flops / info["matmul"]["flops_per_second"]}

    table = report(cfg, results, info)
    print("\n" + table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"info": info, "prepare": prepare, "results": results, "rounds": rounds,
                                         "table": table}, indent=2))
        print(f"\nwrote {args.json}")
    if args.record:
        write_record(args.record, "vs_trl_current.py", sys.argv[1:] if argv is None else list(argv), info, table)


if __name__ == "__main__":
    main()
