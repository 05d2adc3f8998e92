"""Issue 12, class 1: every subcommand the parser defines runs (rank and label crashed on a missing
--lora-r), one stage at a time into one folder, as the README documents."""

import json

import pytest
from faults import PPO, RANK, RM, RUN, SFT, cli, one_line_error

from rlhf_lab.cli import build_parser

# iterate runs in tests/test_iterate.py, compare in tests/test_runs.py, class in tests/test_classroom.py
COMMANDS = ("run", "sft", "rank", "label", "rm", "ppo", "dpo", "iterate", "compare", "class")
# DPO in seconds: one epoch, and its samples as PPO's (8 prompts, 16 tokens, one chunk of 8: the same draws)
DPO = ["--dpo-epochs", "1", "--dpo-eval-prompts", "8", "--dpo-eval-batch-size", "8", "--dpo-max-new-tokens", "16",
       "--dpo-checkpoint-every", "2"]


def subcommands() -> set[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return set(sub.choices)


def test_these_are_all_the_subcommands():
    assert subcommands() == set(COMMANDS)  # a new one must be added to the tests below


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_subcommand_states_ranges(capsys, command):
    code, out, _ = cli(capsys, command, "--help")
    if command == "class":  # its own subcommands (class items, class merge) carry the options
        assert code == 0 and "items" in out and "merge" in out
        code, out, _ = cli(capsys, command, "merge", "--help")
    assert code == 0 and "--out" in out and "--debug" in out
    out = " ".join(out.split())  # argparse wraps the help where it will: a range may straddle a line break
    if command in ("run", "ppo"):
        assert "--steps STEPS" in out and "(>= 1; default: 40)" in out
    if command in ("rank", "label", "run"):
        assert "--k K" in out and "(2 to 9; default: 4)" in out
    if command in ("run", "ppo"):
        assert "--algo {ppo,rloo,grpo}" in out and "--ppo-group-size" in out and "--ppo-kl-loss-coef" in out
    if command == "dpo":
        assert "--dpo-beta DPO_BETA" in out and "(> 0; default: 0.3)" in out and "--dpo-loss-type {sigmoid,ipo}" in out
        assert "--steps" not in out and "--ppo-lr" not in out
    if command == "iterate":
        assert "--rounds ROUNDS" in out and "(>= 1; default: 3)" in out and "--iterate-rankings-per-round" in out
        assert "--ppo-lr" in out and "--rm-epochs" in out  # the rounds' PPO and reward model
        assert "--steps" not in out and "--algo" not in out and "--ppo-steps" not in out  # the rounds decide


@pytest.fixture(scope="module")
def stages_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("stages") / "run"


def test_stage_sft(capsys, stages_folder):
    code, out, err = cli(capsys, "sft", "--fast", *SFT, "--out", stages_folder)
    assert code == 0, err[-2000:]
    assert "[sft] held-out loss" in out
    result = json.loads((stages_folder / "01_sft" / "adapter" / "sft_result.json").read_text())
    assert result["eval_loss_after"] < result["eval_loss_before"]
    assert json.loads((stages_folder / "configs" / "sft.json").read_text())["n_train"] == 32


@pytest.mark.parametrize("command", ["rank", "label"])
def test_stage_rank_and_label(capsys, stages_folder, command):
    n = {"rank": "8", "label": "16"}[command]  # label tops the file up to 16
    code, out, err = cli(capsys, command, "--fast", "--n-rankings", n, "--out", stages_folder)
    assert code == 0, err[-2000:]
    lines = (stages_folder / "02_rankings" / "rankings.jsonl").read_text().splitlines()
    assert len(lines) == int(n) and all(len(json.loads(line)["ranking"]) == 4 for line in lines)
    assert "ranked 8 prompts x 4 samples" in out  # 8 new each time
    assert not (stages_folder / "02_rankings" / "rankings.jsonl.top-up.json").exists()  # tidied up


def test_stage_rank_again_is_done_already(capsys, stages_folder):
    code, out, _ = cli(capsys, "label", "--fast", *RANK, "--resume", "--out", stages_folder)
    assert code == 0 and "[rank] done already: 16 rankings" in out


def test_stage_rm(capsys, stages_folder):
    code, out, err = cli(capsys, "rm", "--fast", *RM, "--out", stages_folder)
    assert code == 0, err[-2000:]
    assert "[rm] held-out accuracy vs the gold labeler" in out
    meta = json.loads((stages_folder / "03_reward_model" / "reward_model" / "reward_model.json").read_text())
    assert meta["config"]["epochs"] == 1 and meta["metrics"]["train_pairs"] > 0


def test_stage_ppo(capsys, stages_folder):
    code, out, err = cli(capsys, "ppo", "--fast", *PPO, "--out", stages_folder)
    assert code == 0, err[-2000:]
    steps = [json.loads(line)["step"] for line in (stages_folder / "04_ppo" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2] and "[ppo] gold score" in out
    line = one_line_error(capsys, "ppo", "--fast", *PPO, "--out", stages_folder)  # a finished run is kept
    assert "04_ppo already holds a finished PPO run; pass --resume to keep it" in line


@pytest.mark.parametrize("algo", ["rloo", "grpo"])
def test_stage_ppo_with_rloo_and_grpo_beside_ppo(capsys, stages_folder, algo):
    ppo_result = json.loads((stages_folder / "04_ppo" / "ppo_result.json").read_text())
    code, out, err = cli(capsys, "ppo", "--fast", *PPO, "--algo", algo, "--ppo-group-size", "4", "--out", stages_folder)
    assert code == 0, err[-2000:]
    folder = stages_folder / f"04_{algo}"
    steps = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2] and f"[{algo}] gold score" in out and f"({algo.upper()})" in out
    result = json.loads((folder / "ppo_result.json").read_text())
    assert result["algo"] == algo and result["samples_per_prompt"] == 4 and set(result) == set(ppo_result)
    assert result["gold_score_sft"] == ppo_result["gold_score_sft"]  # the same SFT samples as PPO's
    assert not (folder / "value_head.safetensors").exists()
    assert (stages_folder / "plots" / f"{algo}_training.png").is_file()
    assert json.loads((stages_folder / "configs" / f"{algo}.json").read_text())["algo"] == algo
    assert json.loads((stages_folder / "configs" / "ppo.json").read_text())["algo"] == "ppo"  # PPO's record kept
    assert json.loads((stages_folder / "04_ppo" / "ppo_result.json").read_text()) == ppo_result
    code, out, _ = cli(capsys, "ppo", "--fast", *PPO, "--algo", algo, "--ppo-group-size", "4", "--resume",
                       "--out", stages_folder)
    assert code == 0 and f"[{algo}] done already" in out
    line = one_line_error(capsys, "ppo", "--fast", *PPO, "--algo", algo, "--resume", "--out", stages_folder)
    assert "ppo.group_size 4 -> None (--ppo-group-size)" in line  # resumes only what it was made with
    line = one_line_error(capsys, "ppo", "--fast", *PPO, "--algo", algo, "--ppo-group-size", "3", "--out",
                          stages_folder)
    assert "batch_size=8 is not a multiple of group_size=3" in line and "--ppo-group-size" in line


def test_stage_dpo(capsys, stages_folder):
    code, out, err = cli(capsys, "dpo", "--fast", *DPO, "--out", stages_folder)
    assert code == 0, err[-2000:]
    assert "[dpo]" in out and "(DPO)" in out and "pairs/s" in out
    folder = stages_folder / "05_dpo"
    result = json.loads((folder / "dpo_result.json").read_text())
    rm = json.loads((stages_folder / "03_reward_model" / "reward_model" / "reward_model.json").read_text())
    assert result["train_pairs"] == rm["metrics"]["train_pairs"] and result["eval_pairs"] == rm["metrics"]["eval_pairs"]
    assert abs(result["heldout_loss_before"] - 0.6931472) < 1e-6 and result["heldout_accuracy_before"] == 0.0
    ppo_result = json.loads((stages_folder / "04_ppo" / "ppo_result.json").read_text())
    assert result["gold_score_sft"] == ppo_result["gold_score_sft"]  # the same SFT samples as PPO's
    for key in ("gold_score_dpo", "reward_score_dpo", "kl", "gold_gain_in_sft_std", "seconds", "heldout_gold_accuracy"):
        assert isinstance(result[key], float), key
    for name in ("adapter_config.json", "dpo_config.json", "metrics.jsonl", "checkpoint/trainer_state.pt"):
        assert (folder / name).is_file(), name
    assert (stages_folder / "plots" / "dpo_training.png").is_file()
    assert json.loads((stages_folder / "configs" / "dpo.json").read_text())["epochs"] == 1
    line = one_line_error(capsys, "dpo", "--fast", *DPO, "--out", stages_folder)  # not overwritten
    assert "already holds a finished DPO run; pass --resume" in line
    code, out, _ = cli(capsys, "dpo", "--fast", *DPO, "--resume", "--out", stages_folder)
    assert code == 0 and "[dpo] done already" in out
    line = one_line_error(capsys, "dpo", "--fast", *DPO, "--resume", "--dpo-beta", "0.5", "--out", stages_folder)
    assert "dpo.beta 0.3 -> 0.5 (--dpo-beta)" in line
    line = one_line_error(capsys, "dpo", "--dpo-beta", "0", "--out", stages_folder)
    assert "--dpo-beta" in line and "must be > 0" in line


def test_run_resume_on_the_stages_writes_the_report(capsys, stages_folder):
    code, out, err = cli(capsys, "run", *RUN, "--resume", "--out", stages_folder)
    assert code == 0, err[-2000:]
    for stage in ("sft", "rank", "rm", "ppo"):
        assert f"[{stage}] done already" in out
    summary = json.loads((stages_folder / "summary.json").read_text())
    assert summary["rankings"]["rankings"] == 16 and summary["ppo"]["steps"] == 2
    assert (stages_folder / "report.md").is_file()


def test_a_stage_without_its_earlier_stage_says_which(capsys, tmp_path, stages_folder):
    empty = tmp_path / "empty"
    for command in ("rank", "label", "rm", "ppo", "dpo"):
        line = one_line_error(capsys, command, "--out", empty)
        assert "No LoRA adapter in" in line and "(sft_result.json is missing)" in line
        assert f"run `rlhf-lab sft --out {empty}` first, or `rlhf-lab run --out {empty}`" in line
    import shutil

    shutil.copytree(stages_folder / "01_sft", empty / "01_sft", dirs_exist_ok=True)
    line = one_line_error(capsys, "rm", "--out", empty)
    assert "No rankings in" in line and f"run `rlhf-lab rank --out {empty}` first" in line
    line = one_line_error(capsys, "ppo", "--out", empty)
    assert "No reward model in" in line and f"run `rlhf-lab rm --out {empty}` first" in line
    (empty / "01_sft" / "adapter" / "sft_result.json").unlink()  # SFT killed while it saved
    line = one_line_error(capsys, "rank", "--out", empty)
    assert "No LoRA adapter in" in line and "(sft_result.json is missing)" in line


def test_config_args_still_loads_on_its_own_for_the_benchmark():
    """benchmarks/ppo_vs_trl.py reads its --help through config_args.py loaded outside the package
    (no torch in its parent process): the range annotations must not break that."""
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "ppo_vs_trl.py"
    done = subprocess.run([sys.executable, str(bench), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--rounds ROUNDS" in done.stdout and "timed PPO updates per side" in done.stdout
