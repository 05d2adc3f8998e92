"""Glue so that each notebook runs on its own: find an earlier stage's result, or make a quick one.

    runs/01_sft/adapter               notebook 01: the SFT LoRA adapter        ensure_sft()
    runs/02_rankings/rankings.jsonl   notebook 02: rankings of K samples       ensure_rankings()
    runs/03_reward_model/reward_model notebook 03: the saved reward model      ensure_reward_model()
    runs/04_ppo/                      notebook 04: PPO (the command line's --algo rloo, grpo: 04_rloo, 04_grpo)
    runs/05_dpo/                      `rlhf-lab dpo`: DPO on the reward model's pairs
    runs/06_iterate/                  notebook 07, `rlhf-lab iterate`: iterated online RLHF

When a result is missing, the quick one is made with the stage's own functions and saved in the
same place (so the next notebook finds it), with one printed line that says so.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from .config_args import Count, Range, Seed, check_config
from .utils import read_json, run_dir, short_path

SFT_DIR, RANKINGS_DIR, REWARD_DIR, PPO_DIR = "01_sft", "02_rankings", "03_reward_model", "04_ppo"
DPO_DIR = "05_dpo"
ITERATE_DIR = "06_iterate"  # `rlhf-lab iterate` and notebook 07: iterated online RLHF
K_DEFAULT = 4  # samples ranked per prompt: InstructGPT ranked K = 4..9; 4 keeps a ranking quick for a person
N_RANKINGS = {False: 400, True: 60}  # full: 400 x 6 = 2,400 pairs: 15% of prompts held out, the rest
# capped at MAX_PAIRS; FAST: seconds
MAX_PAIRS = 2_000  # training pairs at most: the lab's budget (Ziegler et al. used ~5,000 comparisons)
N_NORMALISE = {False: 512, True: 64}  # SFT samples for the reward normalisation (mean 0, std 1)


@dataclass
class RankConfig:
    """The rank stage of the command line: simulated annotators rank K samples of each prompt."""

    k: Annotated[int, Range(2, 9)] = K_DEFAULT  # samples ranked per prompt (InstructGPT: 4 to 9; the widget
    # shows at most 9, one digit key per card)
    n_rankings: Count | None = None  # rankings the file should hold (None: 400, about 2,000 pairs; --fast: 60)
    seed: Seed = 0  # sampling and the simulated annotators' noise
    prompts: str = "tiny"  # the prompts to sample: "tiny", a hub dataset or a local file

    def __post_init__(self):
        check_config(self)


def rl_dir(algo: str = "ppo") -> str:
    """Stage 3's folder for an algorithm: 04_ppo, 04_rloo, 04_grpo (side by side, to compare them)."""
    return PPO_DIR if algo == "ppo" else f"04_{algo}"


def sft_adapter_path(root: str | Path | None = None) -> Path:
    return run_dir(SFT_DIR, root) / "adapter"


def rankings_path(root: str | Path | None = None) -> Path:
    return run_dir(RANKINGS_DIR, root) / "rankings.jsonl"


def reward_model_path(root: str | Path | None = None) -> Path:
    return run_dir(REWARD_DIR, root) / "reward_model"


# -----------------------------------------------------------------------------
# stage 1


def ensure_sft(root: str | Path | None = None, fast: bool = True) -> Path:
    """The SFT adapter of notebook 01 (runs/01_sft/adapter), trained quickly here if it is missing."""
    path = sft_adapter_path(root)
    if (path / "adapter_config.json").is_file():
        return path
    from .sft import sft_config, train_sft

    start = time.time()
    train_sft(sft_config(fast=fast), out_dir=path, progress=False)
    print(f"no SFT adapter found in {short_path(path.parent)}; trained a quick one ({time.time() - start:.0f} s, "
          f"{'FAST' if fast else 'full'} settings). Run notebooks/01_sft.ipynb for the real one.")
    return path


def load_sft_model(root: str | Path | None = None, fast: bool = True, device="auto"):
    """(policy, tokenizer): the SFT model (base + adapter) from ensure_sft, in eval mode."""
    from .sft import load_sft

    return load_sft(ensure_sft(root, fast), device=device)


# -----------------------------------------------------------------------------
# stage 2: samples to rank, rankings


def sample_items(model, tokenizer, prompts: list[str], K: int = K_DEFAULT, seed: int = 0,
                 max_new_tokens: int = 48, temperature: float = 1.0, batch_size: int = 64,
                 progress: bool = False) -> list[dict]:
    """K sampled completions per prompt: [{"prompt", "completions": [K texts]}], ready to rank."""
    from .generation import sample

    repeated = [p for p in prompts for _ in range(K)]
    rows = sample(model, tokenizer, repeated, max_new_tokens=max_new_tokens, temperature=temperature,
                  batch_size=batch_size, seed=seed, progress=progress)
    return [{"prompt": prompts[i], "completions": [r["completion"] for r in rows[i * K:(i + 1) * K]]}
            for i in range(len(prompts))]


def count_rankings(path: str | Path) -> int:
    """Rankings (not skips) in a rankings file; 0 if there is none."""
    from .rankings import RankingStore

    return sum(r["ranking"] is not None for r in RankingStore(path).records())


def top_up_rankings(path: str | Path, model, tokenizer, n_rankings: int, K: int = K_DEFAULT,
                    prompts: list[str] | None = None, exclude_prompts=(), seed: int = 0,
                    annotators=None) -> list[dict]:
    """Rank fresh samples with simulated annotators until the file holds n_rankings rankings.

    Prompts already in the file and exclude_prompts (e.g. the learner's, still waiting in the widget)
    are not used. The annotators take turns, as a team of labelers would; each record names its
    annotator. Returns the new records.

    The top-up first writes its plan (the prompts and the sampling seed) beside the file. If it is
    killed, the next call with the same n_rankings, K and seed carries out that plan instead of making
    a new one: the same samples, ranked by the same annotators, the ones already in the file skipped.
    So an interrupted top-up ends with exactly the file an uninterrupted one would have written.
    """
    from .annotators import default_panel
    from .loading import load_prompts
    from .rankings import RankingStore, rank_with

    store = RankingStore(path)
    plan_path = top_up_plan_path(path)
    have = count_rankings(path)
    if have >= n_rankings:
        plan_path.unlink(missing_ok=True)  # a plan whose top-up finished, killed before it could tidy up
        return []
    annotators = annotators if annotators is not None else default_panel(seed)
    plan = _unfinished_plan(plan_path, n_rankings, K, seed, exclude_prompts)
    if plan is None:
        if prompts is None:
            prompts = load_prompts("tiny", split="train")["prompt"]
        used = {r["prompt"] for r in store.records()} | set(exclude_prompts)
        fresh = [p for p in dict.fromkeys(prompts) if p not in used][:n_rankings - have]  # each prompt once
        plan = {"n_rankings": n_rankings, "K": K, "seed": seed, "sample_seed": seed + have, "prompts": fresh}
        _write_plan(plan_path, plan)
    items = sample_items(model, tokenizer, plan["prompts"], K=K, seed=plan["sample_seed"])
    records = []
    for n, item in enumerate(items):  # rank_with leaves alone what an interrupted top-up ranked already
        annotator = annotators[n % len(annotators)]
        records += rank_with(annotator, [item], store, annotator_name=f"simulated:{annotator.name}")
    plan_path.unlink(missing_ok=True)
    return records


def top_up_plan_path(path: str | Path) -> Path:
    """Where top_up_rankings keeps its plan while it runs: rankings.jsonl -> rankings.jsonl.top-up.json."""
    path = Path(path)
    return path.with_name(path.name + ".top-up.json")


def _unfinished_plan(plan_path: Path, n_rankings: int, K: int, seed: int, exclude_prompts) -> dict | None:
    """The plan of an interrupted top-up with the same settings, or None (none, or other settings)."""
    if not plan_path.is_file():
        return None
    plan = read_json(plan_path, "top-up plan")
    same = (plan.get("n_rankings"), plan.get("K"), plan.get("seed")) == (n_rankings, K, seed)
    if not same or set(plan.get("prompts", [])) & set(exclude_prompts):
        return None
    return plan


def _write_plan(plan_path: Path, plan: dict) -> None:
    """Write the plan whole or not at all (a temporary file, fsynced, then renamed over the old one)."""
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan_path.with_name(plan_path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(plan, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, plan_path)


def ensure_rankings(root: str | Path | None = None, fast: bool = True, K: int = K_DEFAULT,
                    n_rankings: int | None = None, seed: int = 0) -> Path:
    """runs/02_rankings/rankings.jsonl with at least n_rankings rankings (default: 400 full, 60 FAST);
    the simulated annotators top it up from the SFT model's samples if it holds fewer."""
    path = rankings_path(root)
    n_rankings = n_rankings if n_rankings is not None else N_RANKINGS[bool(fast)]
    have = count_rankings(path)
    if have >= n_rankings:
        return path
    start = time.time()
    model, tokenizer = load_sft_model(root, fast)
    new = top_up_rankings(path, model, tokenizer, n_rankings, K=K, seed=seed)
    print(f"{short_path(path)} held {have} rankings; the simulated annotators ranked {len(new)} more "
          f"(K = {K}, {time.time() - start:.0f} s). Run notebooks/02_rankings.ipynb to rank your own.")
    return path


# -----------------------------------------------------------------------------
# stage 2: the reward model


def normalisation_samples(model, tokenizer, n: int, seed: int = 0, prompts: str | None = "tiny") -> list[dict]:
    """n samples of the SFT model on held-out prompts of `prompts` (the run's data: "tiny", a hub dataset
    or a local file; None: "tiny"), for the reward normalisation: PPO's scores have mean 0 and std 1 on
    the prompts PPO samples, not on another world's."""
    from .generation import sample
    from .loading import load_prompts

    prompts = load_prompts(prompts or "tiny", split="validation", limit=n)["prompt"]
    prompts = [prompts[i % len(prompts)] for i in range(n)]
    return sample(model, tokenizer, prompts, seed=seed)


def sft_trunk_and_samples(sft_path: str | Path, base: str, n: int, seed: int = 0, prompts: str | None = "tiny",
                          device="auto"):
    """(trunk, tokenizer, samples): the SFT model merged into one plain model, the reward-model stage's
    only copy of the backbone (train_reward_model(copy_trunk=False) puts the reward adapter on it, as
    stage 3 shares one trunk), and its normalisation_samples, drawn first, while it is still the SFT model."""
    from .trunk import build_trunk

    trunk, tokenizer = build_trunk(sft_path, base=base, device=device)
    return trunk, tokenizer, normalisation_samples(trunk, tokenizer, n, seed, prompts)


def reward_model_pairs(pairs, cfg, max_pairs: int = MAX_PAIRS):
    """(train, held_out) pairs: whole prompts held out (cfg.eval_fraction), then at most max_pairs
    training pairs, whole rankings first to last."""
    from .reward_model import split_by_prompt

    train, held_out = split_by_prompt(pairs, cfg.eval_fraction, cfg.seed)
    return train.select(range(min(max_pairs, len(train)))), held_out


def ensure_reward_model(root: str | Path | None = None, fast: bool = True, seed: int = 0) -> Path:
    """runs/03_reward_model/reward_model, trained quickly here (on ensure_rankings' pairs, on the
    merged SFT model, normalised on its samples) if it is missing."""
    from .preferences import load_preferences
    from .reward_model import META_FILE, reward_config, save_reward_model, train_reward_model

    path = reward_model_path(root)
    if (path / META_FILE).is_file():
        return path
    start = time.time()
    sft_path = ensure_sft(root, fast)
    pairs = load_preferences(ensure_rankings(root, fast, seed=seed))
    base = json.loads((sft_path / "sft_config.json").read_text())["model"]
    cfg = reward_config(fast=fast, trunk=base, sft_adapter=str(sft_path), seed=seed)
    train, held_out = reward_model_pairs(pairs, cfg)
    trunk, tokenizer, samples = sft_trunk_and_samples(sft_path, base, N_NORMALISE[bool(fast)], seed)
    result = train_reward_model(cfg, train, trunk=trunk, tokenizer=tokenizer, eval_pairs=held_out, progress=False,
                                copy_trunk=False)
    norm = result.reward_model.normalise_on(samples)
    save_reward_model(result.reward_model, path, cfg, result.metrics | {"normalisation": norm})
    print(f"no reward model found in {short_path(path.parent)}; trained a quick one on {len(result.train_pairs)} pairs "
          f"({time.time() - start:.0f} s, held-out accuracy vs gold {result.metrics['gold_accuracy']:.0%}). "
          "Run notebooks/03_reward_model.ipynb for the real one.")
    return path
