"""`rlhf-lab compare` (rlhf_lab/runs.py): runs side by side, a table and a plot."""

import json
import shutil

import pytest

from faults import cli, one_line_error

from rlhf_lab.runs import differences, load_runs, read_metrics, run_entry, runs_table
from rlhf_lab.utils import LabError


def _summary(sft, policy, kl):
    return {"gold_score_sft": sft, "gold_score_ppo": policy, "gold_gain_in_sft_std": (policy - sft) / 0.5,
            "kl": kl, "seconds": 12.0}


def test_the_table_shows_each_runs_figures_and_the_settings_that_differ():
    runs = [run_entry("a", _summary(0.1, 0.6, 3.0), settings={"ppo.kl_coef": 0.1, "ppo.steps": 40, "seed": 0},
                      reward_model_accuracy=0.85),
            run_entry("b", _summary(0.1, 0.3, 1.5), settings={"ppo.kl_coef": 0.3, "ppo.steps": 40, "seed": 0})]
    assert differences(runs) == ["ppo.kl_coef"]
    lines = runs_table(runs).splitlines()
    assert lines[0] == ("| run | method | gold SFT -> policy | gain (SFT std) | KL (nats) | RM acc. vs gold | seconds "
                        "| ppo.kl_coef |")
    assert lines[2] == "| a | PPO | +0.100 -> +0.600 | +1.00 | 3.00 | 85.0% | 12 | 0.1 |"
    assert lines[3] == "| b | PPO | +0.100 -> +0.300 | +0.40 | 1.50 |  | 12 | 0.3 |"


def test_a_cut_off_last_line_is_passed_over_and_a_bad_line_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "gold": 0.5}\n{"step": 2, "gold": 0.7}\n{"step": 3, "go')
    assert read_metrics(path) == [{"step": 1, "gold": 0.5}, {"step": 2, "gold": 0.7}]
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(LabError, match=r"metrics.jsonl, line 2: not a JSON record"):
        read_metrics(path)


def test_compare_writes_the_table_and_the_plot(capsys, tiny_run, replayed_run, tmp_path):
    # a third run that differs in one setting, made by editing a copy's saved config (no training needed)
    other = shutil.copytree(tiny_run, tmp_path / "other")
    config = (other / "configs" / "run.yaml").read_text()
    (other / "configs" / "run.yaml").write_text(config.replace("  kl_coef: ", "  kl_coef: 9", 1))
    code, out, err = cli(capsys, "compare", tiny_run, replayed_run, other, "--out", tmp_path / "cmp")
    assert code == 0, err
    table = (tmp_path / "cmp" / "compare.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "PPO" in line]
    assert len(rows) == 3 and "ppo.kl_coef" in table
    gold = json.loads((tiny_run / "summary.json").read_text())["ppo"]["gold_score_ppo"]
    assert all(f"{gold:+.3f}" in row for row in rows)
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 10_000
    assert rows[0] in out  # the table is printed too
    assert len(load_runs(tiny_run)[0]["history"]) == json.loads((tiny_run / "summary.json").read_text())["ppo"]["steps"]


def test_compare_of_a_folder_without_a_run_is_one_line(capsys, tiny_run, tmp_path):
    line = one_line_error(capsys, "compare", tiny_run / "01_sft", "--out", tmp_path / "cmp")
    assert "holds no finished PPO, RLOO, GRPO or DPO run" in line
    line = one_line_error(capsys, "compare", tmp_path / "nothing", "--out", tmp_path / "cmp")
    assert "no such folder" in line
