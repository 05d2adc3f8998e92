"""Figures of an RL run (ppo.py: PPO, RLOO, GRPO): scores, KL and beta per update, the health of each
update, and the reward / KL trade-off of several runs. matplotlib is imported when a figure is drawn."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .ppo import PPOResult, PPOTrainer



def plot_history(history: list[dict], kl_target: float | None = None, fig=None):
    """Scores, KL and beta per update: what PPO optimises, what it pays for it, and the price of a nat.

    fig: a figure with 3 axes to redraw in place (LivePlot does); None makes one.
    """
    import matplotlib.pyplot as plt

    if fig is None:
        fig, _ = plt.subplots(1, 3, figsize=(12, 3.3))
    axes = fig.axes
    for ax in axes:
        ax.clear()
    steps = [m["step"] for m in history]
    axes[0].plot(steps, [m["score_normalised"] for m in history], label="reward (normalised RM score)")
    axes[0].plot(steps, [m["gold"] for m in history], label="gold score")
    axes[0].set(xlabel="update", ylabel="mean per response", title="score of the samples")
    axes[0].legend(fontsize=8)
    axes[1].plot(steps, [m["kl"] for m in history], color="C2")
    if kl_target is not None:
        axes[1].axhline(kl_target, color="#999", linestyle=":", label=f"target {kl_target:g} nats")
        axes[1].legend(fontsize=8)
    axes[1].set(xlabel="update", ylabel="nats per response", title="KL(policy || SFT)")
    axes[2].plot(steps, [m["kl_coef"] for m in history], color="C3")
    axes[2].set(xlabel="update", ylabel="beta", title="KL coefficient beta")
    fig.tight_layout()
    return fig


class LivePlot:
    """A callback for PPOTrainer.train / train_ppo: redraws plot_history in place, in a notebook
    (plotting.LiveFigure), so the figure updates under the cell while PPO trains and the saved
    notebook keeps the last frame. Outside IPython it does nothing."""

    def __init__(self, every: int = 1, kl_target: float | None = None):
        from .plotting import LiveFigure

        self.every, self.kl_target = every, kl_target
        self.live = LiveFigure(1, 3, figsize=(12, 3.3))

    def __call__(self, metrics: dict, trainer: PPOTrainer) -> None:
        if metrics["step"] % self.every and trainer.step_count < trainer.cfg.steps:
            return
        self.live.draw(lambda fig: plot_history(trainer.history, self.kl_target, fig=fig))


def plot_kl_tradeoff(runs: dict[str, PPOResult]):
    """The reward / KL trade-off of several runs (e.g. a sweep of beta): each run's path through
    (KL, score) per update, and its final gold score against the KL of its samples."""
    import matplotlib.pyplot as plt

    fig, (ax_path, ax_gold) = plt.subplots(1, 2, figsize=(11, 3.6))
    for i, (label, result) in enumerate(runs.items()):
        kl = [m["kl"] for m in result.history]
        ax_path.plot(kl, [m["score_normalised"] for m in result.history], "-", color=f"C{i}", alpha=0.8, label=label)
        ax_path.plot(kl[-1:], [result.history[-1]["score_normalised"]], "o", color=f"C{i}")
        s = result.summary
        n = max(1, sum(1 for row in result.samples if row["model"] != "sft"))  # the policy's evaluation samples
        ax_gold.errorbar([s["kl"]], [s["gold_score_ppo"]], yerr=[s["gold_std_ppo"] / math.sqrt(n)],
                         fmt="o", color=f"C{i}", label=label)
    first = next(iter(runs.values())).summary
    ax_gold.axhline(first["gold_score_sft"], color="#999", linestyle=":", label="SFT")
    ax_gold.axhline(first["gold_score_sft"] + first["gold_std_sft"], color="#999", linestyle="--",
                    label="SFT + 1 std")
    ax_path.set(xlabel="KL(policy || SFT), nats per response", ylabel="reward (normalised)",
                title="each update of each run")
    ax_gold.set(xlabel="KL of the final policy's samples (nats)", ylabel="gold score (mean, +-1 s.e.)",
                title="where each run ends")
    ax_path.legend(fontsize=8)
    ax_gold.legend(fontsize=8)
    fig.tight_layout()
    return fig



def plot_diagnostics(history: list[dict]):
    """PPO's health per update: entropy, approx KL and clip fraction, value explained variance, and
    the responses' length and EOS share (CleanRL's diagnostics, plus what an LM adds)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(14, 3.1))
    steps = [m["step"] for m in history]
    axes[0].plot(steps, [m["entropy"] for m in history])
    axes[0].set(xlabel="update", ylabel="nats per token", title="policy entropy")
    axes[1].plot(steps, [m["approx_kl"] for m in history], label="approx KL (old || new)")
    axes[1].plot(steps, [m["clipfrac"] for m in history], label="clip fraction")
    axes[1].set(xlabel="update", title="size of each update")
    axes[1].legend(fontsize=8)
    if all("explained_variance" in m for m in history):
        axes[2].plot(steps, [m["explained_variance"] for m in history], color="C2")
        axes[2].set(xlabel="update", title="value head: explained variance", ylim=(-1.05, 1.05))
    else:  # RLOO and GRPO have no value head; GRPO's KL term is in the loss instead
        axes[2].plot(steps, [m.get("kl_loss", float("nan")) for m in history], color="C2")
        axes[2].set(xlabel="update", ylabel="nats per token", title="no value head; GRPO: KL loss term (k3)")
    axes[3].plot(steps, [m["response_length"] for m in history], color="C4")
    axes[3].set(xlabel="update", ylabel="tokens", title="response length")
    eos = axes[3].twinx()
    eos.plot(steps, [m["eos_share"] for m in history], color="C5", linestyle="--")
    eos.set(ylabel="share ending with EOS (dashed)", ylim=(0, 1.05))
    fig.tight_layout()
    return fig
