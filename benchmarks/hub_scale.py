"""The hub world at GPT-2's size: one step of each stage with gpt2's full config (124M parameters, random
weights, GPT-2's real 50,257-token tokenizer) on this machine, and from those a stated estimate of the
default `rlhf-lab run --model gpt2 --data stanfordnlp/imdb` on one GPU.

    python benchmarks/hub_scale.py [--threads 2] [--repeats 3] [--json out.json] [--record benchmarks/results/hub_scale.json]

What it measures, each with the lab's own functions on hub-shaped data (tests/hub_world.py writes a Hugging
Face cache holding `gpt2` at full size and `stanfordnlp/imdb` in its hub layout; everything loads by those
names with HF_HUB_OFFLINE=1):
- SFT: one optimiser step on a batch of 16 demonstrations (forward, completion loss, backward, AdamW),
  and the held-out loss on 16 demonstrations (evaluate_loss: 200 of them, ~11 times a default run);
- sampling: one batch of 64 prompts x 48 new tokens (generate_tokens: the rankings, the normalisation, PPO's
  rollouts and its evaluation are all made of these);
- reward model: one step on 32 pairs (the pairwise loss, backward through the reward adapter and head);
- PPO: one whole update of the real trainer (build_trainer on the SFT adapter and reward model made here):
  64 rollouts, scoring, 4 epochs x 2 minibatches.
For each: seconds (median of --repeats), the process's peak memory (VmHWM, reset before each) and the FLOPs
torch.utils.flop_counter counts (matrix products and attention), so model-FLOPs utilisation = FLOPs / seconds
/ this machine's own matmul rate (a 2048^3 fp32 product, timed here).

The estimate for one GPU: each step of the default hub run (counts from the configs: SFT 250 steps and 11
evaluations of 200 demonstrations, 1,600 samples to rank, 512 to normalise, the reward model's 250 steps, 40
PPO updates, their normalisation and evaluation samples) costs the larger of its FLOPs at an assumed 30% of
the GPU's dense bf16 peak, and a floor per step for what small batches cannot hide (Python, kernel launches):
DECODE_FLOOR per generated token position, TRAIN_FLOOR per optimiser step, FORWARD_FLOOR per forward pass.
Those floors are assumptions, stated, not measurements: no GPU was lent to the session that wrote this.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # hub_world.py: the offline hub cache the tests use

H200_BF16_DENSE = 989e12  # FLOP/s, NVIDIA's H100/H200 SXM dense bf16 figure (the sparse one is 2x)
ASSUMED_MFU = 0.30  # of that peak, for the compute-bound part of a step (GPT-2 small, batches of 16-64)
DECODE_FLOOR = 0.015  # s per generated position of a batch: HF generate's Python and ~150 kernel launches
TRAIN_FLOOR = 0.030  # s per optimiser step (forward + backward + AdamW of a LoRA'd GPT-2)
FORWARD_FLOOR = 0.010  # s per forward pass of a batch (scoring, reference and value passes, evaluation)

GPT2_124M = {"n_layer": 12, "n_embd": 768, "n_head": 12}  # the hub's gpt2 (Radford et al. 2019)


# -----------------------------------------------------------------------------
# measuring one block: seconds, peak memory, FLOPs


def measure(fn, repeats: int, name: str = "") -> dict:
    """Median seconds of `fn()` over `repeats` runs, the peak memory of the process while it ran (the
    first run's high-water mark, reset before it) and the FLOPs of one run."""
    from torch.utils.flop_counter import FlopCounterMode

    from rlhf_lab.compare import measured

    print(f"  measuring {name or fn.__name__} ({repeats} runs after a counted warm-up) ...", flush=True)
    with FlopCounterMode(display=False) as counter:
        fn()  # warm-up, counted once
    flops = counter.get_total_flops()
    seconds = []
    with measured("cpu") as cost:
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - start)
    return {"seconds": statistics.median(seconds), "flops": flops, "peak_gib": cost["peak_gib"]}


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n x n x n fp32 matrix product on this machine (the MFU's denominator)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


# -----------------------------------------------------------------------------
# the stages' steps


def build_world(root: Path) -> None:
    """The hub cache with gpt2 at its full size, and the environment that points the libraries at it."""
    home = root / "hf"  # where build_hub_cache writes; set before transformers is imported, which reads it
    os.environ.update({"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "1",
                       "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    import hub_world

    hub_world.GPT2_CONFIG = hub_world.GPT2_CONFIG | GPT2_124M
    env = hub_world.build_hub_cache(root)
    assert env == {k: os.environ[k] for k in env}, env


def steps(repeats: int, workdir: Path) -> dict:
    import torch

    from rlhf_lab import gold
    from rlhf_lab.demonstrations import load_demonstrations
    from rlhf_lab.generation import generate_tokens
    from rlhf_lab.loading import load_model, load_prompts
    from rlhf_lab.ppo import build_trainer, ppo_config
    from rlhf_lab.ppo_math import pairwise_loss
    from rlhf_lab.reward_model import (RewardModel, add_reward_adapter, build_trunk, encode, pad_batch,
                                       reward_config, save_reward_model)
    from rlhf_lab.sft import (add_lora, collate, completion_loss, evaluate_loss, forward_logits, save_sft,
                              sft_config, tokenize_demonstrations, train_sft)

    gold.set_reference("english")
    results = {}
    model, tokenizer = load_model("gpt2", device="cpu")
    results["parameters"] = sum(p.numel() for p in model.parameters())
    demos = load_demonstrations("stanfordnlp/imdb", "train", limit=16)
    sft_cfg = sft_config(False, model="gpt2", data="stanfordnlp/imdb", device="cpu")
    examples = tokenize_demonstrations(demos, tokenizer, sft_cfg)
    results["sft_tokens_per_example"] = statistics.mean(len(e["input_ids"]) for e in examples)

    # SFT: one step, and the held-out loss on 16 demonstrations
    policy = add_lora(model, sft_cfg)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=sft_cfg.lr)
    batch = collate(examples[: sft_cfg.batch_size], tokenizer)

    def sft_step():
        loss = completion_loss(forward_logits(policy, batch), batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    results["sft_step"] = measure(sft_step, repeats)
    results["sft_eval_16"] = measure(lambda: evaluate_loss(policy, tokenizer, None, sft_cfg, examples=examples),
                                     repeats, "sft_eval_16")

    # sampling: 64 prompts x 48 new tokens
    prompts = (list(load_prompts("stanfordnlp/imdb", "train")["prompt"]) * 64)[:64]
    policy.eval()
    with torch.no_grad():
        results["sample_64x48"] = measure(lambda: generate_tokens(policy, tokenizer, prompts, max_new_tokens=48),
                                          repeats, "sample_64x48")
        rollout = generate_tokens(policy, tokenizer, prompts, max_new_tokens=48)
    responses = tokenizer.batch_decode(rollout.response, skip_special_tokens=True)

    # the SFT adapter and a reward model on disk, for the PPO trainer (the real pipeline's files)
    sft_dir = workdir / "01_sft" / "adapter"
    sft_result = train_sft(sft_config(False, model="gpt2", data="stanfordnlp/imdb", n_train=16, n_eval=8, epochs=1,
                                      device="cpu"), progress=False)
    save_sft(sft_result, sft_dir)
    del sft_result, policy, optimizer

    # reward model: one step on 32 pairs (64 texts) on a trunk with the reward adapter
    rm_cfg = reward_config(False, trunk="gpt2", sft_adapter=str(sft_dir), device="cpu")
    trunk, _ = build_trunk("gpt2", str(sft_dir), device="cpu")  # the SFT model merged, as stage 2b builds it
    reward_model = RewardModel(add_reward_adapter(trunk, rm_cfg), tokenizer=tokenizer, max_length=rm_cfg.max_length)
    texts = [encode(tokenizer, p, r, rm_cfg.max_length) for p, r in zip(prompts, responses)]  # 64 texts = 32 pairs
    input_ids, attention_mask = pad_batch(texts, tokenizer.pad_token_id)
    params = [p for p in reward_model.parameters() if p.requires_grad]
    rm_optimizer = torch.optim.AdamW(params, lr=rm_cfg.lr)

    def rm_step():
        scores = reward_model(input_ids, attention_mask)  # (64,)
        loss = pairwise_loss(scores[0::2], scores[1::2])
        rm_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        rm_optimizer.step()

    results["rm_step"] = measure(rm_step, repeats)
    with torch.no_grad():
        results["rm_forward_64"] = measure(lambda: reward_model(input_ids, attention_mask), repeats, "rm_forward_64")
    rm_dir = workdir / "03_reward_model" / "reward_model"
    reward_model.normalise_on([{"prompt": p, "completion": r} for p, r in zip(prompts[:16], responses[:16])])
    save_reward_model(reward_model, rm_dir, rm_cfg, {"gold_accuracy": float("nan")})
    del reward_model, trunk, rm_optimizer

    # PPO: one whole update of the real trainer
    ppo_cfg = ppo_config(False, model="gpt2", prompts="stanfordnlp/imdb", sft=str(sft_dir), reward_model=str(rm_dir),
                         reward="rm", device="cpu", steps=1 + 2 * repeats, norm_episodes=64, eval_prompts=64)
    trainer = build_trainer(ppo_cfg, progress=False)
    results["ppo_update"] = measure(trainer.step, repeats, "ppo_update")
    return results


# -----------------------------------------------------------------------------
# the default hub run, step by step, and the estimate


def default_run_counts() -> dict:
    """How many of each measured step the default hub run makes (from the configs)."""
    from rlhf_lab import pipeline
    from rlhf_lab.ppo import ppo_config
    from rlhf_lab.reward_model import reward_config
    from rlhf_lab.sft import N_EVAL_MAX, N_TRAIN_MAX, sft_config

    sft, rm, ppo = sft_config(False), reward_config(False), ppo_config(False)
    sft_steps = math.ceil(N_TRAIN_MAX / sft.batch_size) * sft.epochs
    rankings = pipeline.N_RANKINGS[False]
    pairs = min(2_000, rankings * 6)  # K = 4: 6 pairs a ranking, at most 2,000 trained
    rm_steps = math.ceil(pairs / rm.batch_size) * rm.epochs
    return {
        "sft_steps": sft_steps,
        "sft_eval_examples": (1 + sft_steps // sft.eval_every) * N_EVAL_MAX,
        # batches of 64 x 48 tokens: rankings (K samples a prompt), normalisation, PPO's normalisation and its
        # evaluation (SFT and policy samples of the held-out prompts), the report's base/SFT/PPO samples
        "sample_batches": math.ceil(rankings * 4 / 64) + math.ceil(pipeline.N_NORMALISE[False] / 64)
        + math.ceil(ppo.norm_episodes / 64) + 2 * math.ceil(ppo.eval_prompts / 64) + 3,
        "rm_steps": rm_steps,
        "rm_forward_batches": (1 + rm_steps // rm.eval_every) * math.ceil(0.15 * pairs * 2 / 64)
        + math.ceil(pipeline.N_NORMALISE[False] / 64) + 2 * math.ceil(ppo.eval_prompts / 64),
        "ppo_updates": ppo.steps,
    }


def estimate(results: dict, counts: dict) -> dict:
    """FLOPs of the default run by part, and seconds on one GPU (the larger of FLOPs at the assumed MFU and
    the per-step floors)."""
    def gpu(flops, floor):
        return max(flops / (H200_BF16_DENSE * ASSUMED_MFU), floor)

    per_example_eval = results["sft_eval_16"]["flops"] / 16
    rollout_floor = 48 * DECODE_FLOOR
    ppo_floor = rollout_floor + 3 * FORWARD_FLOOR + 4 * 2 * TRAIN_FLOOR  # scoring passes, 4 epochs x 2 minibatches
    parts = {  # name: (how many in the run, the measured step, its floor on a GPU)
        "SFT training": (counts["sft_steps"], "sft_step", TRAIN_FLOOR),
        "SFT evaluation": (counts["sft_eval_examples"] / 16, "sft_eval_16", FORWARD_FLOOR),
        "sampling (rankings, normalisation, evaluation)": (counts["sample_batches"], "sample_64x48", rollout_floor),
        "reward model training": (counts["rm_steps"], "rm_step", TRAIN_FLOOR),
        "reward model scoring": (counts["rm_forward_batches"], "rm_forward_64", FORWARD_FLOOR),
        "PPO updates": (counts["ppo_updates"], "ppo_update", ppo_floor),
    }
    rows = {name: {"count": n, "flops": n * results[step]["flops"], "gpu_seconds": n * gpu(results[step]["flops"], floor),
                   "cpu_seconds": n * results[step]["seconds"]}
            for name, (n, step, floor) in parts.items()}
    total = sum(r["flops"] for r in rows.values())
    return {"parts": rows, "total_flops": total, "gpu_seconds": sum(r["gpu_seconds"] for r in rows.values()),
            "cpu_seconds": sum(r["cpu_seconds"] for r in rows.values()),
            "sft_eval_share_of_flops": rows["SFT evaluation"]["flops"] / total,
            "sft_eval_flops_per_example": per_example_eval}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--record", default=None,
                   help="also write the record the READMEs quote (date, machine, versions, command, tables, figures) "
                        "here: benchmarks/results/hub_scale.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        build_world(Path(tmp))  # before transformers reads HF_HUB_OFFLINE
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        rate = matmul_rate()
        results = steps(args.repeats, Path(tmp))
    counts = default_run_counts()
    est = estimate(results, counts)
    print(f"gpt2 config, random weights: {results['parameters'] / 1e6:.1f}M parameters; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; matmul {rate / 1e9:.1f} GFLOP/s (fp32)")
    table = report(results, est, rate)
    print("\n" + table)
    if args.json:
        Path(args.json).write_text(json.dumps({"matmul_flops_per_second": rate, "steps": results, "counts": counts,
                                               "estimate": est}, indent=2) + "\n")
    if args.record:
        from bench_common import machine, versions, write_record

        info = {"date": datetime.date.today().isoformat(), "machine": machine(), "versions": versions(),
                "config": {"repeats": args.repeats, "threads": torch.get_num_threads()},
                "matmul": {"flops_per_second": rate}}
        write_record(Path(args.record), "hub_scale.py", sys.argv[1:] if argv is None else list(argv), info, table,
                     {"steps": results, "counts": counts, "estimate": est})


def report(results: dict, est: dict, rate: float) -> str:
    """The two Markdown tables benchmarks/README.md shows (one step of each stage; the default hub run's
    parts and the GPU estimate) and the sentence on SFT evaluation's share, the GPU and this machine."""
    lines = ["| step | seconds | peak memory (GiB) | GFLOPs | MFU |", "|---|---|---|---|---|"]
    names = {"sft_step": "SFT step (16 demonstrations)", "sft_eval_16": "SFT held-out loss (16 demonstrations)",
             "sample_64x48": "sampling (64 prompts x 48 tokens)", "rm_step": "reward-model step (32 pairs)",
             "rm_forward_64": "reward-model scores (64 texts)", "ppo_update": "PPO update (64 episodes)"}
    for key, name in names.items():
        r = results[key]
        lines.append(f"| {name} | {r['seconds']:.2f} | {r['peak_gib']:.2f} | {r['flops'] / 1e9:,.0f} | "
                     f"{r['flops'] / r['seconds'] / rate:.0%} |")
    lines += ["", "The default hub run (rlhf-lab run --model gpt2 --data stanfordnlp/imdb), from the configs:", "",
              "| part | count | TFLOPs | one GPU, estimated (s) |", "|---|---|---|---|"]
    for name, r in est["parts"].items():
        lines.append(f"| {name} | {r['count']:,.0f} | {r['flops'] / 1e12:,.1f} | {r['gpu_seconds']:,.0f} |")
    lines.append(f"| total | | {est['total_flops'] / 1e12:,.1f} | {est['gpu_seconds']:,.0f} |")
    lines += ["", f"SFT evaluation: {est['sft_eval_share_of_flops']:.1%} of the run's FLOPs. One GPU (H200, dense bf16 "
              f"{H200_BF16_DENSE / 1e12:.0f} TFLOP/s at an assumed {ASSUMED_MFU:.0%}, floors {DECODE_FLOOR * 1e3:.0f} ms "
              f"a generated position, {TRAIN_FLOOR * 1e3:.0f} ms a step, {FORWARD_FLOOR * 1e3:.0f} ms a forward pass): "
              f"about {est['gpu_seconds'] / 60:.1f} minutes of training and sampling, plus loading (an estimate). "
              f"On this machine: about {est['cpu_seconds'] / 3600:.1f} hours."]
    return "\n".join(lines)

if __name__ == "__main__":
    main()
