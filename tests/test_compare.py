"""rlhf_lab/compare.py: every method measured one way (same prompts, same seed, same SFT draws), its
cost measured, and each method's best setting picked from its points."""

import math

import numpy as np
import pytest

from rlhf_lab import compare, dpo
from rlhf_lab.loading import load_prompts
from rlhf_lab.pipeline import rankings_path, reward_model_path, sft_adapter_path

SMALL = dict(max_new_tokens=12)  # short samples: the tests check bookkeeping, not quality


# -----------------------------------------------------------------------------
# cost


def test_measured_sees_memory_taken_and_given_back_inside_the_block():
    with compare.measured() as before:
        pass
    with compare.measured() as cost:
        block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
        block.sum()
        del block
    assert cost["seconds"] > 0 and cost["memory"] in ("peak RSS", "peak RSS since start")
    assert cost["peak_gib"] - cost["start_gib"] >= 0.18  # the peak, though the block gave it back
    if cost["memory"] == "peak RSS":  # reset at each start: an earlier block's peak does not carry over
        with compare.measured() as after:
            pass
        assert after["peak_gib"] - after["start_gib"] < 0.1
        assert before["peak_gib"] - before["start_gib"] < 0.1


# -----------------------------------------------------------------------------
# the best setting of each method


def _result(method, setting, points, peak=1.0):
    return {"method": method, "label": compare.LABELS[method], "setting": setting, "points": points,
            "peak_gib": peak, "start_gib": 0.5, "memory": "peak RSS"}


def test_frontier_takes_each_methods_highest_gold_with_its_cost():
    rl = _result("grpo", "step", [{"step": 0, "gold": 0.1, "gold_se": 0.1, "kl": 0.0, "proxy": 0.0, "seconds": 0.0},
                                  {"step": 10, "gold": 0.9, "gold_se": 0.1, "kl": 3.0, "proxy": 1.0, "seconds": 12.5},
                                  {"step": 20, "gold": 0.7, "gold_se": 0.1, "kl": 6.0, "proxy": 1.5, "seconds": 25.0}],
                 peak=0.75)
    dpo = _result("dpo", "beta", [{"beta": 0.1, "gold": 0.4, "gold_se": 0.1, "kl": 20.0, "proxy": 0.2, "seconds": 30.0},
                                  {"beta": 0.3, "gold": 0.8, "gold_se": 0.1, "kl": 4.0, "proxy": 0.9, "seconds": 29.0}])
    rows = compare.frontier([rl, dpo])
    assert [r["method"] for r in rows] == ["GRPO", "DPO"]
    assert rows[0]["best setting"] == "step = 10" and rows[0]["gold"] == 0.9 and rows[0]["seconds"] == 12.5
    assert rows[0]["KL (nats)"] == 3.0 and rows[0]["peak memory (GiB)"] == 0.75 and rows[0]["added memory (GiB)"] == 0.25
    assert rows[1]["best setting"] == "beta = 0.3" and rows[1]["seconds"] == 29.0
    figs = compare.frontier_figures([rl, dpo])
    assert figs == {"grpo": {"gold": 0.9, "kl": 3.0, "seconds": 12.5, "peak_gib": 0.75, "added_gib": 0.25, "step": 10},
                    "dpo": {"gold": 0.8, "kl": 4.0, "seconds": 29.0, "peak_gib": 1.0, "added_gib": 0.5, "beta": 0.3}}


# -----------------------------------------------------------------------------
# the methods on a small run of the whole pipeline (tests/conftest.py's tiny_run)


@pytest.fixture(scope="module")
def inputs(tiny_run):
    prompts = load_prompts("tiny", "validation", limit=8)["prompt"]
    return sft_adapter_path(tiny_run), reward_model_path(tiny_run), rankings_path(tiny_run), prompts


@pytest.fixture(scope="module")
def rl_runs(inputs):
    sft, rm, _, prompts = inputs
    small = dict(steps=2, batch_size=8, minibatch_size=8, **SMALL)
    return {algo: compare.run_rl(algo, sft, rm, prompts, every=1, fast=True, progress=False, **small)
            for algo in ("ppo", "grpo")}


def test_rl_runs_are_measured_from_the_same_sft_draws(rl_runs):
    ppo, grpo = rl_runs["ppo"], rl_runs["grpo"]
    for run in (ppo, grpo):
        assert [p["step"] for p in run["points"]] == [0, 1, 2]
        assert run["points"][0]["kl"] == 0.0  # before the first update the policy is the SFT model, to the bit
        seconds = [p["seconds"] for p in run["points"]]
        assert seconds[0] == 0.0 and seconds[0] < seconds[1] < seconds[2] == pytest.approx(run["train_seconds"])
        assert run["train_seconds"] == pytest.approx(sum(m["seconds"] for m in run["history"]))
        assert run["wall_seconds"] > run["train_seconds"] and run["peak_gib"] > 0.1
        assert len(run["samples"]) == 8 and run["setting"] == "step"
    # same prompts, seed and chunks: the same SFT samples, so the same starting point, for every method
    assert [s["completion"] for s in ppo["sft_samples"]] == [s["completion"] for s in grpo["sft_samples"]]
    assert ppo["points"][0]["gold"] == grpo["points"][0]["gold"]
    assert ppo["points"][0]["proxy"] == grpo["points"][0]["proxy"]
    assert grpo["config"]["algo"] == "grpo" and grpo["config"]["group_size"] is None  # k = 4: 2 prompts x 4


def test_dpo_is_measured_as_the_rl_methods_are(inputs, rl_runs):
    sft, rm, rankings, prompts = inputs
    run = compare.run_dpo(sft, rm, prompts, betas=(0.3, 1.0), fast=True, progress=False, rankings=rankings,
                          epochs=1, **SMALL)
    assert [p["beta"] for p in run["points"]] == [0.3, 1.0] and run["setting"] == "beta"
    for p in run["points"]:
        assert p["kl"] != 0.0 and math.isfinite(p["gold"])  # moved (k1 on 8 samples may dip below 0)
        assert math.isfinite(p["proxy"]) and p["seconds"] > 0
    assert run["train_seconds"] == max(p["seconds"] for p in run["points"])
    assert set(run["histories"]) == {0.3, 1.0} and all(s["model"] == "dpo" for s in run["samples"])
    assert run["train_pairs"] == len(dpo.reward_model_split(rm, rankings)[0]) > 0
    assert [s["prompt"] for s in run["samples"]] == [s["prompt"] for s in rl_runs["ppo"]["sft_samples"]]


def test_best_of_n_picks_the_reward_models_favourite_and_its_kl_is_closed_form(inputs):
    sft, rm, _, prompts = inputs
    run = compare.run_best_of_n(sft, rm, prompts, n=4, fast=True, progress=False, **SMALL)
    assert [p["n"] for p in run["points"]] == [1, 2, 4]
    assert run["points"][0]["kl"] == 0.0 and run["points"][-1]["kl"] == pytest.approx(math.log(4) - 3 / 4)
    assert [p["seconds"] for p in run["points"]] == pytest.approx([run["train_seconds"] * n / 4 for n in (1, 2, 4)])
    # best-of-4 is never below the mean of its samples on the proxy it selects by
    assert run["points"][-1]["proxy"] >= run["points"][0]["proxy"]
    mean_pick = np.mean([s["reward"] for s in run["samples"]])
    assert mean_pick == pytest.approx(run["points"][-1]["proxy"])  # n = N: the pick is the best of all N
    rows = compare.samples_side_by_side([run], [s | {"model": "sft"} for s in run["samples"]], n=2)
    assert [r["model"] for r in rows] == ["SFT", "best-of-n", "SFT", "best-of-n"]
