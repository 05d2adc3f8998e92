"""Our PPO against TRL 1.12's PPOTrainer: episodes per second and peak memory, side by side.

    pip install -e ".[bench]"                          # trl==1.12.0, the last release with PPOTrainer
    python benchmarks/ppo_vs_trl.py                    # 1 warm-up + 10 timed updates per side, 2 threads
    python benchmarks/ppo_vs_trl.py --updates 3        # a quick check that both sides run
    python benchmarks/ppo_vs_trl.py --rounds 3         # on a busy machine: each side's fastest of 3 rounds
    python benchmarks/ppo_vs_trl.py --sides ours --profile   # where one update of ours spends its time
    python benchmarks/ppo_vs_trl.py --heap             # where the memory goes: glibc's heap, in use and taken

One invocation runs each side in its own subprocess, one after the other, on the same tiny GPT-2
(data/tiny-gpt2: 4 layers, 128 dims, vocabulary 2,858), the same 8-token prompts, the same reward
function, and the same PPO shape: 64 episodes per update, 24-token responses, 4 PPO epochs over one
minibatch, LoRA r=8 on c_attn/c_proj/c_fc, fp32 on the CPU, `--threads` torch threads.

What each side computes per update (the designs differ; that is what is measured):
  ours  one PeftModel on one trunk: sample with the "policy" adapter (KV cache, stops when every
        response has EOS); one pass with the policy (log-probs, entropy, values from a linear head on
        the same hidden states), one with adapters off (reference), one with the "reward" adapter + head
        (reward); 4 x (forward + backward) of the policy with its value head. Trains LoRA + value head.
  TRL   policy = PeftModel (LoRA) on a GPT-2, reference = the same with the adapter disabled, value
        model = a second full GPT2ForSequenceClassification (num_labels=1), reward model = a third one.
        Generate (KV cache, logits of every step kept); one pass each of reference, value model and
        reward model; 4 x (forward + backward) of policy and value model. Trains LoRA + the whole value
        model (TRL's design).
The reward is one function on both sides: the tiny trunk, a LoRA "reward" adapter whose B is zero (so
it adds nothing, but ours pays for running it) and a linear head N(0, 1/sqrt(129)). TRL gets it as a
GPT2ForSequenceClassification with the same head weights; the `prepare` step checks that both score the
same sequences alike (max abs difference printed). Its scores are not meaningful: speed and memory do not
depend on what the reward likes, and both sides sample 24 tokens per update (the log says so).

Measured per side: episodes per second (median over the timed updates; each update's wall time is one
full trip of the training loop), the timed updates' total seconds, the whole subprocess's seconds, peak
resident memory (VmHWM of the subprocess, cross-checked with wait4's ru_maxrss), resident memory once
the models are built, the time split generation / scoring (the no-grad passes, rewards, advantages)
/ update (the PPO epochs), and model-FLOPs utilisation: the task's model FLOPs per second (one count for
both sides, update_flops: what a design adds or saves does not count) over the fp32 matmul rate that
a `matmul` step measures on the same machine at the same thread count (bench_common.child_matmul).
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
                          peak_rss, pick_prompts, proc_status, run_child, run_info, save_reward_models,
                          time_our_updates, write_record)


@dataclass
class BenchConfig:
    """One benchmark run; saved as config.json in the work folder and handed to each side."""

    updates: int = 10  # timed PPO updates per side
    warmup: int = 1  # updates run first and not timed (allocator, first-call overheads)
    threads: int = 2  # torch threads in each subprocess (the dev venv's sitecustomize would set 1)
    batch_size: int = 64  # episodes per update, in one minibatch
    ppo_epochs: int = 4  # passes over each batch (Ziegler et al. 2019)
    query_length: int = 8  # prompt tokens: the openings of training reviews, cut to exactly this many
    response_length: int = 24  # new tokens sampled per episode (TRL's response_length, our max_new_tokens)
    micro_batch_size: int = 64  # episodes per forward + backward in the PPO epochs, both sides; below
    # batch_size the gradients of the chunks are summed into the one optimizer step per minibatch (ours:
    # PPOConfig.micro_batch_size; TRL: per_device_train_batch_size x gradient_accumulation_steps)
    lora_r: int = 8  # LoRA rank of the policy, both sides
    lora_alpha: float = 16.0  # LoRA scale alpha / r = 2, both sides
    lr: float = 3e-4  # Adam(W) learning rate, both sides, constant; speed does not depend on it
    kl_coef: float = 0.05  # a fixed beta on both sides (TRL's default; its PPOTrainer has no adaptive KL)
    temperature: float = 1.0  # sampling temperature, top_k 0, top_p 1 on both sides
    seed: int = 0  # prompts order, LoRA, heads, sampling
    sides: tuple[str, ...] = ("ours", "trl")  # which sides to run, in this order
    rounds: int = 1  # run the sides this many times, interleaved, and keep each side's fastest round
    profile: bool = False  # also profile one extra update of ours (torch.profiler + cProfile)
    compile: bool = False  # ours with PPOConfig.compile (torch.compile; it compiles in the warm-up update);
    # TRL's side stays as it is by default, eager
    heap: bool = False  # also watch glibc's heap in each side (peak malloc'd bytes in use against the heap
    # taken for them: bench_common.HeapWatch); its thread slows the sides, so --record takes it only to a
    # file of its own, with "heap" in its name


# -----------------------------------------------------------------------------
# summaries (standard library only: the parent process must not import torch, see bench_common.run_child)


def summarise_updates(updates: list[dict], warmup: int, batch_size: int) -> dict:
    """Median episodes per second and mean phase seconds over the timed updates (warm-up left out)."""
    timed = updates[warmup:]
    if not timed:
        raise SystemExit("no timed updates: use --updates 1 or more")
    seconds = [u["seconds"] for u in timed]
    phases = {k: statistics.mean(u[k] for u in timed) for k in ("generation", "scoring", "update")}
    phases["other"] = max(0.0, statistics.mean(seconds) - sum(phases.values()))
    return {"episodes_per_second": statistics.median(batch_size / s for s in seconds),
            "episodes_per_second_min": min(batch_size / s for s in seconds),
            "episodes_per_second_max": max(batch_size / s for s in seconds),
            "timed_seconds": sum(seconds), "mean_seconds": statistics.mean(seconds), "phase_seconds": phases}


# -----------------------------------------------------------------------------
# child: the shared inputs (prompts, the reward model in both formats) and the check that they agree


def child_prepare(cfg: BenchConfig, work: Path) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhf_lab.loading import load_model
    from rlhf_lab.ppo import PPOConfig, TrunkRewardModel, add_policy_adapter
    from rlhf_lab.reward_model import load_reward_model

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    trunk, tokenizer = load_model(str(TINY), device="cpu")
    prompts, ids = pick_prompts(tokenizer, cfg.query_length)
    if len(prompts) < cfg.batch_size:
        raise SystemExit(f"only {len(prompts)} prompts of {cfg.query_length} tokens; need {cfg.batch_size}")
    (work / "prompts.json").write_text(json.dumps({"prompts": prompts, "input_ids": ids}))
    save_reward_models(trunk, tokenizer, work, cfg.lora_r, cfg.lora_alpha)

    # check: both score the same rollouts alike, each read the way its trainer reads it
    from trl.experimental.utils import get_reward  # what TRL's PPOTrainer calls

    from rlhf_lab.generation import Rollout, first_eos_mask
    B, T = 16, cfg.response_length
    query = torch.tensor(ids[:B])                                          # (B, Tq)
    response = torch.randint(2, len(tokenizer), (B, T))                    # (B, T)
    response[torch.arange(B), torch.randint(0, T, (B,))] = tokenizer.eos_token_id
    response[: B // 4, :] = torch.where(response[: B // 4] == tokenizer.eos_token_id, 5, response[: B // 4])  # no EOS
    mask, ended = first_eos_mask(response, tokenizer.eos_token_id)
    response = torch.where(mask.bool(), response, torch.full_like(response, tokenizer.pad_token_id))
    rollout = Rollout(query, torch.ones_like(query), response, mask, ended)
    trunk2, _ = load_model(str(TINY), device="cpu")
    policy = add_policy_adapter(trunk2, PPOConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha))
    ours_scores = TrunkRewardModel(load_reward_model(work / "reward_ours", trunk=policy, tokenizer=tokenizer)) \
        .score([""] * B, [""] * B, rollout)
    trl_rm = AutoModelForSequenceClassification.from_pretrained(work / "reward_trl", num_labels=1).eval()
    with torch.no_grad():
        _, trl_scores, _ = get_reward(trl_rm, torch.cat([query, response], 1), tokenizer.pad_token_id, query.shape[1])
    diff = (ours_scores - trl_scores).abs().max().item()
    if not diff < 1e-4:
        raise SystemExit(f"the two reward models disagree (max abs difference {diff:.2e}); the benchmark "
                         "would not compare like with like")
    # the policy adapter's weights only: load_reward_model put the "reward" adapter on the same model
    lora_params = sum(p.numel() for n, p in policy.named_parameters() if "lora_" in n and ".policy." in n)
    return {"prompts": len(prompts), "reward_max_abs_difference": diff,
            "reward_score_std": ours_scores.std().item(), "shape": model_shape(trunk2, lora_params)}


# -----------------------------------------------------------------------------
# child: our PPO


def child_ours(cfg: BenchConfig, work: Path) -> dict:
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
        steps=cfg.warmup + cfg.updates + 2, batch_size=cfg.batch_size, minibatch_size=cfg.batch_size,
        micro_batch_size=cfg.micro_batch_size, ppo_epochs=cfg.ppo_epochs, max_new_tokens=cfg.response_length,
        temperature=cfg.temperature,
        kl_coef=cfg.kl_coef, adaptive_kl=False, lr=cfg.lr, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
        seed=cfg.seed, device="cpu", compile=cfg.compile)
    trainer, reward = our_trainer(pcfg, work, prompts)
    build_seconds = time.perf_counter() - build_start
    rss["after_build"] = proc_status("VmRSS")

    updates = time_our_updates(trainer, cfg.warmup + cfg.updates, "", "episodes")

    peak = peak_rss()  # before the profiler adds its own memory
    profile = profile_ours(trainer, work) if cfg.profile else None
    heads = [trainer.value_head, reward.reward_model.head]
    return {"updates": updates, "build_seconds": build_seconds, "rss": rss, "profile": profile, "peak_rss": peak,
            "parameter_bytes": lab_ppo.parameter_memory(trainer.model, heads=heads)["total"],
            "trainable_parameters": sum(p.numel() for p in trainer.params),
            "threads": torch.get_num_threads()}


def profile_ours(trainer, work: Path) -> dict:
    """One more update under torch.profiler, then one under cProfile; the tables go to the work folder."""
    import cProfile
    import io
    import pstats

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from rlhf_lab import ppo as lab_ppo

    # labels for the profiler: the module functions PPOTrainer calls by name (those this version has)
    wrapped = {}
    for name in ("generate_tokens", "sample_responses", "forward_response", "logprobs_from_logits",
                 "entropy_from_logits", "policy_loss", "value_loss", "gae", "kl_shaped_rewards", "gold_scores"):
        original = getattr(lab_ppo, name, None)
        if not callable(original):
            continue

        def labelled(*args, __f=original, __name=name, **kwargs):
            with record_function(f"ppo.{__name}"):
                return __f(*args, **kwargs)

        wrapped[name] = original
        setattr(lab_ppo, name, labelled)
    reward_score = trainer.reward.score

    def labelled_reward(*args, **kwargs):
        with record_function("ppo.reward.score"):
            return reward_score(*args, **kwargs)

    trainer.reward.score = labelled_reward
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("ppo.step"):
            trainer.step()
    averages = prof.key_averages()
    by_total = averages.table(sort_by="cpu_time_total", row_limit=40)
    by_self = averages.table(sort_by="self_cpu_time_total", row_limit=30)
    for name, original in wrapped.items():
        setattr(lab_ppo, name, original)
    trainer.reward.score = reward_score

    profiler = cProfile.Profile()
    profiler.enable()
    trainer.step()
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(45)
    text = ("== torch.profiler, by total CPU time ==\n" + by_total + "\n== torch.profiler, by self CPU time ==\n"
            + by_self + "\n== cProfile, by cumulative time ==\n" + stream.getvalue())
    (work / "profile_ours.txt").write_text(text)
    labels = {e.key: e.cpu_time_total / 1e6 for e in averages if e.key.startswith("ppo.")}
    return {"file": str(work / "profile_ours.txt"), "labels_seconds": labels,
            "top_self": [(e.key, e.self_cpu_time_total / 1e6) for e in
                         sorted(averages, key=lambda e: -e.self_cpu_time_total)[:15]]}


# -----------------------------------------------------------------------------
# child: TRL 1.12's PPOTrainer


def child_trl(cfg: BenchConfig, work: Path) -> dict:
    rss = {"after_imports": 0, "after_build": 0}
    import warnings

    import torch
    torch.set_num_threads(cfg.threads)
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

    import trl.experimental.ppo.ppo_trainer as trl_ppo
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    rss["after_imports"] = proc_status("VmRSS")

    build_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    ids = json.loads((work / "prompts.json").read_text())["input_ids"]
    tokenizer = AutoTokenizer.from_pretrained(str(TINY))
    tokenizer.padding_side = "left"  # TRL expects left-padded queries (ours need no padding at all)
    policy = AutoModelForCausalLM.from_pretrained(str(TINY), dtype=torch.float32)
    value_model = AutoModelForSequenceClassification.from_pretrained(str(TINY), num_labels=1)
    reward_model = AutoModelForSequenceClassification.from_pretrained(work / "reward_trl", num_labels=1)
    for m in (value_model, reward_model):
        m.config.pad_token_id = tokenizer.pad_token_id
    peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, bias="none",
                             target_modules=["c_attn", "c_proj", "c_fc"], task_type="CAUSAL_LM",
                             fan_in_fan_out=True)  # GPT-2's Conv1D stores (in, out)
    args = PPOConfig(
        output_dir=str(work / "trl_out"), report_to="none", save_strategy="no", disable_tqdm=True,
        logging_steps=1, seed=cfg.seed, use_cpu=True,
        bf16=False, fp16=False,  # fp32; TRL's default bf16=True has no effect in PPOTrainer (README)
        gradient_checkpointing=False,  # nor has its default True with transformers 5.x (README)
        # one minibatch of batch_size, through forward + backward in chunks of micro_batch_size
        per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.batch_size // cfg.micro_batch_size, num_mini_batches=1,
        local_rollout_forward_batch_size=cfg.batch_size, num_ppo_epochs=cfg.ppo_epochs,
        total_episodes=cfg.batch_size * (cfg.warmup + cfg.updates), response_length=cfg.response_length,
        temperature=cfg.temperature, stop_token="eos", missing_eos_penalty=1.0, kl_coef=cfg.kl_coef,
        learning_rate=cfg.lr, lr_scheduler_type="constant", num_sample_generations=0,
    )
    train = Dataset.from_dict({"input_ids": ids})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=None,
                             reward_model=reward_model, train_dataset=train, value_model=value_model,
                             eval_dataset=train.select(range(cfg.batch_size)), peft_config=peft_config)
    build_seconds = time.perf_counter() - build_start
    rss["after_build"] = proc_status("VmRSS")

    # clocks: batch_generation opens each update; the first forward with grad on opens its PPO epochs;
    # on_step_end closes them; the next update's batch_generation (or the end of train) closes the trip
    marks = {"gen_start": [], "gen_end": [], "update_start": [], "step_end": [], "tokens": [], "pad_share": []}
    batch_generation, forward = trl_ppo.batch_generation, trl_ppo.forward

    def timed_generation(*a, **k):
        marks["gen_start"].append(time.perf_counter())
        query_responses, logits = batch_generation(*a, **k)
        marks["gen_end"].append(time.perf_counter())
        response = query_responses[:, cfg.query_length:]
        marks["tokens"].append(response.shape[1])
        marks["pad_share"].append((response == tokenizer.pad_token_id).float().mean().item())
        return query_responses, logits

    def timed_forward(*a, **k):
        if torch.is_grad_enabled() and len(marks["update_start"]) < len(marks["gen_start"]):
            marks["update_start"].append(time.perf_counter())
        return forward(*a, **k)

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks["step_end"].append(time.perf_counter())

    trl_ppo.batch_generation, trl_ppo.forward = timed_generation, timed_forward
    trainer.add_callback(Clock())
    trainer.train()
    train_end = time.perf_counter()
    checkpointing = bool(getattr(trainer.policy_model, "is_activation_checkpointing",
                                 getattr(trainer.policy_model, "is_gradient_checkpointing", False)))

    updates = []
    starts = marks["gen_start"] + [train_end]
    for i in range(len(marks["gen_start"])):
        seconds = starts[i + 1] - starts[i]
        updates.append({"seconds": seconds, "generation": marks["gen_end"][i] - marks["gen_start"][i],
                        "scoring": marks["update_start"][i] - marks["gen_end"][i],
                        "update": marks["step_end"][i] - marks["update_start"][i],
                        "generated_tokens": marks["tokens"][i], "pad_share": marks["pad_share"][i]})
        print(f"trl update {i + 1}: {seconds:.2f} s, {cfg.batch_size / seconds:.1f} episodes/s", flush=True)

    seen, parameter_bytes = set(), 0
    for m in (trainer.policy_model, trainer.value_model, trainer.reward_model):
        for p in m.parameters():
            if p.untyped_storage().data_ptr() not in seen:
                seen.add(p.untyped_storage().data_ptr())
                parameter_bytes += p.untyped_storage().nbytes()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {"updates": updates, "build_seconds": build_seconds, "rss": rss, "parameter_bytes": parameter_bytes,
            "trainable_parameters": trainable, "gradient_checkpointing": checkpointing,
            "threads": torch.get_num_threads()}


CHILDREN = {"prepare": child_prepare, "ours": child_ours, "trl": child_trl,
            "matmul": lambda cfg, work: child_matmul(cfg.threads)}


# -----------------------------------------------------------------------------
# parent: run the sides, one subprocess each, and print the comparison


def run_side(side: str, cfg: BenchConfig, work: Path, verbose: bool, profile: bool = False) -> dict:
    return run_child(__file__, side, work, cfg.threads, verbose, ("--profile",) if profile else ())


def update_flops(cfg: BenchConfig, shape: dict) -> float:
    """Model FLOPs of one PPO update of this shape, the same count for both sides (bench_common.pass_flops):
    sampling (prompt and response through the policy, the LM head at the response positions), one no-grad
    pass each of the policy (old log-probs and values), the reference and the reward model, and ppo_epochs
    forward + backward passes of the policy. What a design adds (TRL's value model) or saves (TRL's old
    log-probs from the generation logits) does not count: MFU measures the task's work per second."""
    B, T = cfg.batch_size, cfg.query_length + cfg.response_length
    R = cfg.response_length
    return (pass_flops(shape, B, T, R)                                   # generation
            + pass_flops(shape, B, T, R)                                 # policy: old log-probs, values
            + pass_flops(shape, B, T, R, lora=False)                     # reference
            + pass_flops(shape, B, T, 0, lora=False)                     # reward model (a scalar head)
            + cfg.ppo_epochs * pass_flops(shape, B, T, R, backward=True))  # the PPO epochs


def report(cfg: BenchConfig, results: dict, prepare: dict, info: dict) -> str:
    """The Markdown table for the README, with the machine, the versions and the load."""
    sides = [s for s in ("ours", "trl") if s in results]
    names = {"ours": "rlhf_lab" + (" (torch.compile)" if cfg.compile else ""), "trl": "TRL 1.12 PPOTrainer"}
    summary = {s: summarise_updates(results[s]["updates"], cfg.warmup, cfg.batch_size) for s in sides}

    def row(label, fmt, value, ratio=True):
        cells = [fmt(value(s)) for s in sides]
        if len(sides) == 2:
            a, b = value("ours"), value("trl")
            cells.append(f"{a / b:.2f}x" if ratio and b else "")
        return f"| {label} | " + " | ".join(cells) + " |"

    header = "| | " + " | ".join(names[s] for s in sides) + (" | ours / TRL |" if len(sides) == 2 else " |")
    lines = [
        f"PPO on the tiny GPT-2 ({cfg.batch_size} episodes per update, {cfg.query_length}-token prompts, "
        f"{cfg.response_length}-token responses, {cfg.ppo_epochs} epochs x 1 minibatch"
        + (f" in chunks of {cfg.micro_batch_size}" if cfg.micro_batch_size < cfg.batch_size else "")
        + f", LoRA r={cfg.lora_r}, "
        f"fp32 CPU, {cfg.threads} thread{'s' if cfg.threads > 1 else ''}; median of {cfg.updates} updates "
        f"after {cfg.warmup} warm-up" + (f", fastest of {cfg.rounds} rounds)" if cfg.rounds > 1 else ")"),
        machine_line(info),
        "",
        header,
        "|---|" + "---:|" * (len(sides) + (1 if len(sides) == 2 else 0)),
        row("episodes / s (median)", lambda v: f"{v:.1f}", lambda s: summary[s]["episodes_per_second"]),
        row("episodes / s (min to max)", lambda v: v, lambda s: f"{summary[s]['episodes_per_second_min']:.1f} to "
            f"{summary[s]['episodes_per_second_max']:.1f}", ratio=False),
        row(f"seconds, {cfg.updates} timed updates", lambda v: f"{v:.1f}", lambda s: summary[s]["timed_seconds"]),
        row("seconds, whole subprocess", lambda v: f"{v:.1f}", lambda s: results[s]["wall_seconds"]),
        row("peak RSS (GiB)" + (", highest round" if cfg.rounds > 1 else ""), lambda v: f"{v / GIB:.2f}",
            lambda s: results[s]["peak_rss"]),
        row("RSS after imports (GiB)", lambda v: f"{v / GIB:.2f}", lambda s: results[s]["rss"]["after_imports"]),
        row("RSS with models built (GiB)", lambda v: f"{v / GIB:.2f}", lambda s: results[s]["rss"]["after_build"]),
        row("parameters held (MiB)", lambda v: f"{v / 2**20:.1f}", lambda s: results[s]["parameter_bytes"]),
        row("trainable parameters", lambda v: f"{v:,}", lambda s: results[s]["trainable_parameters"]),
        row("model GFLOP/s (the task's FLOPs)", lambda v: f"{v / 1e9:.2f}",
            lambda s: results[s]["model_flops_per_second"]),
        row(f"MFU (fp32 matmul: {info['matmul']['flops_per_second'] / 1e9:.0f} GFLOP/s)", lambda v: f"{v:.1%}",
            lambda s: results[s]["mfu"]),
    ]
    lines += heap_rows(row, lambda s: results[s], cfg.heap)
    for phase in ("generation", "scoring", "update", "other"):
        lines.append(row(f"s per update: {phase}", lambda v: v, lambda s, p=phase: (
            f"{summary[s]['phase_seconds'][p]:.2f} ({summary[s]['phase_seconds'][p] / summary[s]['mean_seconds']:.0%})"),
            ratio=False))
    if len(sides) == 2:
        speed = summary["ours"]["episodes_per_second"] / summary["trl"]["episodes_per_second"]
        memory = results["ours"]["peak_rss"] / results["trl"]["peak_rss"]
        lines += ["", f"Goal (issue 6): episodes/s >= 2x TRL's: {speed:.2f}x, "
                  f"{'met' if speed >= 2 else 'not met'}; peak memory <= 0.6x TRL's: {memory:.2f}x, "
                  f"{'met' if memory <= 0.6 else 'not met'}."]
    if cfg.heap:
        lines += ["", HEAP_NOTE + "."]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = config_parser(BenchConfig, __doc__, {"sides": ["ours", "trl"]}).parse_args(argv)
    if args.child:  # in a subprocess: one side; --profile only where the parent asks for it
        cfg = BenchConfig(**json.loads((args.work / "config.json").read_text()))
        child_main(CHILDREN, args.child, args.work, dataclasses.replace(cfg, sides=tuple(cfg.sides),
                                                                        profile=args.profile))
        return

    cfg = config_from_args(BenchConfig, args)
    check_heap(cfg, args.record)
    if not 0 < cfg.micro_batch_size <= cfg.batch_size or cfg.batch_size % cfg.micro_batch_size:
        raise SystemExit(f"--micro-batch-size {cfg.micro_batch_size} must divide --batch-size {cfg.batch_size}")
    from importlib.util import find_spec
    if find_spec("trl") is None:  # the prepare step checks our reward against TRL's get_reward too
        raise SystemExit('trl is not installed: pip install -e ".[bench]" (trl==1.12.0)')
    work = args.work or Path(tempfile.mkdtemp(prefix="ppo_vs_trl_"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    print(f"work folder: {work}", flush=True)
    info = run_info(cfg) | {"work": str(work)}

    prepare = run_side("prepare", cfg, work, args.verbose)
    print(f"prepared {prepare['prompts']} prompts; the two reward models agree to "
          f"{prepare['reward_max_abs_difference']:.1e}", flush=True)
    info["matmul"] = run_side("matmul", cfg, work, args.verbose)
    flops = update_flops(cfg, prepare["shape"])
    print(f"fp32 matmul at {cfg.threads} thread(s): {info['matmul']['flops_per_second'] / 1e9:.1f} GFLOP/s; "
          f"one update is {flops / 1e9:.1f} GFLOP of model work", flush=True)
    rounds = {side: [] for side in cfg.sides}
    for r in range(cfg.rounds):
        for side in cfg.sides:
            print(f"running {side} (round {r + 1} of {cfg.rounds}) ...", flush=True)
            result = run_side(side, cfg, work, args.verbose, profile=cfg.profile and side == "ours" and r == 0)
            rounds[side].append(result)
            s = summarise_updates(result["updates"], cfg.warmup, cfg.batch_size)
            tokens = sorted({u["generated_tokens"] for u in result["updates"]})
            print(f"  {side}: {s['episodes_per_second']:.1f} episodes/s, peak RSS {result['peak_rss'] / GIB:.2f} GiB "
                  f"(ru_maxrss {result['ru_maxrss'] / GIB:.2f}), {result['cpu_seconds']:.0f} CPU s in "
                  f"{result['wall_seconds']:.0f} s, load average {os.getloadavg()[0]:.2f}, tokens generated per "
                  f"update {tokens}", flush=True)
    info["load_after"] = os.getloadavg()
    # other jobs only ever slow the matmul down too: MFU is against the faster of its two measurements
    info["matmul"] = max(info["matmul"], run_side("matmul", cfg, work, args.verbose),
                         key=lambda m: m["flops_per_second"])
    # other jobs only ever slow a side down: keep each side's fastest round, and its highest peak memory
    results = {}
    for side, runs in rounds.items():
        best = max(runs, key=lambda res: summarise_updates(res["updates"], cfg.warmup, cfg.batch_size)
                   ["episodes_per_second"])
        speed = summarise_updates(best["updates"], cfg.warmup, cfg.batch_size)["episodes_per_second"]
        results[side] = best | {"peak_rss": max(res["peak_rss"] for res in runs),
                                "profile": next((res["profile"] for res in runs if res.get("profile")), None),
                                "model_flops_per_update": flops,
                                "model_flops_per_second": flops * speed / cfg.batch_size,
                                "mfu": flops * speed / cfg.batch_size / info["matmul"]["flops_per_second"]}

    table = report(cfg, results, prepare, info)
    print("\n" + table)
    profile = results.get("ours", {}).get("profile")
    if profile:
        print(f"\nProfile of one update of ours (full tables: {profile['file']}):")
        for key, seconds in sorted(profile["labels_seconds"].items(), key=lambda kv: -kv[1]):
            print(f"  {key:28s} {seconds:6.2f} s (total, children included)")
        print("  top operators by self time: " + ", ".join(f"{k} {s:.2f} s" for k, s in profile["top_self"][:10]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"info": info, "prepare": prepare, "results": results,
                                         "rounds": rounds, "table": table}, indent=2))
        print(f"\nwrote {args.json}")
    if args.record:
        write_record(args.record, "ppo_vs_trl.py", sys.argv[1:] if argv is None else list(argv), info, table)


if __name__ == "__main__":
    main()
