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
