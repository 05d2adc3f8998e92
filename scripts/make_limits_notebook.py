"""Writes notebooks/09_limits.ipynb (its cells live here, as 08's do in make_classroom_notebook.py).

    python scripts/make_limits_notebook.py && python scripts/run_notebooks.py notebooks/09_limits.ipynb
"""

from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell

cells = [
    md("""# 09 · What RLHF cannot do, in this lab's own numbers

The seed of this lab, *Illustrating RLHF*, closes on the method's limits: a reward model is only as good
as the people who label for it, labels are expensive, what people prefer is not what is true, and the
optimiser will exploit whatever the reward model gets wrong. Notebooks 01-08 measured each of these
somewhere; this short notebook gathers those measurements in one place, reading the figures each
notebook's committed full run recorded (`rlhf_lab.figures`), and ends with the reading list.

**In this notebook you will** see the labeler ceiling, the cost of a label and the price of pushing
against a proxy, each as a number from an earlier notebook; and get one line on each paper behind the lab.

**Time:** under a minute (it trains nothing); FAST mode the same."""),
    code("""FAST = False  # nothing here depends on it: the figures are those of the other notebooks' full runs""",
         metadata={"tags": ["parameters"]}),
    code("""from rlhf_lab.utils import fast_mode
FAST = fast_mode(FAST)

import json

import matplotlib.pyplot as plt

from rlhf_lab import figures
from rlhf_lab.display import show_table
from rlhf_lab.rankings import RankingStore
from rlhf_lab.utils import REPO_DIR, RUNS_DIR


def figures_of(name):
    \"\"\"The figures an earlier notebook's committed full run recorded (its metadata).\"\"\"
    found = figures.of_notebook(REPO_DIR / "notebooks" / f"{name}.ipynb")
    if not found:
        raise RuntimeError(f"notebooks/{name}.ipynb carries no figures: run scripts/run_notebooks.py on it")
    return found


f01, f03, f04, f05, f07, f08 = (figures_of(n) for n in ("01_sft", "03_reward_model", "04_ppo",
                                                       "05_overoptimisation", "07_iterated_rlhf", "08_classroom"))
print("figures read from notebooks 01, 03, 04, 05, 07 and 08")"""),
    md("""## 1. The labeler ceiling

A reward model learns from labels, and the labels are people's: noisy, and each person's own. How good
can it get? In the tiny world the gold labeler is the truth, so we can set the reward model's accuracy
against gold beside the labels' own. In notebook 03 the simulated annotators' pairs agree with gold on
some 88% of held-out pairs; the reward model trained on them agrees with gold *more* often, because
2,000 pairs average many annotators' independent noise away. What it cannot average away is a bias the
annotators share: had they all disliked long reviews, so would the reward model. In notebook 08 a class
of simulated learners agrees with gold less often than notebook 03's panel, and its reward models reach
less."""),
    code("""rows = [
    {"labels": "notebook 03: the annotators' pairs vs gold", "share of pairs ordered as gold orders them": f03["label_gold_agreement"]},
    {"labels": "notebook 03: the reward model trained on them", "share of pairs ordered as gold orders them": f03["gold_accuracy"]},
    {"labels": "notebook 08: a class's rankings vs gold", "share of pairs ordered as gold orders them": f08["vs_gold_rankings"]},
    {"labels": "notebook 08: a class's scores vs gold (pairs they imply)", "share of pairs ordered as gold orders them": f08["vs_gold_scores"]},
    {"labels": "notebook 08: reward model on the class's rankings", "share of pairs ordered as gold orders them": f08["rm_gold_acc_from_rankings"]},
    {"labels": "notebook 08: reward model on the class's scores", "share of pairs ordered as gold orders them": f08["rm_gold_acc_from_scores"]},
]
show_table(rows, float_format="{:.1%}", caption="Labels and the reward models they make, against the truth")
fig, ax = plt.subplots(figsize=(7.5, 3.2))
ax.barh([r["labels"] for r in rows][::-1], [r["share of pairs ordered as gold orders them"] for r in rows][::-1],
        color=["#7a9" if "reward model" in r["labels"] else "#c9a" for r in rows][::-1])
ax.axvline(0.5, color="#999", ls=":", label="chance")
ax.set(xlim=(0.4, 1.0), xlabel="pairs ordered as gold orders them")
ax.legend(fontsize=8)
plt.show()"""),
    md("""## 2. What a label costs

Labels are people's time. Notebook 08 times each label (its simulated learners read at a human pace; a
real class's own seconds replace them): a score of one text takes seconds, a ranking of K = 4 texts
longer, but a ranking gives K(K−1)/2 = 6 pairs at once. If you ranked in notebook 02's widget, your own
seconds per ranking are read from its file below (the widget records them)."""),
    code("""per_score, per_ranking = f08["seconds_per_score"], f08["seconds_per_ranking"]
cost = [{"label": "one score (1-7) of one text", "seconds": per_score, "pairs it yields": "(none on its own)",
         "seconds per pair": "-"},
        {"label": "one ranking of K = 4 texts", "seconds": per_ranking, "pairs it yields": 6,
         "seconds per pair": per_ranking / 6}]
path = RUNS_DIR / "02_rankings" / "rankings.jsonl"
mine = [r for r in RankingStore(path).records() if r.get("annotator") == "learner" and r.get("seconds")] \\
    if path.exists() else []
if mine:
    yours = sum(r["seconds"] for r in mine) / len(mine)
    cost.append({"label": f"your rankings in notebook 02 ({len(mine)})", "seconds": yours,
                 "pairs it yields": 6, "seconds per pair": yours / 6})
show_table(cost, float_format="{:.1f}", caption="Seconds per label (notebook 08's reading-speed model, and yours)")
pairs = f03["train_pairs"]
print(f"notebook 03's reward model learnt from {pairs:,} pairs: about {pairs / 6 * per_ranking / 3600:.1f} hours "
      f"of one person's ranking at {per_ranking:.0f} s a ranking. InstructGPT's reward model: about 33,000 prompts "
      f"of 4 to 9 ranked completions each.")
if not mine:
    print("(you have not ranked in notebook 02 yet: rank a few there, then run this cell again)")"""),
    md("""## 3. Preference is not truth, and a proxy is not the goal

Two limits the lab measured where they happen:

- **The loss and the overlap metrics do not judge text as a reader does** (notebook 01): over hundreds of
  samples the SFT loss ranks texts as a coin would against gold, and BLEU rewards a copy of a review with
  its verdict turned around. RLHF exists because what people prefer has to be asked.
- **The optimiser exploits the reward model's errors** (notebook 05): with no KL penalty the reward
  model's score keeps climbing while gold peaks and falls. And a label is a preference, not a fact: a
  reward model learns what labelers *like*, which is why InstructGPT reports truthfulness and toxicity
  separately, and why Anthropic's assistant was trained on helpfulness *and* harmlessness labels."""),
    code("""limits = [
    {"measured": "01: rank correlation of per-token loss with gold, 512 samples", "value": f"{f01['loss_gold_spearman']:+.2f}"},
    {"measured": "01: BLEU of a sentiment-flipped copy / of the SFT model's own completion",
     "value": f"{f01['bleu_flipped']:.2f} / {f01['bleu_sft']:.2f}"},
    {"measured": "05: beta = 0, gold at its peak and at the end of 100 updates",
     "value": f"{f05['beta0_gold_peak']:+.2f} -> {f05['beta0_gold_final']:+.2f}"},
    {"measured": "05: beta = 0, the reward model's score at the end", "value": f"{f05['beta0_rm_final']:+.2f}"},
    {"measured": "04: PPO with beta adaptive, gold SFT -> PPO", "value": f"{f04['gold_sft']:+.2f} -> {f04['gold_ppo']:+.2f}"},
    {"measured": "07: refreshed vs stale reward model on the policy's own samples",
     "value": f"{f07['rm_acc_policy_samples_refreshed']:.1%} vs {f07['rm_acc_policy_samples_stale']:.1%}"},
]
show_table(limits, caption="Where the lab measured each limit")
figures.record(fast=FAST, label_gold_agreement=f03["label_gold_agreement"], rm_gold_accuracy=f03["gold_accuracy"],
               class_vs_gold_rankings=f08["vs_gold_rankings"], seconds_per_ranking=per_ranking,
               seconds_per_score=per_score, hours_for_rm_pairs=pairs / 6 * per_ranking / 3600,
               beta0_gold_drop=f05["beta0_gold_peak"] - f05["beta0_gold_final"])"""),
    md("""## 4. Reading list

The papers this lab follows, one line each:

- **Christiano et al. 2017**, *Deep reinforcement learning from human preferences*: learn a reward model from
  pairwise human comparisons, then optimise it with RL; the idea everything here builds on.
- **Ziegler et al. 2019**, *Fine-Tuning Language Models from Human Preferences*: the recipe for language
  models: a reward model on a pretrained LM, PPO with a KL penalty to the start, an adaptive β.
- **Stiennon et al. 2020**, *Learning to summarize from human feedback*: the recipe at scale on summaries,
  and the first measurement of over-optimising a learned reward.
- **Ouyang et al. 2022**, *Training language models to follow instructions with human feedback*
  (InstructGPT): SFT, a reward model on rankings of K = 4 to 9, PPO; the three stages of this lab.
- **Bai et al. 2022**, *Training a Helpful and Harmless Assistant with RLHF*: iterated online RLHF (notebook
  07) and the trade-off between helpfulness and harmlessness.
- **Schulman et al. 2017**, *Proximal Policy Optimization Algorithms*: the clipped objective of notebook 04.
- **Schulman et al. 2015**, *High-Dimensional Continuous Control Using Generalized Advantage Estimation*: GAE.
- **Huang et al. 2023**, *The N Implementation Details of RLHF with PPO*: the details that make PPO work
  (score on the last token, whitening, temperature in the log-probs).
- **Gao et al. 2022**, *Scaling Laws for Reward Model Overoptimization*: gold against proxy as the policy
  moves away (notebook 05).
- **Rafailov et al. 2023**, *Direct Preference Optimization*: the policy as its own reward model, no RL
  loop (notebook 06).
- **Azar et al. 2023**, *A General Theoretical Paradigm to Understand Learning from Human Preferences*: IPO.
- **Ahmadian et al. 2024**, *Back to Basics: Revisiting REINFORCE Style Optimization* (RLOO) and **Shao et al.
  2024**, *DeepSeekMath* (GRPO): critic-free RL with a group baseline (notebook 06).
- **Lambert et al. 2022**, *Illustrating Reinforcement Learning from Human Feedback* (Hugging Face blog): the
  seed of this lab.
- **Casper et al. 2023**, *Open Problems and Fundamental Limitations of RLHF*: the limits above, and many
  more, surveyed."""),
]

nb = nbformat.v4.new_notebook(cells=cells, metadata={
    "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
    "language_info": {"name": "python"}})
nbformat.write(nb, ROOT / "notebooks" / "09_limits.ipynb")
print("wrote notebooks/09_limits.ipynb")
