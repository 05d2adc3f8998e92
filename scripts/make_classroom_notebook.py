"""Write notebooks/08_classroom.ipynb (the cells only, no outputs) from the text below.

    python scripts/make_classroom_notebook.py                        # write the notebook
    python scripts/run_notebooks.py notebooks/08_classroom.ipynb     # then run it, saving the outputs

The notebook's code calls rlhf_lab.classroom, which holds the logic (tested in tests/test_classroom.py).
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
PATH = ROOT / "notebooks" / "08_classroom.ipynb"

CELLS = [
    ("md", r"""
# 08 · A class as annotators (a teacher's notebook)

Notebook 02 told you *why* RLHF collects rankings and not scores: ask people for a **score** and they
disagree, because each has their own scale (one gives a 6, another a 4 to the same text); ask them to
**rank** and they agree far more (InstructGPT; the Hugging Face post *Illustrating RLHF*). It showed the
claim with simulated annotators, whose scores are a fixed function of what they rank by, so the claim
held by construction. A classroom is a room full of real annotators: here the class checks it on itself.

1. **The item set** (the teacher, before class): a few prompts with K samples each, in one file that
   every learner gets, so everyone labels the same texts in the same order.
2. **Label** (every learner): score every text on 1–7, and rank every prompt's samples, in two blocks.
3. **The result** (the teacher, on the projector): the learners' files merged, the class's agreement on
   its scores against its rankings, each learner against the gold labeler, two reward models trained on
   the class's labels (one on the rankings, one on the scores), and what the labels cost in the class's
   own seconds.

**With no class files** (run unattended, in CI, or before class) part 3 runs on **simulated learners**,
and says so. Each has their own use of the scale (some use 1–7, others 2–6; harsh or lenient; their own
curve) and their own noise, so their scores are *not* one shared map of what they perceive and the
comparison is not settled in advance. The teacher's guide is at the end.

The work is done by `rlhf_lab/classroom.py` (tested in `tests/test_classroom.py`), also from the command
line: `rlhf-lab class items` and `rlhf-lab class merge FILE...`. **Time:** a few minutes on a 2-core
laptop, most of it the reward models; FAST mode well under a minute.
"""),
    ("params", r"""
FAST = False  # True: a quick run (CI, a first look); RLHF_LAB_FAST=1 switches it on too
SEED = 0  # the item set's prompts and samples, and the simulated learners
NAME = ""  # learners: your name, then run part 2 (empty: no labelling in this run)
ITEMS_FILE = None  # the item set the teacher handed out; None: runs/08_classroom/class_items.json, made here
CLASS_FILES = None  # teacher: the collected files, or their folder; None: runs/08_classroom/class/
N_SIMULATED = None  # simulated learners when no class files are found; None: 20 full, 8 FAST
RM_SEEDS = None  # reward models trained per kind of label, to see the seed-to-seed spread; None: 3 full, 1 FAST
"""),
    ("code", r"""
from rlhf_lab.utils import fast_mode; FAST = fast_mode(FAST)
"""),
    ("code", r"""
import time
from pathlib import Path

import datasets
import matplotlib.pyplot as plt
import torch
import transformers
from IPython.display import Markdown, display

from rlhf_lab import classroom, figures
from rlhf_lab.display import show_table
from rlhf_lab.loading import load_model
from rlhf_lab.reward_model import reward_config
from rlhf_lab.utils import run_dir, short_path

datasets.disable_progress_bars()  # keep the output to what the cells show
transformers.utils.logging.disable_progress_bar()
if not torch.cuda.is_available():
    torch.set_num_threads(1)  # the tiny model on a CPU: one thread is the safe choice (see notebook 04)

notebook_start = time.time()
OUT = run_dir(classroom.CLASS_DIR)  # runs/08_classroom: git-ignored, never data/
N_SIMULATED = N_SIMULATED or (8 if FAST else 20)
RM_SEEDS = RM_SEEDS or (1 if FAST else 3)
# the tiny world's pretrained GPT-2 (data/tiny-gpt2) writes the samples and is the reward models' trunk: the
# same model on every machine, no SFT run needed
model, tokenizer = load_model("tiny", device="cpu")
print(f"FAST = {FAST}; results in {short_path(OUT)}")
"""),
    ("md", r"""
## 1 · The item set (the teacher, before class)

The item set is a few prompts of the tiny world, each with K samples of the tiny GPT-2, and the order in
which to score the texts. **Every learner does both tasks on every item**: scores each text on its own,
and ranks each prompt's K samples side by side.

- *Both tasks on the same items*, because the comparison that matters is like with like: the rankings'
  agreement against the agreement that the **same people's scores** imply on the **same pairs** of
  samples. Giving half the items to scoring and half to ranking would mix the task's effect with the
  items' (some prompts have an obvious best sample, others are near-ties) and halve the data of each.
- *In counterbalanced order*: the first task colours the second (having scored four texts, one may rank
  them by those scores). About half the class scores first and half ranks first, by a hash of each
  learner's name (`classroom.first_task`), and the result is shown for each half too.
- *Scores one text at a time*, with each prompt's samples spread apart in the order, so that a score is
  an absolute judgement and not a ranking in disguise.

Save the file and hand it out (`rlhf-lab class items --out class_items.json` writes the same kind of file):
sampling depends on the machine's torch build, so a seed alone would not give everyone the same texts.
"""),
    ("code", r"""
items_path = Path(ITEMS_FILE) if ITEMS_FILE else OUT / "class_items.json"
if ITEMS_FILE or (items_path.is_file() and classroom.load_item_set(items_path)["seed"] == SEED):
    item_set = classroom.load_item_set(items_path)
    print(f"item set {item_set['id']} from {short_path(items_path)}")
else:
    item_set = classroom.make_item_set(model, tokenizer, seed=SEED)
    classroom.save_item_set(item_set, items_path)
    print(f"made item set {item_set['id']} on this machine: {short_path(items_path)}; hand this file out, so that "
          "every learner labels the same texts")
K, N_ITEMS = item_set["k"], len(item_set["items"])
print(f"{N_ITEMS} prompts x K = {K} samples: {N_ITEMS * K} texts to score on {item_set['scale'][0]}-"
      f"{item_set['scale'][1]} and {N_ITEMS} rankings")
show_table([{"card": i + 1, "prompt": item_set["items"][0]["prompt"], "completion": c}
            for i, c in enumerate(item_set["items"][0]["completions"])],
           caption="The first prompt to rank. Model text is always shown escaped: it is data, never markup.")
"""),
    ("md", r"""
## 2 · Label (every learner)

Set `NAME = "your name"` in the parameters cell (and `ITEMS_FILE` to the file your teacher handed out),
then run the two cells below **one after the other**: the first says whether you start by scoring or by
ranking. The task is the lab's: **a positive, non-repetitive movie review that reads like English**.
Judge by that, not by your taste in films.

- **Score** (one text at a time): click a value from 1 (worst) to 7 (best), or press its digit, then
  **Submit** (Enter). Backspace clears your choice; **Skip** if you cannot judge a text.
- **Rank** (one prompt's samples side by side): click the cards from best to worst, then **Submit**, as in
  notebook 02. Keys 1–9 pick a card, Enter submits, Backspace undoes.

Every label is written to `runs/08_classroom/class/<your name>.jsonl` the moment you submit (one line,
flushed to disk), with the seconds it took; running a cell again resumes where you stopped. **Hand in that
one file.** Running unattended (NAME empty), nothing is shown and the notebook carries on.
"""),
    ("code", r"""
session = None
if NAME.strip():
    session = classroom.learner_session(item_set, NAME, OUT / "class")
    print(f"{session.name}: you {session.order[0]} first, then {session.order[1]}; your file: {short_path(session.path)}")
    display(session.parts[0])
else:
    print('NAME is empty: no labelling in this run. To label, set NAME = "your name" in the parameters cell.')
"""),
    ("code", r"""
if session is not None:
    print(f"part 2 of 2: {session.order[1]}")
    display(session.parts[1])
"""),
    ("md", r"""
## 3 · The class's files, pooled (the teacher)

Collect the learners' files into one folder and set `CLASS_FILES` to it (or list the files). Each file
is read as it is, never changed. A line that is not a label, a last line cut off by a kernel that died,
a second label of the same text: each is reported by file and line, and everything else is used. If
fewer than two learners' files are found, simulated learners take the class's place, and the cell says so.
"""),
    ("code", r"""
given = [CLASS_FILES] if isinstance(CLASS_FILES, (str, Path)) else list(CLASS_FILES or [])  # files, folders, patterns
source = given or [OUT / "class"]  # where this notebook's learners' files are, if nothing is given
labels = classroom.read_class_files(given or [p for p in source if p.is_dir()])
for problem in labels.problems:  # each bad line by file and line; the rest is used
    print("  problem:", problem)
SIMULATED = len(labels.learners) < 2
if SIMULATED:
    found = "no learner's file" if not labels.learners else "only one learner's file"
    learners = classroom.simulated_class(N_SIMULATED, seed=SEED)
    paths = classroom.write_simulated_files(item_set, learners, OUT / "simulated")
    labels = classroom.read_class_files(paths)
    print(f"SIMULATED LEARNERS: {len(labels.learners)} of them, because {', '.join(short_path(p) for p in source)} "
          f"holds {found}. Their files are in {short_path(OUT / 'simulated')}.")
else:
    print(f"the class: {len(labels.learners)} learners' files from {', '.join(short_path(p) for p in source)}")
firsts = [labels.first[n] for n in labels.learners]
print(f"{len(labels.scores)} scores and {len(labels.rankings)} rankings; scored first: {firsts.count('score')} "
      f"learners, ranked first: {firsts.count('rank')}")
"""),
    ("md", r"""
## 4 · Scores against rankings

Three ways to measure how much the class agrees:

- **Krippendorff's alpha**: 1 − observed disagreement / the disagreement expected by chance, over every
  pair of learners who labelled the same text (Krippendorff 2011). On the scores at the *interval* level
  (a 6 and a 4 are 2 apart); on the rankings at the *ordinal* level, each text's place 1..K within its
  prompt. 1 is perfect agreement, 0 is no better than chance.
- **Kendall's W** for the rankings: how much the class's K-way orders of one prompt concur (1: all alike).
- **Pairs ordered alike**: for two learners and two samples of one prompt, do they put them in the same
  order? For rankings, directly; for scores, the order the scores imply, a tie counting one half (what a
  coin flip to break it would give). This is the **like-with-like** comparison: the same pairs, the same
  people, only the task differs.

Alpha on scores also counts the differences *between* prompts (a glowing review against a scathing one
is easy to score apart), which rankings never compare; the pairs measure the two tasks on the same ground.
"""),
    ("code", r"""
result = classroom.agreement(labels)
cost = classroom.label_cost(labels)
print(("SIMULATED learners\n" if SIMULATED else "") + classroom.agreement_table(result, cost))
print(f"\n{result['score_tie_share']:.0%} of the pairs a learner scored got two equal scores")
fig = classroom.plot_agreement(result, labels)
plt.show()
show_table([{"learners": group, "n": r["learners"], "alpha, scores": r["alpha_scores"],
             "alpha, rankings": r["alpha_rankings"], "pairs alike, scores": r["pair_agreement_scores"],
             "pairs alike, rankings": r["pair_agreement_rankings"]}
            for group, r in (("scored first", classroom.agreement(labels, first="score")),
                             ("ranked first", classroom.agreement(labels, first="rank")), ("all", result))],
           float_format="{:.2f}", caption="Each half of the class on its own: did the first task change the second?")
"""),
    ("md", r"""
## 5 · Each learner against the gold labeler

The tiny world's gold labeler (`rlhf_lab.gold`) is its ground truth. For each learner: the share of sample
pairs (of one prompt, gold not tied) that their ranking orders as gold does, and that their scores do (a
tie in their scores counts one half). Half is what coin flips would give.
"""),
    ("code", r"""
per_learner = classroom.versus_gold(labels)
fig = classroom.plot_versus_gold(per_learner)
plt.show()
mean_vs_gold = {kind: sum(v[kind] for v in per_learner.values()) / len(per_learner) for kind in ("rankings", "scores")}
print(f"mean over learners: rankings {mean_vs_gold['rankings']:.1%}, scores {mean_vs_gold['scores']:.1%} of pairs "
      "ordered as gold orders them")
"""),
    ("md", r"""
## 6 · Two reward models from the class's labels

Does it matter for the reward model? Two reward models learn from the **same texts** of the class:

- **from the rankings**: every learner's ranking becomes its K(K−1)/2 pairs, pooled (a pair the class
  split on is there both ways); the Bradley-Terry loss −log σ(r_chosen − r_rejected) of notebook 03;
- **from the scores**: a regression, the mean squared error to each text's pooled score, standardised
  (mean 0, std 1 over all the class's scores), `classroom.score_regression_loss`. A third bar standardises
  each learner's scores on their own first, which takes out each person's offset and spread.

Everything else is the same: the tiny GPT-2 as the trunk with a LoRA adapter and a scalar head
(`reward_model.py`), the optimiser and schedule, batches of one prompt's texts, the number of steps. Both
are measured on held-out prompts (the validation split, never in the item set): the share of pairs of
samples they order as the gold labeler does. The class labels few texts, so expect modest accuracies and
a seed-to-seed spread (the dots); what to compare is the two kinds of label.
"""),
    ("code", r"""
eval_pairs = classroom.gold_pairs(model, tokenizer, n_prompts=40 if FAST else 100, k=K, seed=SEED + 1000)
rm_cfg = reward_config(fast=FAST, epochs=3 if FAST else 6, eval_every=10**6)
start = time.time()
rm = classroom.compare_reward_models(labels, model, tokenizer, eval_pairs, rm_cfg, seeds=range(SEED, SEED + RM_SEEDS))
print(f"{len(rm['seeds'])} seed(s) x 3 reward models in {time.time() - start:.0f} s; trained on {rm['train_pairs']} "
      f"pooled pairs / {rm['train_texts']} texts, measured on {len(eval_pairs)} held-out pairs")
show_table([{"labels": name, "accuracy vs gold (mean)": rm["mean"][key],
             "per seed": ", ".join(f"{a:.3f}" for a in rm["per_seed"][key])}
            for name, key in (("rankings (Bradley-Terry)", "rankings"), ("scores, pooled (regression)", "scores"),
                              ("scores, per learner (regression)", "scores_per_learner"))], float_format="{:.3f}")
"""),
    ("md", r"""
## 7 · What the labels cost

Every label carries the seconds it took, from the item's showing to Submit (the simulated learners'
seconds come from a reading-speed model, not from people). One prompt's K(K−1)/2 pairs cost either K
scores or one ranking.
"""),
    ("code", r"""
fig = classroom.plot_reward_models_and_cost(rm, cost)
plt.show()
print(f"median: {cost['seconds_per_score']:.1f} s per score, {cost['seconds_per_ranking']:.1f} s per ranking of K = {K}")
"""),
    ("code", r"""
recorded = figures.record(
    alpha_scores=result["alpha_scores"], alpha_rankings=result["alpha_rankings"],
    pair_agreement_scores=result["pair_agreement_scores"], pair_agreement_rankings=result["pair_agreement_rankings"],
    rm_gold_acc_from_scores=rm["mean"]["scores"], rm_gold_acc_from_rankings=rm["mean"]["rankings"],
    rm_gold_acc_from_scores_per_learner=rm["mean"]["scores_per_learner"], rm_per_seed=rm["per_seed"],
    rm_eval_pairs=len(eval_pairs), exact_share_scores=result["exact_share_scores"], kendalls_w=result["kendalls_w"],
    score_tie_share=result["score_tie_share"], learners=result["learners"], texts_scored=result["texts_scored"],
    prompts_ranked=result["prompts_ranked"], vs_gold_rankings=mean_vs_gold["rankings"],
    vs_gold_scores=mean_vs_gold["scores"], seconds_per_score=cost["seconds_per_score"],
    seconds_per_ranking=cost["seconds_per_ranking"], scale=result["scale"], k=K, simulated=SIMULATED, fast=FAST)
"""),
    ("md", r"""
## 8 · What this class shows

Stated from this run's numbers (the figures recorded above; `tests/test_figures.py` checks the committed
run's):
"""),
    ("code", r"""
f = recorded
who = "These simulated learners" if f["simulated"] else "This class"
pair_gap = f["pair_agreement_rankings"] - f["pair_agreement_scores"]
rm_gap = f["rm_gold_acc_from_rankings"] - f["rm_gold_acc_from_scores"]
spread = max(max(v) - min(v) for v in f["rm_per_seed"].values())  # the largest seed-to-seed range
if len(f["rm_per_seed"]["rankings"]) < 2:
    rm_verdict = "With one seed there is no seed-to-seed spread to compare the difference with (FAST mode)."
elif abs(rm_gap) <= spread:
    rm_verdict = (f"The difference is within the seed-to-seed spread ({spread:.1%}): with every learner labelling "
                  "every text, pooling averages each person's scale away, and here both kinds of label carried about "
                  "the same information.")
elif rm_gap > 0:
    rm_verdict = f"The rankings' reward model is ahead by more than the seed-to-seed spread ({spread:.1%})."
else:
    rm_verdict = (f"The scores' reward model is ahead by more than the seed-to-seed spread ({spread:.1%}): with every "
                  "learner labelling every text, pooling averages each person's scale away, and scores also compare "
                  "texts across prompts, which rankings never do.")
lines = [
    f"- **{who} ordered {f['pair_agreement_rankings']:.0%} of the pairs alike when ranking, and "
    f"{f['pair_agreement_scores']:.0%} by their scores** on the same pairs: rankings agree "
    + ("more" if pair_gap > 0.01 else "less" if pair_gap < -0.01 else "about as much")
    + f". {f['score_tie_share']:.0%} of the pairs a learner scored got two equal scores: a 1-7 scale is coarse "
    "for telling apart two samples of one prompt, and each tie is a coin flip.",
    f"- **Alpha: {f['alpha_scores']:.2f} on the scores, {f['alpha_rankings']:.2f} on the rankings.** Alpha on "
    "scores " + ("is higher: it also counts the easy differences between prompts, which rankings never compare"
                 if f["alpha_scores"] > f["alpha_rankings"] else "is lower: the learners' own uses of the scale "
                 "count as disagreement") + f". Only {f['exact_share_scores']:.0%} of two learners' scores of a "
    "text were the same number.",
    f"- **Against gold**, the learners' rankings order {f['vs_gold_rankings']:.0%} of pairs as gold does, "
    f"their scores {f['vs_gold_scores']:.0%}.",
    f"- **Reward models**: from the rankings {f['rm_gold_acc_from_rankings']:.1%}, from the pooled scores "
    f"{f['rm_gold_acc_from_scores']:.1%}, from scores standardised per learner "
    f"{f['rm_gold_acc_from_scores_per_learner']:.1%} of {f['rm_eval_pairs']} held-out pairs ordered as gold does "
    f"(rankings minus pooled scores: {rm_gap:+.1%}). " + rm_verdict + " The seed's claim is about single labels: "
    "where each text is labelled by one person, as in a labelling team, a score carries that person's scale "
    "and a ranking does not.",
    f"- **Cost**: {f['seconds_per_score']:.1f} s per score (×{K} per prompt) against "
    f"{f['seconds_per_ranking']:.1f} s per ranking of {K}"
    + (" (simulated seconds)." if f["simulated"] else "."),
]
display(Markdown("\n".join(lines)))
print(f"notebook ran in {time.time() - notebook_start:.0f} s ({'FAST' if FAST else 'full'} mode)")
"""),
    ("md", r"""
## Teacher's guide: 15 minutes of class time

**Before class** (2 minutes, once): make the item set and put it where learners can download it.

```bash
rlhf-lab class items --out class_items.json      # 8 prompts x 4 samples (--prompts, --k, --seed)
```

**In class**

1. *Hand out* (2 min): learners open `notebooks/08_classroom.ipynb`, set `NAME = "their name"` and
   `ITEMS_FILE = "../class_items.json"`, and run the notebook down to part 2. Read the task aloud: a positive,
   non-repetitive movie review that reads like English.
2. *Label* (about 8 min): the two cells of part 2, one after the other. Half the room scores first, half
   ranks first; nobody needs to know which.
3. *Collect* (1 min): each learner uploads `runs/08_classroom/class/<name>.jsonl` (one file each) into a
   shared folder, e.g. `collected/`.
4. *Merge and show* (4 min): on the projector,

   ```bash
   rlhf-lab class merge collected/                  # the agreement table; bad files named by line
   ```

   then set `CLASS_FILES = "../collected"` here (paths are relative to `notebooks/`) and run part 3 onwards for the plots, each learner against
   gold, the two reward models, and the class's seconds per label.

Questions to ask: which pairs did the class split on, and are they near-ties for gold too? Who used only
the middle of the scale? Did the half that scored first rank differently?

## What to try

- `rlhf-lab class items --k 6`: more samples per prompt make a ranking harder but give 15 pairs instead of 6.
- Fewer simulated learners (`N_SIMULATED = 3`): how much do the statistics move?
- Label the item set yourself, then set `CLASS_FILES` to your file and the simulated learners' folder, to
  see where you stand among them.
"""),
]


def main() -> None:
    cells = []
    for kind, text in CELLS:
        text = text.strip("\n")
        if kind == "md":
            cells.append(new_markdown_cell(text))
        else:
            cell = new_code_cell(text)
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
            cells.append(cell)
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}})
    for n, cell in enumerate(nb.cells):
        cell.id = f"classroom-{n:02d}"  # stable ids: rebuilding the notebook gives the same file
    nbformat.write(nb, PATH)
    print(f"wrote {PATH.relative_to(ROOT)} ({len(cells)} cells)")


if __name__ == "__main__":
    main()
