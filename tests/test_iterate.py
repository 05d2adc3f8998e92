"""rlhf_lab/iterate.py and `rlhf-lab iterate`: iterated online RLHF on the tiny world. The accuracy
measure on hand-made scores; a 2-round run on tiny settings; labels never lost or counted twice across
rounds; a run killed with kill -9 and resumed ends with the numbers of an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from faults import copy_run, one_line_error

from rlhf_lab.iterate import IterateConfig, accuracy_on_samples, iterate_config
from rlhf_lab.pipeline import ITERATE_DIR
from rlhf_lab.preferences import load_preferences
from rlhf_lab.rankings import RankingStore
from rlhf_lab.utils import ConfigError, LabError

# 2 rounds of 4 rankings and 2 PPO updates of 8 episodes, short samples: seconds, not minutes
ITERATE = ["--fast", "--rounds", "2", "--iterate-rankings-per-round", "4", "--iterate-steps-per-round", "2",
           "--iterate-accuracy-prompts", "6", "--iterate-eval-prompts", "8", "--ppo-batch-size", "8",
           "--ppo-minibatch-size", "8", "--ppo-max-new-tokens", "16", "--ppo-checkpoint-every", "1",
           "--rm-epochs", "1"]


def test_config_checks_its_fields():
    assert iterate_config(fast=False).total_steps == 80  # 3 rounds after round 0, 20 updates each
    assert iterate_config(fast=True).rounds == 2
    with pytest.raises(ConfigError, match="IterateConfig.rounds = 0"):
        IterateConfig(rounds=0)
    with pytest.raises(LabError, match="no field 'steps'"):
        iterate_config(steps=3)


class FixedScores:
    """A stand-in reward model: the score of each response text from a table."""

    def __init__(self, table):
        self.table = table

    def score_texts(self, prompts, responses, normalised=True):
        return [self.table[r] for r in responses]


def test_accuracy_counts_every_untied_pair_and_rm_ties_as_wrong():
    items = [{"prompt": "The film ", "completions": ["was superb and moving.", "was dull.", "was terrible and dull."]}]
    # gold orders them superb > dull > terrible and dull: 3 untied pairs
    right = FixedScores({"was superb and moving.": 2.0, "was dull.": 0.0, "was terrible and dull.": -1.0})
    one_wrong = FixedScores({"was superb and moving.": 2.0, "was dull.": -2.0, "was terrible and dull.": -1.0})
    tie = FixedScores({"was superb and moving.": 0.0, "was dull.": 0.0, "was terrible and dull.": -1.0})
    got = accuracy_on_samples({"right": right, "one_wrong": one_wrong, "tie": tie}, items)
    assert got == {"pairs": 3, "right": 1.0, "one_wrong": pytest.approx(2 / 3), "tie": pytest.approx(2 / 3)}
    with pytest.raises(LabError, match="gold ties every pair"):
        accuracy_on_samples({"right": right}, [{"prompt": "A", "completions": ["x.", "x."]}])


# -----------------------------------------------------------------------------
# a whole run of the command on a small pipeline run (tests/conftest.py's tiny_run)


def iterate_cli(*argv):
    from faults import subprocess_cli

    return subprocess_cli("iterate", *ITERATE, *argv)


@pytest.fixture(scope="module")
def iterated(tiny_run, tmp_path_factory):
    run = copy_run(tiny_run, tmp_path_factory.mktemp("iterate"))
    from rlhf_lab.cli import main

    assert main(["iterate", *ITERATE, "--out", str(run)]) == 0
    return run


def test_two_rounds_write_every_rounds_artefacts_and_one_summary(iterated):
    folder = iterated / ITERATE_DIR
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rounds"] == 2 and [r["round"] for r in summary["per_round"]] == [0, 1, 2]
    assert [r["steps"] for r in summary["per_round"]] == [2, 4, 6]  # PPO continued, 2 updates a round
    for r in (1, 2):
        for name in ("rankings.jsonl", "reward_model/reward_model.json", "reward_model/adapter_model.safetensors",
                     "before_ppo.json", "result.json"):
            assert (folder / f"round_{r}" / name).is_file(), (r, name)
        result = summary["per_round"][r]
        assert 0 <= result["rm_acc_stale"] <= 1 and 0 <= result["rm_acc_refreshed"] <= 1 and result["rm_acc_pairs"] > 0
    for key in ("rm_acc_policy_samples_stale", "rm_acc_policy_samples_refreshed", "gold_iterated", "gold_sft",
                "gold_one_shot_same_labels", "kl_iterated", "kl_one_shot"):
        assert isinstance(summary[key], float), key
    assert summary["per_round"][0]["policy_kl"] != 0.0  # round 0 trained
    metrics = [json.loads(line)["step"] for line in (folder / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert metrics == [1, 2, 3, 4, 5, 6]  # one PPO run across the rounds, no update counted twice
    assert (iterated / "plots" / "iterate.png").is_file()
    assert json.loads((iterated / "configs" / "iterate.json").read_text())["rounds"] == 2


def test_labels_are_never_lost_or_counted_twice_across_rounds(iterated):
    folder = iterated / ITERATE_DIR
    files = [iterated / "02_rankings" / "rankings.jsonl"] + [folder / f"round_{r}" / "rankings.jsonl" for r in (1, 2)]
    prompts = [[rec["prompt"] for rec in RankingStore(f).records()] for f in files]
    assert [len(p) for p in prompts] == [16, 4, 4]
    assert len(set().union(*prompts)) == 24  # no prompt ranked in two rounds
    summary = json.loads((folder / "summary.json").read_text())
    assert [r["labels"] for r in summary["per_round"]] == [16, 20, 24] and summary["labels"] == 24
    for r in (1, 2):  # each refreshed reward model learnt from every pair of every round so far, once
        meta = json.loads((folder / f"round_{r}" / "reward_model" / "reward_model.json").read_text())
        assert meta["metrics"]["pairs"] == sum(len(load_preferences(f)) for f in files[:r + 1])
    one_shot = folder / "one_shot"
    assert len(RankingStore(one_shot / "rankings.jsonl").records()) == 24  # the same label budget
    first = [json.dumps(rec, sort_keys=True) for rec in RankingStore(files[0]).records()]
    assert [json.dumps(rec, sort_keys=True) for rec in RankingStore(one_shot / "rankings.jsonl").records()][:16] == first


def test_a_finished_run_is_kept_and_a_changed_one_refused(capsys, iterated):
    line = one_line_error(capsys, "iterate", *ITERATE, "--out", iterated)
    assert "06_iterate already holds an iterated run; pass --resume" in line
    from faults import cli

    code, out, err = cli(capsys, "iterate", *ITERATE, "--resume", "--out", iterated)
    assert code == 0 and "[iterate] 2 rounds, 24 rankings" in out, err[-2000:]
    changed = list(ITERATE)
    changed[changed.index("--iterate-steps-per-round") + 1] = "3"
    line = one_line_error(capsys, "iterate", *changed, "--resume", "--out", iterated)
    assert "iterate.steps_per_round 2 -> 3 (--iterate-steps-per-round)" in line
    # the folder itself knows what it was made with, for the notebook's API too
    from rlhf_lab import pipeline
    from rlhf_lab.iterate import IteratedRLHF

    with pytest.raises(LabError, match=r"other settings \(iterate.steps_per_round differ\)"):
        IteratedRLHF(iterate_config(fast=True, rounds=2, rankings_per_round=4, steps_per_round=3, accuracy_prompts=6,
                                    eval_prompts=8), pipeline.sft_adapter_path(iterated), pipeline.rankings_path(iterated),
                     pipeline.reward_model_path(iterated), iterated / ITERATE_DIR, fast=True,
                     ppo_overrides=dict(batch_size=8, minibatch_size=8, max_new_tokens=16, checkpoint_every=1),
                     rm_overrides=dict(epochs=1))


def test_iterate_needs_the_earlier_stages(capsys, tmp_path):
    line = one_line_error(capsys, "iterate", *ITERATE, "--out", tmp_path / "empty")
    assert "run `rlhf-lab sft --out" in line


def test_killed_with_kill_9_and_resumed_it_ends_as_an_uninterrupted_run(tiny_run, iterated, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    cmd = [sys.executable, "-m", "rlhf_lab.cli", "iterate", *ITERATE, "--out", str(run)]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    for line in proc.stdout:  # kill it in round 1, after round 0 finished
        if line.startswith("[round 0]"):
            time.sleep(1.5)
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    folder = run / ITERATE_DIR
    assert not (folder / "summary.json").exists() and (folder / "round_0" / "result.json").is_file()
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    strip = lambda s: {k: v for k, v in s.items() if k not in ("per_round", "one_shot")}
    resumed, whole = (json.loads((r / ITERATE_DIR / "summary.json").read_text()) for r in (run, iterated))
    assert strip(resumed) == strip(whole)
    for a, b in zip(resumed["per_round"], whole["per_round"]):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    def rankings(r):  # each record but the time it was written
        return [{k: v for k, v in rec.items() if k != "time"} for i in (1, 2)
                for rec in RankingStore(r / ITERATE_DIR / f"round_{i}" / "rankings.jsonl").records()]

    assert rankings(run) == rankings(iterated) and len(rankings(run)) == 8  # the same rankings, each once


def test_label_agreement_is_the_share_of_untied_pairs_gold_agrees_with(tmp_path):
    from rlhf_lab.iterate import label_agreement

    path = tmp_path / "rankings.jsonl"
    record = {"prompt": "The film ", "completions": ["was superb and moving.", "was dull.", "was terrible and dull."],
              "annotator": "test", "time": "2026-01-01T00:00:00+00:00"}
    path.write_text(json.dumps(record | {"ranking": [0, 1, 2]}) + "\n")  # gold's own order: 3 pairs of 3
    assert label_agreement(path) == 1.0
    path.write_text(json.dumps(record | {"ranking": [1, 0, 2]}) + "\n")  # superb and dull swapped: 2 of 3
    assert label_agreement(path) == pytest.approx(2 / 3)
