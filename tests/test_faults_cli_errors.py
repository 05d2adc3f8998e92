"""Issue 12, class 2: a user's mistake on the command line is one line (what, where, the fix) with exit
code 2, never a stack trace; --debug shows the traceback. Options are checked while they are parsed."""

import json
import os
import shutil

import pytest
import torch
from faults import PPO, RM, copy_run, one_line_error, small_tmpfs, subprocess_cli

# -----------------------------------------------------------------------------
# refused while parsing: argparse's one line, naming the option and its range


@pytest.mark.parametrize("argv, expected", [
    (["sft", "--sft-lr", "nan"], "argument --sft-lr: got nan; it must be a finite number (> 0)"),
    (["sft", "--sft-lr", "0"], "argument --sft-lr: got 0; it must be > 0"),
    (["ppo", "--ppo-lr", "inf"], "argument --ppo-lr: got inf; it must be a finite number (> 0)"),
    (["ppo", "--ppo-lr=-1e-3"], "argument --ppo-lr: got -1e-3; it must be > 0"),
    (["sft", "--sft-batch-size", "0"], "argument --sft-batch-size: got 0; it must be >= 1"),
    (["ppo", "--ppo-batch-size", "0"], "argument --ppo-batch-size: got 0; it must be >= 1"),
    (["ppo", "--ppo-minibatch-size", "0"], "argument --ppo-minibatch-size: got 0; it must be >= 1"),
    (["ppo", "--kl-target", "0"], "argument --kl-target: got 0; it must be > 0"),
    (["ppo", "--ppo-kl-horizon", "0"], "argument --ppo-kl-horizon: got 0; it must be >= 1"),
    (["sft", "--lora-r", "0"], "argument --lora-r: got 0; it must be >= 1"),
    (["rm", "--seed", "-1"], "argument --seed: got -1; it must be 0 to 4294967295"),
    (["ppo", "--ppo-max-new-tokens", "0"], "argument --ppo-max-new-tokens: got 0; it must be >= 1"),
    (["rm", "--rm-eval-fraction", "1"], "argument --rm-eval-fraction: got 1; it must be >= 0 and < 1"),
    (["sft", "--sft-lora-dropout", "1.0"], "argument --sft-lora-dropout: got 1.0; it must be >= 0 and < 1"),
    (["ppo", "--ppo-gamma", "1.5"], "argument --ppo-gamma: got 1.5; it must be 0 to 1"),
    (["rank", "--k", "12"], "argument --k: got 12; it must be 2 to 9"),
    (["label", "--n-rankings", "0"], "argument --n-rankings: got 0; it must be >= 1"),
    (["sft", "--sft-epochs", "2.5"], "argument --sft-epochs: '2.5' is not a whole number"),
    (["ppo", "--ppo-kl-kind", "k7"], "argument --ppo-kl-kind: invalid choice: 'k7'"),
    (["ppo", "--steps", "ten"], "argument --steps: 'ten' is not a whole number"),
])
def test_a_bad_option_is_refused_while_parsing(capsys, argv, expected):
    line = one_line_error(capsys, *argv)
    assert expected in line
    assert line.endswith(f"(see rlhf-lab {argv[0]} --help)")


@pytest.mark.parametrize("device", ["banana", "gpu", "cuda:x"])
def test_an_unknown_device_is_refused_with_what_this_machine_has(capsys, device):
    line = one_line_error(capsys, "sft", "--device", device)
    assert f"argument --device: device must be auto, cpu, cuda, cuda:N or mps" in line
    assert f"not {device!r}; this machine has auto, cpu" in line


def test_a_device_this_machine_lacks_is_refused(capsys):
    if torch.cuda.is_available():
        line = one_line_error(capsys, "sft", "--device", f"cuda:{torch.cuda.device_count()}")
        assert f"this machine has {torch.cuda.device_count()} CUDA device(s)" in line
    else:
        line = one_line_error(capsys, "sft", "--device", "cuda")
        assert "CUDA is not available here" in line and "use 'auto' or 'cpu'" in line
    if not torch.backends.mps.is_available():
        line = one_line_error(capsys, "sft", "--device", "mps")
        assert "device 'mps' (Apple's GPU) was asked for but it is not available here" in line


def test_out_naming_a_file_is_refused(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    line = one_line_error(capsys, "sft", "--out", tmp_path / "notes.txt")
    assert f"{tmp_path / 'notes.txt'} is a file, not a folder; --out names the run's folder" in line
    line = one_line_error(capsys, "run", "--out", tmp_path / "notes.txt" / "run")  # a file on the way
    assert "is a file, not a folder" in line
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_read_only_out_is_refused_before_anything_runs(capsys, tmp_path):
    with small_tmpfs(tmp_path, read_only=True) as disk:
        line = one_line_error(capsys, "sft", "--fast", "--out", disk / "run")
        assert "cannot write into" in line and "read-only disk" in line and "choose an --out you can write to" in line


def test_a_rule_between_options_names_both(capsys, tmp_path):
    line = one_line_error(capsys, "ppo", "--ppo-batch-size", "8", "--ppo-minibatch-size", "3", "--out", tmp_path / "r")
    assert "batch_size=8 is not a multiple of minibatch_size=3" in line
    assert "(options --ppo-batch-size, --ppo-minibatch-size)" in line
    assert not (tmp_path / "r").exists()  # refused before the run's folder was made


# -----------------------------------------------------------------------------
# found while running: still one line, naming the file or the option


def test_max_new_tokens_beyond_the_context_names_the_option(capsys, tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    shutil.rmtree(run / "04_ppo")  # a finished PPO run is kept (refused without --resume), so train a new one
    assert PPO[-2:] == ["--ppo-max-new-tokens", "16"]
    line = one_line_error(capsys, "ppo", "--fast", *PPO[:-2], "--ppo-max-new-tokens", "200", "--out", run)
    assert "with max_new_tokens=200 that makes" in line and "more than the model's 128 (n_positions)" in line
    assert "lower max_new_tokens to" in line and line.endswith("(option --ppo-max-new-tokens)")


def test_sft_max_length_beyond_the_model_names_the_option(capsys, tmp_path):
    line = one_line_error(capsys, "sft", "--fast", "--sft-n-train", "8", "--sft-max-length", "500", "--out", tmp_path)
    assert "max_length=500 is more than the model's 128 positions (n_positions); set it to 128 or less" in line
    assert line.endswith("(option --sft-max-length)")


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _zero(path):
    path.write_bytes(b"\0" * path.stat().st_size)


def _pickle(path):
    torch.save({"weight": torch.ones(3)}, path)


@pytest.mark.parametrize("damage", [_truncate, _zero, _pickle])
def test_a_damaged_sft_adapter_is_named(capsys, tiny_run, tmp_path, damage):
    run = copy_run(tiny_run, tmp_path)
    damage(run / "01_sft" / "adapter" / "adapter_model.safetensors")
    line = one_line_error(capsys, "rm", "--fast", *RM, "--out", run)
    assert f"{run / '01_sft' / 'adapter'}: the saved SFT adapter cannot be read" in line
    assert "Delete it and run the stage that writes it again" in line
    if damage is _pickle:
        assert "adapter_model.safetensors is a pickle of Python objects" in line and "never unpickles" in line
    else:
        assert "SafetensorError" in line and "damaged" in line


@pytest.mark.parametrize("damage", [_truncate, _zero, _pickle])
def test_a_damaged_reward_head_is_named(capsys, tiny_run, tmp_path, damage):
    run = copy_run(tiny_run, tmp_path)
    (run / "04_ppo" / "ppo_result.json").unlink()
    damage(run / "03_reward_model" / "reward_model" / "reward_head.safetensors")
    line = one_line_error(capsys, "ppo", "--fast", *PPO, "--out", run)
    assert "reward_head.safetensors: the saved reward head cannot be read" in line
    assert ("is a pickle of Python objects" in line) == (damage is _pickle)


def _pickle_code(path):
    torch.save({"run_me": os.system}, path)  # what weights_only=True refuses to unpickle


@pytest.mark.parametrize("damage", [_truncate, _zero, _pickle_code])
def test_a_damaged_trainer_state_is_named(capsys, tiny_run, tmp_path, damage):
    run = copy_run(tiny_run, tmp_path)
    (run / "04_ppo" / "ppo_result.json").unlink()
    damage(run / "04_ppo" / "checkpoint" / "trainer_state.pt")
    line = one_line_error(capsys, "ppo", "--fast", *PPO, "--resume", "--out", run)
    assert f"{run / '04_ppo' / 'checkpoint'}: the saved PPO checkpoint cannot be read" in line
    if damage is _pickle_code:  # a pickle holding code: refused, in words
        assert "trainer_state.pt is a pickle of Python objects" in line and "never unpickles" in line
    else:
        assert "damaged (cut off by a full disk or a kill, zeroed" in line


def test_a_tensor_file_that_is_not_a_checkpoint_is_named(capsys, tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    (run / "04_ppo" / "ppo_result.json").unlink()
    _pickle(run / "04_ppo" / "checkpoint" / "trainer_state.pt")  # loads, but holds only {"weight": ...}
    line = one_line_error(capsys, "ppo", "--fast", *PPO, "--resume", "--out", run)
    assert "trainer_state.pt is not a checkpoint the lab wrote (it has no config, history, kl_ctl" in line


def test_invalid_json_in_a_saved_config_names_file_line_and_column(capsys, tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    config = run / "01_sft" / "adapter" / "sft_config.json"
    config.write_text(config.read_text()[:40])  # cut off
    line = one_line_error(capsys, "rm", "--fast", *RM, "--out", run)
    assert f"{config}, line " in line and ", column " in line and "is not valid JSON" in line
    assert "Fix that line, or delete the file's folder and run that stage again" in line


def test_a_bad_line_in_data_names_the_file_and_line(capsys, tmp_path):
    data = tmp_path / "reviews.jsonl"
    data.write_text(json.dumps({"text": "A fine film."}) + "\n" + '{"text": "broken" "x"}\n')
    line = one_line_error(capsys, "sft", "--fast", "--data", data, "--out", tmp_path / "run")
    assert f"{data}, line 2: not valid JSON" in line and "fix or delete that line" in line


def test_a_full_disk_while_saving_says_so(capsys, tmp_path):
    """ENOSPC while safetensors writes the adapter: one line that says the disk is full and what to do."""
    with small_tmpfs(tmp_path, size="200K") as disk:
        line = one_line_error(capsys, "sft", "--fast", "--sft-n-train", "16", "--sft-n-eval", "8",
                              "--out", disk / "run")
        assert f"while writing into {disk / 'run'}: no space left on the disk" in line
        assert "free some space (df -h shows where) or choose another --out" in line and "--resume" in line


# -----------------------------------------------------------------------------
# --debug, and errors that are the lab's, not the user's


def test_debug_shows_the_traceback(capsys, tmp_path):
    done = subprocess_cli("rm", "--out", tmp_path, "--debug")
    assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr
    assert "rlhf_lab.utils.LabError: No LoRA adapter in" in done.stderr
    done = subprocess_cli("rm", "--out", tmp_path, env={"RLHF_LAB_DEBUG": "1"})
    assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr
    line = one_line_error(capsys, "rm", "--out", tmp_path)  # without them: the one line
    assert line.startswith("rlhf-lab: error: No LoRA adapter in")


def test_a_bug_is_called_a_bug_not_the_users_mistake(capsys, tmp_path, monkeypatch):
    import rlhf_lab.cli

    def broken(*args, **kwargs):
        return {}["missing"]

    monkeypatch.setattr(rlhf_lab.cli, "stage_sft", broken)
    line = one_line_error(capsys, "sft", "--out", tmp_path, code=1)
    assert line.startswith("rlhf-lab: error: internal error (KeyError: 'missing')")
    assert "not something you did: run the same command with --debug (or RLHF_LAB_DEBUG=1)" in line


def test_an_os_error_names_its_file(capsys, tmp_path, monkeypatch):
    import errno

    import rlhf_lab.cli

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "run" / "01_sft"))

    monkeypatch.setattr(rlhf_lab.cli, "stage_sft", denied)
    line = one_line_error(capsys, "sft", "--out", tmp_path / "run")
    assert f"{tmp_path / 'run' / '01_sft'}: permission denied; choose an --out you can write to" in line
    assert os.path.isdir(tmp_path / "run")
