"""Reward-model over-optimisation (Gao et al. 2022), measured on the tiny world.

The reward model is a proxy: it learnt the gold labeler's taste from a few thousand noisy
comparisons of SFT samples. Optimise it hard enough and the policy finds where it is wrong: the
proxy score keeps rising while the gold score (what we wanted) peaks and falls. Two ways to push:

- **RL**: PPO with a weaker KL penalty travels further from the SFT model. `ppo_with_evaluations`
  trains and, every few updates, samples held-out prompts to measure gold, proxy and KL;
  `beta_sweep` trains one run per fixed beta for the same number of updates.
- **Best-of-n** (rejection sampling): draw n samples from the SFT model and keep the one the reward
  model likes best. Its KL to the SFT model has a closed form, log n - (n - 1) / n (Stiennon et al.
  2020, appendix; Gao et al. 2022), so no training is needed to place it on the same axes.

Gao et al. fit the gold score's gain over the initial policy with d = sqrt(KL):
    best-of-n   R(d) = d (alpha - beta d)          RL   R(d) = d (alpha - beta log d)
`fit_gao` does the least-squares fit (both forms are linear in alpha and beta).

    bon = best_of_n_scores(trainer, prompts, n=64)          # proxy and gold of 64 SFT samples a prompt
    curve = best_of_n_curve(bon["proxy"], bon["gold"])      # n = 1, 2, 4, ..., 64
    run = ppo_with_evaluations(trainer, eval_prompts, every=10)
    alpha, beta = fit_gao([r["kl"] for r in curve], [r["gold"] - curve[0]["gold"] for r in curve], "bon")
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch

from .gold import explain, gold_scores
from .evaluation import rng_kept
from .ppo import POLICY, PPOConfig, PPOTrainer, evaluate_adapter

# -----------------------------------------------------------------------------
# best-of-n


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n nats: exact when the n samples are distinct, an
    upper bound otherwise (Stiennon et al. 2020; Gao et al. 2022)."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def select_best(proxy: np.ndarray) -> np.ndarray:
    """Best-of-n as it is used: for each prompt (row), the index of the sample the reward model
    scores highest. proxy # (P, n) -> (P,)"""
    return np.asarray(proxy).argmax(axis=1)


def best_of_n_expected(proxy: np.ndarray, gold: np.ndarray, n: int) -> dict:
    """Expected gold and proxy score of best-of-n, over every n-subset of the N samples per prompt.

    proxy, gold # (P, N). Within a prompt, the sample of proxy rank r (0 = lowest) is the best of a
    random n-subset exactly when the subset holds it and n - 1 of the r samples below it:
    probability C(r, n - 1) / C(N, n). The same unbiased estimator as Gao et al. 2022 (appendix),
    with far less noise than drawing subsets. Returns the means over prompts and the gold's s.e.
    """
    proxy, gold = np.asarray(proxy, dtype=float), np.asarray(gold, dtype=float)
    P, N = proxy.shape
    if not 1 <= n <= N:
        raise ValueError(f"best-of-{n} needs 1 <= n <= {N} samples per prompt")
    weights = np.array([math.comb(r, n - 1) for r in range(N)], dtype=float) / math.comb(N, n)  # (N,)
    order = np.argsort(proxy, axis=1, kind="stable")                                           # (P, N)
    gold_sorted = np.take_along_axis(gold, order, 1)
    proxy_sorted = np.take_along_axis(proxy, order, 1)
    gold_per_prompt = gold_sorted @ weights                                                    # (P,)
    return {"n": n, "kl": best_of_n_kl(n), "gold": float(gold_per_prompt.mean()),
            "proxy": float((proxy_sorted @ weights).mean()),
            "gold_se": float(gold_per_prompt.std(ddof=1) / math.sqrt(P)) if P > 1 else float("nan")}


def best_of_n_curve(proxy: np.ndarray, gold: np.ndarray, ns=None) -> list[dict]:
    """best_of_n_expected for n = 1, 2, 4, ... up to the samples per prompt (or the given ns)."""
    N = np.asarray(proxy).shape[1]
    ns = ns or [2 ** i for i in range(int(math.log2(N)) + 1)]
    return [best_of_n_expected(proxy, gold, n) for n in ns]


@torch.no_grad()
def best_of_n_scores(trainer: PPOTrainer, prompts: list[str], n: int = 64, seed: int = 0,
                     batch_size: int = 256, progress: bool = False) -> dict:
    """n samples of the SFT model (the shared trunk with adapters off) per prompt, scored by the
    reward model (normalised, as PPO sees it) and by gold.

    Returns {"prompts", "completions" (P lists of n), "proxy" (P, n), "gold" (P, n)}. The caller's
    RNG is left as it was.
    """
    from tqdm.auto import tqdm

    repeated = [p for p in prompts for _ in range(n)]
    completions, proxy, gold = [], [], []
    with rng_kept():
        torch.manual_seed(seed)
        for start in tqdm(range(0, len(repeated), batch_size), desc="best-of-n samples", disable=not progress):
            chunk = repeated[start:start + batch_size]
            rollout, texts = trainer.sample(chunk, adapter=None)
            raw = trainer.reward.score(chunk, texts, rollout).float().cpu()
            proxy += (trainer.score_gain * raw + trainer.score_bias).tolist()
            gold += gold_scores([p + c for p, c in zip(chunk, texts)])
            completions += texts
    P = len(prompts)
    return {"prompts": list(prompts), "completions": [completions[i * n:(i + 1) * n] for i in range(P)],
            "proxy": np.array(proxy).reshape(P, n), "gold": np.array(gold).reshape(P, n)}


# -----------------------------------------------------------------------------
# RL: PPO measured along the way, and a sweep of beta


def ppo_with_evaluations(trainer: PPOTrainer, prompts: list[str], every: int = 10, seed: int = 0,
                         steps: int | None = None, callback=None, progress: bool = True,
                         live: bool = False) -> list[dict]:
    """Train `trainer` to `steps` (default its cfg.steps), and before the first update and every
    `every` updates sample `prompts` (held out) with the policy: gold, proxy and KL to the SFT model.

    Returns one dict per evaluation: step, kl, gold, gold_se, proxy, and the samples. Every
    evaluation uses the same prompts and seed, so the curves differ by the policy alone; the
    training RNG is untouched (evaluate_adapter), so the run is the one it would be without them.
    live: in a notebook, plot_beta0 redrawn under the cell after every evaluation (instead of a bar).
    """
    from .plotting import LiveFigure

    evaluations = []
    figure = LiveFigure() if live else None

    def evaluate():
        summary, samples = evaluate_adapter(trainer, prompts, POLICY, seed)
        evaluations.append({"step": trainer.step_count, "kl": summary["kl_ppo"], "gold": summary["gold_score_ppo"],
                            "gold_se": summary["gold_std_ppo"] / math.sqrt(len(prompts)),
                            "proxy": summary["reward_score_ppo"], "eos_share": summary["eos_share_ppo"],
                            "samples": samples})
        if figure is not None:
            figure.draw(lambda fig: plot_beta0(evaluations, trainer.history, fig=fig))

    def on_update(metrics, trainer):
        if trainer.step_count % every == 0:
            evaluate()
        if callback is not None:
            callback(metrics, trainer)

    if not trainer.score_normalisation_fitted:
        trainer.fit_score_normalisation()
    evaluate()
    trainer.train(steps=steps, callback=on_update, progress=progress)
    if evaluations[-1]["step"] != trainer.step_count:
        evaluate()
    return evaluations


def beta_sweep(base: PPOConfig, betas=(0.0, 0.01, 0.03, 0.1, 0.3), steps: int = 40, prompts: list[str] | None = None,
               seed: int = 0, beta0: list[dict] | None = None, progress: bool = False) -> list[dict]:
    """One PPO run per beta, fixed (no adaptive controller), each `steps` updates from the same SFT
    model, reward model and seed, then evaluated on `prompts` (held out; default: base.eval_prompts
    validation prompts) with `seed`.

    beta0: the evaluations of a longer beta = 0 run with the same settings (ppo_with_evaluations);
    its evaluation at `steps` is the beta = 0 run of the sweep, up to there, so it is not trained again.
    Returns one dict per beta: beta, gold, gold_se, proxy, kl, seconds, history (None when reused).
    """
    from .loading import load_prompts
    from .ppo import build_trainer

    prompts = prompts or load_prompts(base.prompts, "validation", limit=base.eval_prompts)["prompt"]
    rows = []
    for beta in betas:
        start = time.time()
        reused = [e for e in beta0 or [] if e["step"] == steps] if beta == 0 else []
        if reused:
            row, history = reused[0], None
        else:
            cfg = dataclasses.replace(base, kl_coef=float(beta), adaptive_kl=False, steps=steps)
            trainer = build_trainer(cfg, progress=False)
            trainer.train(progress=False)
            summary, samples = evaluate_adapter(trainer, prompts, POLICY, seed)
            row = {"kl": summary["kl_ppo"], "gold": summary["gold_score_ppo"], "proxy": summary["reward_score_ppo"],
                   "gold_se": summary["gold_std_ppo"] / math.sqrt(len(prompts)), "samples": samples}
            history = trainer.history
        rows.append({"beta": float(beta), "gold": row["gold"], "gold_se": row["gold_se"], "proxy": row["proxy"],
                     "kl": row["kl"], "seconds": time.time() - start, "history": history, "samples": row["samples"]})
        if progress:
            print(f"beta = {beta:<5g} KL {row['kl']:6.1f} nats   proxy {row['proxy']:+.2f}   gold {row['gold']:+.2f}   "
                  + ("(the beta = 0 run above, at this update)" if reused else f"({rows[-1]['seconds']:.0f} s)"))
    return rows


# -----------------------------------------------------------------------------
# Gao et al.'s functional forms


def gao_features(kl, form: str) -> np.ndarray:
    """The two columns of the linear least-squares problem: R = alpha * f1 - beta * f2, d = sqrt(KL)."""
    d = np.sqrt(np.maximum(np.asarray(kl, dtype=float), 0.0))
    if form == "bon":
        return np.stack([d, -d * d], axis=1)
    if form == "rl":
        with np.errstate(divide="ignore", invalid="ignore"):
            dlogd = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
        return np.stack([d, -dlogd], axis=1)
    raise ValueError(f"form is 'bon' or 'rl', got {form!r}")


def fit_gao(kl, gain, form: str) -> tuple[float, float]:
    """(alpha, beta) of Gao et al.'s form `form` ("bon": d (alpha - beta d); "rl": d (alpha - beta log d))
    fitted by least squares to the gold gains over the initial policy, `gain`, at the given KLs."""
    X = gao_features(kl, form)
    (alpha, beta), *_ = np.linalg.lstsq(X, np.asarray(gain, dtype=float), rcond=None)
    return float(alpha), float(beta)


def gao_curve(kl, alpha: float, beta: float, form: str) -> np.ndarray:
    """The fitted gain at each KL."""
    return gao_features(kl, form) @ np.array([alpha, beta])


# -----------------------------------------------------------------------------
# what the policy learnt to exploit


def exploits(samples: list[dict], top: int = 8) -> list[dict]:
    """The samples the reward model over-rates most (the largest reward-minus-gold gaps), with what
    gold holds against each: negative sentiment, its fluency errors by kind, repetition, no ending."""
    def reasons(text):
        e = explain(text)
        out = []
        if e["sentiment"] < 0:
            out.append(f"negative ({e['sentiment']:+.2f})")
        kinds = sorted({k for k, _ in e["fluency_errors"]})
        if kinds:
            out.append("fluency: " + ", ".join(f"{k} ({', '.join(w for kk, w in e['fluency_errors'] if kk == k)[:40]})"
                                               for k in kinds))
        if e["repetition_penalty"] > 0:
            out.append(f"repetition {e['repetition_penalty']:.2f}")
        out += e["degenerate_reasons"]
        return "; ".join(out) or "-"

    ranked = sorted(samples, key=lambda r: r["gold"] - r["reward"])
    return [{"prompt": r["prompt"], "completion": r["completion"], "reward model": r["reward"], "gold": r["gold"],
             "what gold sees": reasons(r["prompt"] + r["completion"])} for r in ranked[:top]]


def fault_shares(samples: list[dict]) -> dict:
    """What gold holds against a set of samples: the share with each kind of fluency error, with no
    ending, with repetition, and with negative sentiment (gold.explain on prompt + completion)."""
    explained = [explain(r["prompt"] + r["completion"]) for r in samples]
    n = max(len(explained), 1)
    kinds = sorted({k for e in explained for k, _ in e["fluency_errors"]})
    shares = {"any fluency error": sum(bool(e["fluency_errors"]) for e in explained) / n}
    shares |= {k: sum(any(kk == k for kk, _ in e["fluency_errors"]) for e in explained) / n for k in kinds}
    shares |= {"does not end a sentence": sum("does not end a sentence" in e["degenerate_reasons"] for e in explained) / n,
               "repetition": sum(e["repetition_penalty"] > 0 for e in explained) / n,
               "negative sentiment": sum(e["sentiment"] < 0 for e in explained) / n}
    return shares


# -----------------------------------------------------------------------------
# figures


def plot_beta0(evaluations: list[dict], history: list[dict] | None = None, fig=None):
    """Proxy and gold against sqrt(KL) as PPO with beta = 0 trains: held-out evaluations (markers) and,
    thin, every update's own batch; the gold peak marked. fig: a figure to redraw (LiveFigure does)."""
    import matplotlib.pyplot as plt

    if fig is None:
        fig, ax = plt.subplots(figsize=(7.5, 4))
    else:
        ax = fig.axes[0]
        ax.clear()
    if history:
        d = [math.sqrt(max(m["kl"], 0.0)) for m in history]
        ax.plot(d, [m["score_normalised"] for m in history], color="C0", alpha=0.25, lw=1)
        ax.plot(d, [m["gold"] for m in history], color="C1", alpha=0.25, lw=1)
    d = [math.sqrt(max(e["kl"], 0.0)) for e in evaluations]
    ax.plot(d, [e["proxy"] for e in evaluations], "o-", color="C0", ms=4, label="proxy: the reward model (normalised)")
    ax.errorbar(d, [e["gold"] for e in evaluations], yerr=[e["gold_se"] for e in evaluations], fmt="o-", color="C1",
                ms=4, capsize=2, label="gold: what we wanted")
    peak = max(evaluations, key=lambda e: e["gold"])
    ax.axvline(math.sqrt(max(peak["kl"], 0.0)), color="#999", ls=":", label=f"gold peak (update {peak['step']})")
    ax.set(xlabel="sqrt(KL(policy || SFT)), sqrt(nats)", ylabel="mean score, held-out prompts",
           title="PPO with no KL penalty (beta = 0)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_frontier(beta0: list[dict], sweep: list[dict], bon: list[dict], fits: dict | None = None):
    """Gold (left) and proxy (right) against sqrt(KL) for PPO with beta = 0, the beta sweep and best-of-n,
    on the same axes; fits: {"rl": (alpha, beta), "bon": (alpha, beta)} drawn dashed on the gold panel."""
    import matplotlib.pyplot as plt

    fig, (ax_gold, ax_proxy) = plt.subplots(1, 2, figsize=(12, 4))
    base = bon[0]["gold"]  # best-of-1: the SFT model's mean gold; Gao's fits are gains over it
    for ax, key in ((ax_gold, "gold"), (ax_proxy, "proxy")):
        ax.plot([math.sqrt(e["kl"]) for e in beta0 if e["kl"] >= 0], [e[key] for e in beta0 if e["kl"] >= 0],
                "o-", ms=3, color="C3", label="PPO, beta = 0 (every few updates)")
        ax.plot([math.sqrt(r["kl"]) for r in bon], [r[key] for r in bon], "s-", ms=4, color="C2",
                label=f"best-of-n, n = 1 ... {bon[-1]['n']}")
        for i, row in enumerate(sweep):
            ax.plot([math.sqrt(max(row["kl"], 0.0))], [row[key]], "D", ms=6, color=f"C{4 + i % 5}",
                    label=f"PPO, beta = {row['beta']:g}")
        ax.set(xlabel="sqrt(KL to the SFT model), sqrt(nats)")
    if fits:
        for form, color, data in (("rl", "C3", beta0), ("bon", "C2", bon)):
            if form in fits:
                top = max(math.sqrt(max(e["kl"], 0.0)) for e in data)
                d = np.linspace(0, top, 100)
                ax_gold.plot(d, base + gao_curve(d ** 2, *fits[form], form), "--", color=color, lw=1,
                             label=f"Gao fit ({'RL' if form == 'rl' else 'best-of-n'}): "
                                   f"alpha {fits[form][0]:.2f}, beta {fits[form][1]:.2f}")
    ax_gold.set(ylabel="gold score (mean, held-out prompts)", title="what we wanted")
    ax_proxy.set(ylabel="reward model score (normalised)", title="what was optimised")
    ax_gold.legend(fontsize=7)
    fig.tight_layout()
    return fig
