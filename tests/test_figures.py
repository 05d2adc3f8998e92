"""rlhf_lab/figures.py, and the figures the committed notebooks carry: the lessons they state hold in them."""

import math
from pathlib import Path

import nbformat
import pytest

from rlhf_lab import figures

ROOT = Path(__file__).resolve().parents[1]


def test_record_outside_ipython_returns_plain_json_values():
    import numpy as np

    out = figures.record(a=np.float64(0.5), b=(1, 2), c={1: 2.0}, d="x")
    assert out == {"a": 0.5, "b": [1, 2], "c": {"1": 2.0}, "d": "x"}
    with pytest.raises(ValueError, match="finite"):
        figures.record(a=float("nan"))
    with pytest.raises(TypeError):
        figures.record(a=object())


def test_collect_reads_every_recorded_output_in_cell_order():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x", outputs=[nbformat.v4.new_output(
            "display_data", data={figures.MIME: {"a": 1, "b": 2}, "text/plain": "..."})]),
        nbformat.v4.new_markdown_cell("text"),
        nbformat.v4.new_code_cell("y", outputs=[nbformat.v4.new_output("stream", text="hello"),
                                                nbformat.v4.new_output("display_data", data={figures.MIME: {"b": 3}})]),
    ])
    assert figures.collect(nb) == {"a": 1, "b": 3}


def test_notebook_05_shows_over_optimisation_and_the_kl_lesson():
    f = figures.of_notebook(ROOT / "notebooks" / "05_overoptimisation.ipynb")
    assert f, "notebook 05 carries no figures: run scripts/run_notebooks.py on it"
    assert f["fast"] is False  # the committed outputs are a full run's
    # beta = 0: gold peaks and falls while the reward model's score still rises
    assert f["beta0_gold_peak"] - f["beta0_gold_final"] >= 0.3
    assert f["beta0_rm_final"] > f["beta0_rm_at_gold_peak"]
    # a KL penalty beats none, after the same number of updates
    assert f["best_beta"] > min(f["betas"])
    assert max(f["sweep_gold"]) == f["sweep_gold"][f["betas"].index(f["best_beta"])]
    # best-of-n: more samples, better gold; its KL is log n - (n - 1) / n
    assert f["bon_gold"]["64"] > f["bon_gold"]["1"]
    assert f["bon_kl"]["64"] == pytest.approx(math.log(64) - 63 / 64)  # 3.1745 nats
    assert all(share >= 0.95 for share in f["garble_prefers_original"].values())


def test_notebook_06_every_method_beats_sft_and_its_prose_holds():
    """The statements of notebook 06's closing section, against the figures of its committed full run."""
    f = figures.of_notebook(ROOT / "notebooks" / "06_beyond_ppo.ipynb")
    assert f, "notebook 06 carries no figures: run scripts/run_notebooks.py on it"
    assert f["fast"] is False
    frontier = f["frontier"]
    assert set(frontier) == {"ppo", "rloo", "grpo", "dpo", "best_of_n"}
    for method, point in frontier.items():
        assert {"gold", "kl", "seconds"} <= set(point), method
        assert point["gold"] > f["sft_gold"], method  # every method beats SFT on gold
    assert f["label_pairs"] == 2000  # the same label budget: the reward model's training pairs
    # best-of-n spends the least KL, for gold close to the best method's; its KL is the closed form
    bon = frontier["best_of_n"]
    n = bon["n"]
    assert bon["kl"] == pytest.approx(math.log(n) - (n - 1) / n)
    assert bon["kl"] < min(p["kl"] for m, p in frontier.items() if m != "best_of_n")
    assert bon["gold"] >= max(p["gold"] for p in frontier.values()) - 0.15
    # DPO trains fastest; beta decides how far it strays: at 0.1 tens of nats and less gold
    assert frontier["dpo"]["seconds"] < min(frontier[m]["seconds"] for m in ("ppo", "rloo", "grpo"))
    betas, kls, golds = f["dpo_betas"], f["dpo_kl"], f["dpo_gold"]
    assert betas == sorted(betas) and betas[0] == 0.1 and kls == sorted(kls, reverse=True) and kls[0] >= 10
    assert golds[0] < max(golds[1:])


def test_notebook_07_iterated_rlhf_and_its_prose_hold():
    """Notebook 07's figures (a full run) and the statements of its closing section."""
    f = figures.of_notebook(ROOT / "notebooks" / "07_iterated_rlhf.ipynb")
    assert f, "notebook 07 carries no figures: run scripts/run_notebooks.py on it"
    assert f["fast"] is False and f["rounds"] >= 3
    # the refreshed reward model judges the last round's policy samples better than the first one
    assert f["rm_acc_policy_samples_refreshed"] > f["rm_acc_policy_samples_stale"]
    assert f["rm_acc_pairs"] >= 1000  # ~1 point of standard error
    # the same labels for one-shot; both policies beat SFT
    assert f["labels_per_round"][-1] == 700 and f["labels_per_round"] == sorted(f["labels_per_round"])
    assert min(f["gold_iterated"], f["gold_one_shot_same_labels"]) > f["gold_sft"]
    # "a few nats": the adaptive KL penalty holds both policies near the SFT model
    assert f["kl_iterated"] < 6 and f["kl_one_shot"] < 6
    # the new labels are noisier: 89% of round 0's pairs agree with gold, 75-78% of the later rounds'
    first, later = f["labels_agree_per_round"][0], f["labels_agree_per_round"][1:]
    assert first > 0.85 and all(0.72 < a < 0.80 for a in later)
    # ... about as often as the first reward model already orders the policy's pairs right
    assert all(abs(a - s) < 0.05 for a, s in zip(later, f["rm_acc_stale_per_round"]))
    # one round's new rankings: a quarter of the first file
    assert f["labels_per_round"][1] - f["labels_per_round"][0] == f["labels_per_round"][0] // 4


def test_notebook_08_class_agreement_and_its_prose_hold():
    """Notebook 08's figures (a full run, on simulated learners: no class's files are committed) and the
    design its prose and the README state."""
    import json
    import statistics

    path = ROOT / "notebooks" / "08_classroom.ipynb"
    f = figures.of_notebook(path)
    assert f, "notebook 08 carries no figures: run scripts/run_notebooks.py on it"
    assert f["fast"] is False and f["simulated"] is True
    assert json.loads(path.read_text())["metadata"]["rlhf_lab"]["last_run"]["seconds"] < 300  # "a few minutes"
    # 8 prompts x K = 4 samples, scored on 1-7 and ranked by every learner (the README, the teacher's guide)
    assert (f["prompts_ranked"], f["k"], f["texts_scored"], f["scale"]) == (8, 4, 32, [1, 7])
    for name in ("alpha_scores", "alpha_rankings", "pair_agreement_scores", "pair_agreement_rankings",
                 "rm_gold_acc_from_scores", "rm_gold_acc_from_rankings", "exact_share_scores", "kendalls_w"):
        assert 0 < f[name] <= 1, name
    # the seed's claim, on the same pairs: the learners' rankings agree more than their scores imply
    assert f["pair_agreement_rankings"] > f["pair_agreement_scores"] + 0.05
    # the reward models: each a mean over its seeds, both well above chance on enough held-out pairs
    for kind, name in (("rankings", "rm_gold_acc_from_rankings"), ("scores", "rm_gold_acc_from_scores"),
                       ("scores_per_learner", "rm_gold_acc_from_scores_per_learner")):
        assert len(f["rm_per_seed"][kind]) == 3 and f[name] == pytest.approx(statistics.fmean(f["rm_per_seed"][kind]))
        assert f[name] > 0.65, name
    assert f["rm_eval_pairs"] >= 500
