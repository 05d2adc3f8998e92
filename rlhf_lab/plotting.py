"""Figures the notebooks and the pipeline report share."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch


def rlhf_diagram():
    """The three stages of RLHF as boxes and arrows (after the Hugging Face "Illustrating RLHF" post)."""
    fig, ax = plt.subplots(figsize=(11, 3.8))
    ax.set_xlim(0, 11)
    ax.set_ylim(-0.5, 3.4)
    ax.axis("off")
    boxes = [
        (0.2, "1. Pretrained LM\n(+ optional SFT)", "GPT-2, fine-tuned with LoRA\non demonstrations", "#dbe9f6"),
        (3.9, "2. Reward model", "people rank samples;\npairs train a scalar head\n(Bradley-Terry)", "#fde9d9"),
        (7.6, "3. RL with PPO", "reward = RM score\n- beta * KL(policy || SFT)", "#e2f0d9"),
    ]
    for x, title, body, color in boxes:
        ax.add_patch(FancyBboxPatch((x, 0.5), 3.2, 2.4, boxstyle="round,pad=0.05", fc=color, ec="#555"))
        ax.text(x + 1.6, 2.45, title, ha="center", va="center", fontsize=12, weight="bold")
        ax.text(x + 1.6, 1.3, body, ha="center", va="center", fontsize=10)
    for x0, x1, label in [(3.45, 3.85, "samples"), (7.15, 7.55, "scores")]:
        ax.add_patch(FancyArrowPatch((x0, 1.7), (x1, 1.7), arrowstyle="-|>", mutation_scale=18, color="#333"))
        ax.text((x0 + x1) / 2, 1.95, label, ha="center", fontsize=9)
    ax.add_patch(FancyArrowPatch((9.2, 0.45), (1.8, 0.45), connectionstyle="arc3,rad=-0.12",
                                 arrowstyle="-|>", mutation_scale=16, color="#888", linestyle="--"))
    ax.text(5.5, -0.35, "the SFT model is also the frozen reference for the KL penalty, and PPO's starting point",
            ha="center", fontsize=9, color="#555")
    fig.tight_layout()
    return fig


def score_histograms(groups: dict[str, list[float]], xlabel: str = "gold score", title: str | None = None,
                     bins: int = 30):
    """Overlaid histograms, one per named group of scores, with each group's mean marked."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    lo = min(min(v) for v in groups.values())
    hi = max(max(v) for v in groups.values())
    for name, values in groups.items():
        mean = sum(values) / len(values)
        n, _, patches = ax.hist(values, bins=bins, range=(lo, hi), alpha=0.5, density=True,
                                label=f"{name} (mean {mean:+.2f}, n={len(values)})")
        ax.axvline(mean, color=patches[0].get_facecolor(), alpha=1.0, linestyle="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


class LiveFigure:
    """A figure redrawn in place under a notebook cell, through an IPython display handle: the plot
    moves while a run trains, and the saved notebook keeps the last frame. Outside IPython, nothing."""

    def __init__(self, nrows: int = 1, ncols: int = 1, figsize=(7.5, 4)):
        self.shape, self.figsize = (nrows, ncols), figsize
        self.fig, self.handle = None, None

    def draw(self, draw) -> None:
        """Call draw(fig) on the figure, then show it (the first time) or update it in place."""
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return
        if get_ipython() is None:
            return
        if self.fig is None:
            self.fig, _ = plt.subplots(*self.shape, figsize=self.figsize)
            plt.close(self.fig)  # shown through the handle only, not again at the end of the cell
        draw(self.fig)
        if self.handle is None:
            self.handle = display(self.fig, display_id=True)
        else:
            self.handle.update(self.fig)
