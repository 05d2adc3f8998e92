"""rlhf_lab/overoptimisation.py: best-of-n's selection and KL, Gao et al.'s fits, PPO measured along
the way (on the tiny GPT-2, a few episodes at a time)."""

import itertools
import math

import numpy as np
import pytest

from rlhf_lab.loading import load_prompts
from rlhf_lab.overoptimisation import (
    best_of_n_curve,
    best_of_n_expected,
    best_of_n_kl,
    best_of_n_scores,
    exploits,
    fit_gao,
    gao_curve,
    ppo_with_evaluations,
    select_best,
)

from test_ppo import make_trainer


def test_best_of_n_kl_formula():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)  # 0.193 nats
    assert best_of_n_kl(64) == pytest.approx(math.log(64) - 63 / 64)  # 3.17 nats
    assert all(best_of_n_kl(n) < best_of_n_kl(n + 1) for n in range(1, 100))
    with pytest.raises(ValueError):
        best_of_n_kl(0)


def test_best_of_n_selects_the_reward_models_favourite():
    proxy = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 1.0]])
    assert select_best(proxy).tolist() == [1, 0]


def test_best_of_n_expectation_on_hand_values():
    proxy, gold = np.array([[1.0, 3.0, 2.0]]), np.array([[10.0, 30.0, 20.0]])
    assert best_of_n_expected(proxy, gold, 1)["gold"] == pytest.approx(20.0)  # n = 1: any sample, the mean
    assert best_of_n_expected(proxy, gold, 3)["gold"] == pytest.approx(30.0)  # n = N: the proxy's favourite
    # n = 2: subsets {10, 30} -> 30, {10, 20} -> 20, {30, 20} -> 30
    assert best_of_n_expected(proxy, gold, 2)["gold"] == pytest.approx(80 / 3)
    assert best_of_n_expected(proxy, gold, 2)["proxy"] == pytest.approx(8 / 3)
    with pytest.raises(ValueError):
        best_of_n_expected(proxy, gold, 4)


def test_best_of_n_expectation_equals_every_subset_drawn():
    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    for n in (1, 2, 3, 7):
        brute = np.mean([[gold[p, max(s, key=lambda i: proxy[p, i])] for s in itertools.combinations(range(7), n)]
                         for p in range(5)])
        assert best_of_n_expected(proxy, gold, n)["gold"] == pytest.approx(brute)
    curve = best_of_n_curve(proxy, gold)
    assert [row["n"] for row in curve] == [1, 2, 4]
    assert [row["kl"] for row in curve] == [best_of_n_kl(n) for n in (1, 2, 4)]
    assert curve[-1]["proxy"] > curve[0]["proxy"]  # the proxy of the pick only rises with n


def test_gao_fits_recover_their_own_curves():
    kl = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
    for form, (alpha, beta) in (("bon", (1.3, 0.4)), ("rl", (0.9, 0.35))):
        gain = gao_curve(kl, alpha, beta, form)
        assert fit_gao(kl, gain, form) == pytest.approx((alpha, beta))
    d = np.sqrt(kl)
    assert gao_curve(kl, 1.3, 0.4, "bon") == pytest.approx(d * (1.3 - 0.4 * d))
    assert gao_curve(kl[1:], 0.9, 0.35, "rl") == pytest.approx(d[1:] * (0.9 - 0.35 * np.log(d[1:])))
    with pytest.raises(ValueError):
        fit_gao(kl, kl, "ppo")


@pytest.fixture(scope="module")
def prompts():
    return load_prompts("tiny", "train")["prompt"][:64]


def test_ppo_with_evaluations_measures_without_changing_the_run(tiny, prompts):
    held_out = load_prompts("tiny", "validation")["prompt"][:8]
    plain = make_trainer(tiny, prompts, steps=3)
    plain.train(progress=False)
    measured = make_trainer(tiny, prompts, steps=3)
    evaluations = ppo_with_evaluations(measured, held_out, every=2, progress=False)
    assert [e["step"] for e in evaluations] == [0, 2, 3]  # before training, every 2 updates, and the end
    assert evaluations[0]["kl"] == 0.0  # the policy starts as the SFT model
    assert evaluations[-1]["kl"] != 0.0  # it has moved (k1 on 8 samples may be of either sign)
    assert all(len(e["samples"]) == 8 for e in evaluations)
    # the evaluations draw from a forked RNG: the training run is the one without them
    assert [m["gold"] for m in measured.history] == [m["gold"] for m in plain.history]
    assert [m["kl"] for m in measured.history] == pytest.approx([m["kl"] for m in plain.history])


def test_best_of_n_scores_sample_the_sft_model(tiny, prompts):
    trainer = make_trainer(tiny, prompts)
    bon = best_of_n_scores(trainer, prompts[:3], n=4, seed=1, batch_size=5)
    assert bon["proxy"].shape == bon["gold"].shape == (3, 4)
    assert [len(c) for c in bon["completions"]] == [4, 4, 4]
    again = best_of_n_scores(trainer, prompts[:3], n=4, seed=1, batch_size=5)  # the same seed, the same samples
    assert again["completions"] == bon["completions"] and (again["gold"] == bon["gold"]).all()
    rows = exploits([{"prompt": p, "completion": c, "reward": r, "gold": g}
                     for p, cs, rs, gs in zip(bon["prompts"], bon["completions"], bon["proxy"], bon["gold"])
                     for c, r, g in zip(cs, rs, gs)], top=3)
    gaps = [r["reward model"] - r["gold"] for r in rows]
    assert gaps == sorted(gaps, reverse=True) and len(rows) == 3


def test_beta_sweep_reuses_the_beta0_run_at_the_sweeps_length():
    from rlhf_lab.overoptimisation import beta_sweep
    from rlhf_lab.ppo import ppo_config

    evaluations = [{"step": s, "kl": float(s), "gold": 1.0 - s / 10, "proxy": s / 10, "gold_se": 0.1, "samples": []}
                   for s in (0, 2, 4)]
    rows = beta_sweep(ppo_config(fast=True), betas=(0.0,), steps=4, prompts=["The acting"], beta0=evaluations)
    assert [(r["beta"], r["kl"], r["gold"], r["history"]) for r in rows] == [(0.0, 4.0, 0.6, None)]
