"""Beyond PPO: PPO, RLOO, GRPO, DPO and best-of-n on one task, measured one way (notebook 06).

Every method starts from the same SFT model and spends the same labels: the reward model's pairs
(RLHF's methods and best-of-n use the reward model trained on them; DPO trains on the pairs
themselves). Every method is measured on the same held-out prompts with the same seed
(evaluation.evaluate_samples): the gold score (what we wanted), the reward model's score (the proxy)
and the KL of its samples to the SFT model, in nats per response. So the methods sit on one chart,
gold against KL: the frontier of how much gold each buys for how far it moves.

    ppo = run_rl("ppo", sft, reward_model, prompts)          # PPO measured every few updates
    grpo = run_rl("grpo", sft, reward_model, prompts)
    dpo = run_dpo(sft, reward_model, prompts, betas=(0.1, 0.3, 1.0))
    bon = run_best_of_n(sft, reward_model, prompts, n=64)
    rows = frontier([ppo, grpo, dpo, bon])                   # each method at its best setting
    fig = plot_frontier([ppo, grpo, dpo, bon])

Each run returns a dict: method, label, points (one per measurement: the setting, kl, gold, gold_se,
proxy, seconds), samples of its best point, and its cost: `train_seconds` (the optimiser's steps,
or best-of-n's sampling and scoring), `wall_seconds` (everything, measurements included) and
`peak_gib`, the most memory the process held while it ran (`measured`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .evaluation import evaluate_samples
from .trunk import POLICY

GIB = 2**30
LABELS = {"ppo": "PPO", "rloo": "RLOO", "grpo": "GRPO", "dpo": "DPO", "best_of_n": "best-of-n"}
COLORS = {"ppo": "C0", "rloo": "C1", "grpo": "C2", "dpo": "C3", "best_of_n": "C4"}


# -----------------------------------------------------------------------------
# cost: wall time and peak memory of one block


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's record of this process's peak resident memory (Linux: VmHWM, through
    /proc/self/clear_refs, 'echo 5'); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def measured(device: str | torch.device | None = None):
    """Wall time and peak memory of a block, as a dict filled in when the block ends:
    seconds, peak_gib, start_gib (the memory held when it began) and how the peak was read:

    - a CUDA device: torch.cuda.max_memory_allocated, reset at the start ("cuda allocated");
    - Linux: the process's peak resident memory (VmHWM), reset at the start ("peak RSS");
    - elsewhere (macOS): ru_maxrss, the peak since the process started, so an upper bound ("peak RSS
      since start").
    Memory held before the block (the libraries, the kernel's other variables) is counted too; start_gib says how much.
    """
    gc.collect()
    cuda = device is not None and torch.device(device).type == "cuda"
    out: dict = {}
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        out["start_gib"], out["memory"] = torch.cuda.memory_allocated(device) / GIB, "cuda allocated"
    elif _reset_peak_rss():
        out["start_gib"], out["memory"] = (_proc_status_kib("VmRSS") or 0) * 1024 / GIB, "peak RSS"
    else:
        out["start_gib"], out["memory"] = float("nan"), "peak RSS since start"
    start = time.perf_counter()
    try:
        yield out
    finally:
        if cuda:
            torch.cuda.synchronize(device)
        out["seconds"] = time.perf_counter() - start
        if cuda:
            out["peak_gib"] = torch.cuda.max_memory_allocated(device) / GIB
        elif out["memory"] == "peak RSS":
            out["peak_gib"] = (_proc_status_kib("VmHWM") or 0) * 1024 / GIB
        else:  # ru_maxrss is in KiB on Linux, in bytes on macOS
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            out["peak_gib"] = rss / GIB if sys.platform == "darwin" else rss * 1024 / GIB


# -----------------------------------------------------------------------------
# the methods


def warm_up(sft: str | Path, reward_model: str | Path, prompts: list[str], fast: bool = False) -> float:
    """Build the shared trunk once and sample a few prompts, then let it go: the session's one-time costs
    (lazy imports, tokenizer and kernel caches) are paid here, not by whichever method is measured first.
    Returns the seconds it took."""
    from .ppo import build_trainer, evaluate_adapter, ppo_config

    start = time.perf_counter()
    cfg = ppo_config(fast=fast, sft=str(sft), reward_model=str(reward_model), eval_prompts=max(2, len(prompts)))
    trainer = build_trainer(cfg, progress=False)
    evaluate_adapter(trainer, list(prompts), POLICY)
    del trainer
    gc.collect()
    return time.perf_counter() - start



def _eval_batch_size(fast: bool) -> int:
    """The chunks every method's evaluation samples in: PPO's batch_size (64 full, 32 FAST), so the
    SFT model's draws, and the draws of any model on the same chunks, are the same for every method."""
    from .ppo import ppo_config

    return ppo_config(fast=fast).batch_size


def _point(summary: dict, prompts: list[str], name: str, **setting) -> dict:
    return setting | {"kl": summary[f"kl_{name}"], "gold": summary[f"gold_score_{name}"],
                      "gold_se": summary[f"gold_std_{name}"] / math.sqrt(len(prompts)),
                      "proxy": summary.get(f"reward_score_{name}", float("nan")),
                      "eos_share": summary[f"eos_share_{name}"], "length": summary[f"response_length_{name}"]}


def _best(points: list[dict]) -> dict:
    return max(points, key=lambda p: p["gold"])


def run_rl(algo: str, sft: str | Path, reward_model: str | Path, prompts: list[str], every: int = 10,
           seed: int = 0, fast: bool = False, progress: bool = True, **overrides) -> dict:
    """Train PPO, RLOO or GRPO (`algo`) with the lab's defaults (ppo.ppo_config(fast); overrides
    change them), measuring the held-out `prompts` before the first update and every `every` updates
    (overoptimisation.ppo_with_evaluations). Each point's setting is its update ("step") and its
    `seconds` the training time spent to get there (the measurements not counted)."""
    from .overoptimisation import ppo_with_evaluations
    from .ppo import build_trainer, ppo_config

    cfg = ppo_config(fast=fast, algo=algo, seed=seed, sft=str(sft), reward_model=str(reward_model),
                     eval_prompts=len(prompts), **overrides)
    with measured(_device_of(cfg.device)) as cost:
        trainer = build_trainer(cfg, progress=False)
        evaluations = ppo_with_evaluations(trainer, prompts, every=every, seed=seed, progress=progress)
    step_seconds = np.cumsum([0.0] + [m["seconds"] for m in trainer.history])  # (steps + 1,)
    points = [{"step": e["step"], "kl": e["kl"], "gold": e["gold"], "gold_se": e["gold_se"], "proxy": e["proxy"],
               "eos_share": e["eos_share"], "seconds": float(step_seconds[e["step"]])} for e in evaluations]
    best = evaluations[max(range(len(points)), key=lambda i: points[i]["gold"])]
    result = {"method": algo, "label": LABELS[algo], "setting": "step", "points": points,
              "samples": best["samples"], "sft_samples": evaluations[0]["samples"], "history": trainer.history,
              "config": dataclasses.asdict(cfg), "train_seconds": float(step_seconds[-1]),
              "wall_seconds": cost["seconds"], "peak_gib": cost["peak_gib"], "start_gib": cost["start_gib"],
              "memory": cost["memory"]}
    del trainer, evaluations
    gc.collect()
    return result


def run_dpo(sft: str | Path, reward_model: str | Path, prompts: list[str], betas=(0.1, 0.3, 1.0), seed: int = 0,
            fast: bool = False, progress: bool = True, rankings: str | Path | None = None, **overrides) -> dict:
    """One DPO run per beta (dpo.dpo_config(fast) otherwise) on the reward model's own pairs
    (dpo.reward_model_split of `rankings`, the file the reward model was trained from; None: the
    pipeline's, runs/02_rankings/rankings.jsonl), each measured on `prompts` when it ends. Each point's
    setting is its "beta" and its `seconds` that run's training time; the cost figures are those of the
    most costly run."""
    from .dpo import build_dpo_trainer, dpo_config, reward_model_split
    from .pipeline import rankings_path

    train_pairs, eval_pairs = reward_model_split(reward_model, rankings if rankings is not None else rankings_path())
    points, samples, histories, costs = [], {}, {}, []
    for beta in betas:
        cfg = dpo_config(fast=fast, beta=float(beta), seed=seed, sft=str(sft), reward_model=str(reward_model),
                         eval_prompts=len(prompts), eval_batch_size=_eval_batch_size(fast), **overrides)
        with measured(_device_of(cfg.device)) as cost:
            trainer, reward = build_dpo_trainer(cfg, train_pairs, eval_pairs, progress=False)
            trainer.train(progress=progress)
            summary, rows = evaluate_samples(trainer.model, trainer.tokenizer, prompts, POLICY, reward=reward,
                                             seed=seed, max_new_tokens=cfg.max_new_tokens,
                                             temperature=cfg.temperature, batch_size=cfg.eval_batch_size,
                                             name="dpo", config="DPOConfig")
        train_seconds = sum(m["seconds"] for m in trainer.history if "pairs" in m)
        points.append(_point(summary, prompts, "dpo", beta=float(beta)) | {"seconds": train_seconds})
        samples[float(beta)], histories[float(beta)] = rows, trainer.history
        costs.append(cost)
        if progress:
            p = points[-1]
            print(f"DPO beta = {beta:<4g} KL {p['kl']:5.1f} nats   proxy {p['proxy']:+.2f}   gold {p['gold']:+.2f}   "
                  f"({train_seconds:.0f} s of training, {cost['seconds']:.0f} s in all)")
        del trainer, reward
        gc.collect()
    best = _best(points)
    return {"method": "dpo", "label": LABELS["dpo"], "setting": "beta", "points": points, "train_pairs": len(train_pairs),
            "samples": samples[best["beta"]], "histories": histories,
            "train_seconds": max(p["seconds"] for p in points), "wall_seconds": max(c["seconds"] for c in costs),
            "peak_gib": max(c["peak_gib"] for c in costs), "start_gib": costs[0]["start_gib"],
            "memory": costs[0]["memory"]}


def run_best_of_n(sft: str | Path, reward_model: str | Path, prompts: list[str], n: int = 64, seed: int = 0,
                  fast: bool = False, progress: bool = True, **overrides) -> dict:
    """Best-of-n from the SFT model with the reward model as the judge, for n = 1, 2, 4, ... up to `n`
    (overoptimisation.best_of_n_curve: every n-subset of the n samples drawn per prompt). KL is the
    closed form log n - (n - 1)/n. Each point's setting is its "n" and its `seconds` the time to draw
    and score n samples for every prompt (measured for the largest n, in proportion for the others):
    paid again for every prompt served, where a trained policy pays once. overrides: ppo.ppo_config's
    sampling settings (max_new_tokens, temperature), as the RL methods get them."""
    from .overoptimisation import best_of_n_curve, best_of_n_scores
    from .ppo import build_trainer, ppo_config

    cfg = ppo_config(fast=fast, seed=seed, sft=str(sft), reward_model=str(reward_model), eval_prompts=len(prompts),
                     **overrides)
    with measured(_device_of(cfg.device)) as cost:
        trainer = build_trainer(cfg, progress=False)  # the SFT model (adapters off) and the reward model
        start = time.perf_counter()
        scores = best_of_n_scores(trainer, prompts, n=n, seed=seed, progress=progress)
        sample_seconds = time.perf_counter() - start
    curve = best_of_n_curve(scores["proxy"], scores["gold"])
    points = [{"n": r["n"], "kl": r["kl"], "gold": r["gold"], "gold_se": r["gold_se"], "proxy": r["proxy"],
               "seconds": sample_seconds * r["n"] / n} for r in curve]
    picks = scores["proxy"].argmax(axis=1)  # (P,) best-of-n as it is used: the reward model's favourite
    samples = [{"model": f"best-of-{n}", "prompt": p, "completion": scores["completions"][i][picks[i]],
                "gold": float(scores["gold"][i, picks[i]]), "reward": float(scores["proxy"][i, picks[i]])}
               for i, p in enumerate(prompts)]
    del trainer
    gc.collect()
    return {"method": "best_of_n", "label": LABELS["best_of_n"], "setting": "n", "points": points,
            "samples": samples, "train_seconds": sample_seconds, "wall_seconds": cost["seconds"],
            "peak_gib": cost["peak_gib"], "start_gib": cost["start_gib"], "memory": cost["memory"]}


def _device_of(device: str):
    from .utils import pick_device

    return pick_device(device)


# -----------------------------------------------------------------------------
# the comparison


def frontier(results: list[dict]) -> list[dict]:
    """One row per method at its best setting (the highest gold it reached): gold, KL, proxy, the
    setting, the seconds to reach it, and the method's peak memory."""
    rows = []
    for r in results:
        best = _best(r["points"])
        rows.append({"method": r["label"], "key": r["method"], "best setting": f"{r['setting']} = {best[r['setting']]:g}",
                     "gold": best["gold"], "gold s.e.": best["gold_se"], "KL (nats)": best["kl"],
                     "reward model": best["proxy"], "seconds": best["seconds"],
                     "peak memory (GiB)": r["peak_gib"], "added memory (GiB)": r["peak_gib"] - r.get("start_gib", 0.0)})
    return rows


def frontier_figures(results: list[dict]) -> dict:
    """frontier() as the figures a notebook records: {method: {"gold", "kl", "seconds", "peak_gib", setting}}."""
    out = {}
    for r, row in zip(results, frontier(results)):
        best = _best(r["points"])
        out[r["method"]] = {"gold": best["gold"], "kl": best["kl"], "seconds": best["seconds"],
                            "peak_gib": r["peak_gib"], "added_gib": r["peak_gib"] - r.get("start_gib", 0.0),
                            r["setting"]: best[r["setting"]]}
    return out


def samples_side_by_side(results: list[dict], sft_samples: list[dict], n: int = 3) -> list[dict]:
    """The first n prompts: the SFT model's sample, then each method's (at its best setting), with
    gold and the reward model's score. Every list holds the same prompts in the same order."""
    rows = []
    for i in range(n):
        rows.append({"prompt": sft_samples[i]["prompt"], "model": "SFT", "completion": sft_samples[i]["completion"],
                     "reward model": sft_samples[i]["reward"], "gold": sft_samples[i]["gold"]})
        for r in results:
            policy = [s for s in r["samples"] if s["model"] != "sft"]
            rows.append({"prompt": "", "model": r["label"], "completion": policy[i]["completion"],
                         "reward model": policy[i]["reward"], "gold": policy[i]["gold"]})
    return rows


def plot_frontier(results: list[dict], sft_gold: float | None = None):
    """Left: gold against sqrt(KL to SFT) for every method (RL along its training, DPO one point per
    beta, best-of-n for each n), each method's best setting ringed. Right: what each best setting cost,
    in seconds and in peak memory."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 4.4))
    grid = fig.add_gridspec(1, 3, width_ratios=[2.2, 1, 1])
    ax, ax_time, ax_mem = fig.add_subplot(grid[0]), fig.add_subplot(grid[1]), fig.add_subplot(grid[2])
    markers = {"step": "o-", "beta": "D-", "n": "s-"}
    for r in results:
        pts = sorted(r["points"], key=lambda p: p["kl"])
        d = [math.sqrt(max(p["kl"], 0.0)) for p in pts]
        note = ("every few updates" if r["setting"] == "step" else
                "beta " + ", ".join(f"{p['beta']:g}" for p in r["points"]) if r["setting"] == "beta" else
                f"n = 1 ... {r['points'][-1]['n']}")
        ax.plot(d, [p["gold"] for p in pts], markers[r["setting"]], ms=4, color=COLORS[r["method"]],
                label=f"{r['label']} ({note})")
        best = _best(r["points"])
        ax.plot([math.sqrt(max(best["kl"], 0.0))], [best["gold"]], "o", ms=13, mfc="none", color=COLORS[r["method"]])
    if sft_gold is not None:
        ax.axhline(sft_gold, color="#999", ls=":", label="SFT")
    ax.set(xlabel="sqrt(KL to the SFT model), sqrt(nats)", ylabel="gold score (mean, held-out prompts)",
           title="gold bought per distance moved (ringed: each method's best)")
    ax.legend(fontsize=7)
    rows = frontier(results)
    names = [row["method"] for row in rows]
    colors = [COLORS[row["key"]] for row in rows]
    ax_time.barh(names, [row["seconds"] for row in rows], color=colors)
    ax_time.set(xlabel="seconds", title="time to the best setting")
    ax_time.invert_yaxis()
    start = [r.get("start_gib", 0.0) for r in results]
    ax_mem.barh(names, start, color="#ccc", label="held when it began")
    ax_mem.barh(names, [row["peak memory (GiB)"] - s for row, s in zip(rows, start)], left=start, color=colors,
                label="added at its peak")
    ax_mem.set(xlabel="GiB", title=f"peak memory ({results[0].get('memory', 'peak RSS')})")
    ax_mem.legend(fontsize=7, loc="lower right")
    ax_mem.invert_yaxis()
    fig.tight_layout()
    return fig
