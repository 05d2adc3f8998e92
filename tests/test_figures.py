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
    # the refreshed reward model judges the policy's samples about as well as the first one: within a point and
    # a half each round ("about the standard error")
    assert all(abs(r - st) < 0.015 for r, st in zip(f["rm_acc_refreshed_per_round"], f["rm_acc_stale_per_round"]))
    assert f["rm_acc_pairs"] >= 1000  # ~1 point of standard error
    # the same labels for one-shot; both policies beat SFT
    assert f["labels_per_round"][-1] == 700 and f["labels_per_round"] == sorted(f["labels_per_round"])
    assert min(f["gold_iterated"], f["gold_one_shot_same_labels"]) > f["gold_sft"]
    # "a few nats": the adaptive KL penalty holds both policies near the SFT model
    assert f["kl_iterated"] < 6 and f["kl_one_shot"] < 6
    # the new labels are noisier, and fewer each round: 89% of round 0's pairs agree with gold, 68-82% later
    first, later = f["labels_agree_per_round"][0], f["labels_agree_per_round"][1:]
    assert first > 0.85 and later == sorted(later, reverse=True) and later[0] < first
    # ... in the last two rounds less often than the first reward model already orders the policy's pairs right
    assert all(a < st for a, st in zip(later[1:], f["rm_acc_stale_per_round"][1:]))
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


def test_notebooks_00_to_04_record_their_figures_and_the_claims_hold():
    """The stage notebooks' key figures (full runs) and what their prose says of them."""
    f0 = figures.of_notebook(ROOT / "notebooks" / "00_welcome.ipynb")
    assert f0 and f0["fast"] is False
    assert (f0["vocab_size"], f0["training_reviews"]) == (2858, 20000)
    assert round(f0["parameters"] / 1e6, 1) == 1.2  # "its 1.2M-parameter GPT-2"

    f1 = figures.of_notebook(ROOT / "notebooks" / "01_sft.ipynb")
    assert f1 and f1["fast"] is False
    assert f1["eval_loss_after"] < f1["eval_loss_before"]
    # "the mean gold score moves by a tenth at most"
    assert abs(f1["mean_gold_after"] - f1["mean_gold_before"]) <= 0.1
    # the loss does not judge the whole text: over hundreds of samples it ranks them nearly as a coin would
    assert f1["loss_gold_samples"] >= 500 and abs(f1["loss_gold_spearman"]) < 0.3
    assert f1["loss_gold_pairs_agree"] < 0.65
    # BLEU and ROUGE prefer the flipped copy (a reader's opposite) to the model's own completions
    assert f1["bleu_flipped"] > f1["bleu_sft"] and f1["rouge_l_flipped"] > f1["rouge_l_sft"]
    assert f1["gold_side_flipped"] < 0.2 < f1["gold_side_sft"]

    f2 = figures.of_notebook(ROOT / "notebooks" / "02_rankings.ipynb")
    assert f2 and f2["fast"] is False
    assert f2["pairs"] <= f2["rankings"] * f2["K"] * (f2["K"] - 1) // 2
    # on one measure (pairs ordered alike) the rankings agree more than the scores; both well above chance
    assert 0.5 < f2["score_pair_agreement"] < f2["ranking_agreement"]

    f3 = figures.of_notebook(ROOT / "notebooks" / "03_reward_model.ipynb")
    assert f3 and f3["fast"] is False
    assert f3["gold_accuracy"] > 0.8 and f3["held_out_pairs"] >= 300
    sizes = f3["trunk_sizes"]  # every trunk's figures, in an output: three depths and a random start, 3 seeds
    assert set(sizes) == {"1 layer, pretrained", "2 layers, pretrained", "4 layers, pretrained", "4 layers, random",
                          "4 layers, pretrained, no SFT", "8 layers, pretrained, no SFT"}
    assert all(v["seeds"] == 3 for v in sizes.values()) and f3["size_study_pairs"] >= 1000
    acc = {k: v["gold_accuracy"] for k, v in sizes.items()}
    # deeper reads better, by more than the seeds' spread; a random start is far behind the pretrained one
    for small, large in (("1 layer, pretrained", "2 layers, pretrained"), ("2 layers, pretrained", "4 layers, pretrained")):
        assert acc[large] - acc[small] > max(sizes[small]["std"], sizes[large]["std"]), (small, large)
    assert acc["4 layers, pretrained"] - acc["4 layers, random"] > 0.1
    # larger than the policy (8 layers against 4, both pretrained without SFT): better by more than either's
    # spread over seeds, and each halving below the policy's size costs two points or more
    big, same = sizes["8 layers, pretrained, no SFT"], sizes["4 layers, pretrained, no SFT"]
    assert big["gold_accuracy"] - same["gold_accuracy"] > max(big["std"], same["std"])
    assert acc["4 layers, pretrained"] - acc["2 layers, pretrained"] >= 0.02
    assert acc["2 layers, pretrained"] - acc["1 layer, pretrained"] >= 0.02
    # SFT's adapter changes the reward model's accuracy by less than the seeds' spread
    assert abs(acc["4 layers, pretrained"] - same["gold_accuracy"]) < same["std"]

    f4 = figures.of_notebook(ROOT / "notebooks" / "04_ppo.ipynb")
    assert f4 and f4["fast"] is False
    assert f4["gold_ppo"] > f4["gold_sft"] and f4["reward_ppo"] > f4["reward_sft"]
    assert f4["action_space"] == {"tiny GPT-2": 2858, "GPT-2 (hub)": 50257}
    assert f4["observation_positions"] == {"tiny GPT-2": 128, "GPT-2 (hub)": 1024}
    # SFT is optional here: PPO from the pretrained model gains as much gold ("SFT buys nothing on gold")
    pre = f4["from_pretrained"]
    assert pre["gold_after"] > pre["gold_before"] + 0.5 and f4["gold_ppo"] <= pre["gold_after"] + 0.1
    # a 1-layer reward model: PPO against it still gains, about as much gold ("costs PPO little")
    assert f4["small_rm"]["gold_after"] > f4["gold_sft"] + 0.5
    assert abs(f4["small_rm"]["gold_after"] - f4["gold_ppo"]) < 0.15
    # the 8-layer reward model (larger than the policy) takes PPO as far, not further: within 0.15 of the others
    assert f4["large_rm"]["gold_after"] > f4["gold_sft"] + 0.5
    assert abs(f4["large_rm"]["gold_after"] - f4["gold_ppo"]) < 0.15
    # the sweep: the smaller beta, the farther the policy travels
    sweep = sorted(f4["sweep"].values(), key=lambda r: r["beta"])
    assert [r["kl"] for r in sweep] == sorted((r["kl"] for r in sweep), reverse=True)


def _stated_minutes(text: str) -> float | None:
    """"about N minutes" -> N; "under a minute" -> 0.5 (read as: up to a minute)."""
    import re

    if re.search(r"\*\*Time:\*\* under a minute", text):
        return 0.5
    m = re.search(r"\*\*Time:\*\* about (\d+) minutes?", text)
    return float(m.group(1)) if m else None


@pytest.mark.parametrize("name", ["01_sft", "02_rankings", "03_reward_model", "04_ppo", "05_overoptimisation",
                                  "06_beyond_ppo", "07_iterated_rlhf", "08_classroom", "09_limits"])
def test_the_time_a_notebook_states_is_the_time_its_full_run_took(name):
    """Each stage notebook states its full-mode time at the top, and notebook 00's table repeats it; both
    within a factor of two of the committed full run's own seconds (machines differ; an order does not)."""
    import json
    import re

    nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    seconds = nb["metadata"]["rlhf_lab"]["last_run"]["seconds"]
    stated = _stated_minutes("".join(nb["cells"][0]["source"]))
    assert stated is not None, f"{name}: no '**Time:** about N minutes' (or 'under a minute') at the top"
    if stated == 0.5:  # "under a minute": at most a minute, with the same factor of two for a slower machine
        assert seconds <= 2 * 60, (name, seconds)
    else:
        assert 0.5 <= seconds / (60 * stated) <= 2, (name, seconds, stated)
    welcome = "".join(json.loads((ROOT / "notebooks" / "00_welcome.ipynb").read_text())["cells"][0]["source"])
    row = re.search(rf"\| {name[:2]} · [^|]*\|[^|]*\| (?:about (\d+) minutes?|(under a minute))", welcome)
    assert row and (float(row.group(1)) if row.group(1) else 0.5) == stated, \
        f"notebook 00's table and {name} disagree on its time"


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("0*.ipynb")) +
                         sorted((ROOT / "notebooks" / "exercises" / "solutions").glob("0*.ipynb")),
                         ids=lambda p: p.name)
def test_every_stage_and_solution_notebook_carries_the_figures_of_a_full_run(path):
    f = figures.of_notebook(path)
    assert f, f"{path.name} records no figures: add a figures.record(...) cell and run scripts/run_notebooks.py on it"
    assert f["fast"] is False, f"{path.name}'s committed outputs are a FAST run's"


def test_notebook_09_limits_and_its_prose_hold():
    """Notebook 09 reads the other notebooks' figures; what its prose says of them holds."""
    f = figures.of_notebook(ROOT / "notebooks" / "09_limits.ipynb")
    assert f and f["fast"] is False
    # the reward model beats its own labels against gold (it averages their noise); a class is noisier
    assert f["rm_gold_accuracy"] > f["label_gold_agreement"] > f["class_vs_gold_rankings"]
    f08 = figures.of_notebook(ROOT / "notebooks" / "08_classroom.ipynb")
    assert max(f08["rm_gold_acc_from_rankings"], f08["rm_gold_acc_from_scores"]) < f["rm_gold_accuracy"]
