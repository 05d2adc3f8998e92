"""The `rlhf-lab` command, run as a learner runs it: in a subprocess, on the tiny world, FAST mode."""

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SUMMARY_KEYS = ["sft.eval_loss_before", "sft.eval_loss_after", "reward_model.heldout_accuracy",
                "ppo.gold_score_sft", "ppo.gold_score_ppo", "ppo.kl", "ppo.episodes_per_second",
                "stage_seconds.sft", "stage_seconds.rankings", "stage_seconds.reward_model",
                "stage_seconds.ppo", "seconds", "lengths.sft.eos_share", "lengths.sft.mean_length",
                "lengths.ppo.eos_share", "lengths.ppo.mean_length", "lengths.demonstrations.p95"]


def rlhf_lab(*args, **kwargs):
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "rlhf_lab.cli", *args], capture_output=True, text=True,
                          env=env, timeout=900, **kwargs)


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    done = rlhf_lab("run", "--fast", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


@pytest.mark.slow
def test_run_fast_writes_every_result(fast_run):
    out, done = fast_run
    summary = json.loads((out / "summary.json").read_text())
    for key in SUMMARY_KEYS:
        value = summary
        for part in key.split("."):
            value = value[part]
        assert isinstance(value, (int, float)) and math.isfinite(value), key
    assert summary["sft"]["eval_loss_after"] < summary["sft"]["eval_loss_before"]
    assert summary["precision"] == "fp32" if summary["device"] == "cpu" else summary["precision"] in ("fp32", "bf16")
    assert summary["gold_reference"] == "tiny"  # the tiny world's fluency reference (hub data: "english")
    for path in ["01_sft/adapter/adapter_config.json", "03_reward_model/reward_model/adapter_config.json",
                 "04_ppo/adapter_config.json", "04_ppo/metrics.jsonl", "plots/sft_loss.png",
                 "plots/reward_model_accuracy.png", "plots/ppo_training.png", "report.md", "samples.jsonl",
                 "configs/sft.json", "configs/rm.json", "configs/ppo.json"]:
        assert (out / path).is_file(), path
    models = {json.loads(line)["model"] for line in (out / "samples.jsonl").read_text().splitlines()}
    assert models == {"base", "sft", "ppo"}
    assert "| 3. PPO |" in (out / "report.md").read_text()
    assert "ended with EOS" in (out / "report.md").read_text()  # the EOS share and length of SFT and PPO
    assert summary["lengths"]["demonstrations"]["p95"] <= summary["lengths"]["max_new_tokens"]
    # a second run into the same folder without --resume is refused, in one line
    again = rlhf_lab("run", "--fast", "--out", str(out))
    assert again.returncode == 2 and "--resume" in again.stderr and "Traceback" not in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_resume_after_a_kill_continues_from_the_checkpoint(fast_run, tmp_path):
    """Kill PPO after a few updates; --resume keeps SFT and the reward model and continues PPO."""
    out = fast_run[0]  # runs after test_run_fast_writes_every_result, which reads the finished run
    shutil.rmtree(out / "04_ppo")
    args = ["ppo", "--fast", "--out", str(out), "--steps", "6", "--ppo-checkpoint-every", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_lab.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    metrics = out / "04_ppo" / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "PPO finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "04_ppo" / "ppo_result.json").exists()
    sft_mtime = (out / "01_sft" / "adapter" / "adapter_model.safetensors").stat().st_mtime

    done = rlhf_lab(*args, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, 7))  # no update lost, none counted twice
    assert (out / "04_ppo" / "ppo_result.json").is_file()
    assert (out / "01_sft" / "adapter" / "adapter_model.safetensors").stat().st_mtime == sft_mtime


def test_bad_option_is_one_line():
    done = rlhf_lab("run", "--no-such-option")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "unrecognized arguments: --no-such-option" in done.stderr
    done = rlhf_lab("sft", "--precision", "fp16")
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "invalid choice: 'fp16'" in done.stderr


def test_missing_files_are_one_line(tmp_path):
    done = rlhf_lab("rm", "--out", str(tmp_path / "empty"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "No LoRA adapter" in done.stderr
    done = rlhf_lab("sft", "--fast", "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "name='tiny'" in done.stderr


def test_help_comes_from_the_configs():
    done = rlhf_lab("run", "--help")
    assert done.returncode == 0
    for option in ["--sft-lr", "--rm-epochs", "--ppo-kl-target", "--steps", "--lora-r", "--resume", "--fast"]:
        assert option in done.stdout
    assert "Ziegler" in done.stdout  # a field's comment became its help


def test_help_carries_a_comment_on_to_its_next_lines_but_not_into_a_section():
    """A field's help is its trailing comment and the comment lines that go on with it, up to the next field,
    a blank line or a `# --- section` line; a docstring under a field is its help too."""
    from rlhf_lab.config_args import field_help

    assert field_help(HelpExample) == {
        "lr": "step size (Kingma and Ba 2015; the default of the lab's PPO) for LoRA only",
        "epochs": "passes over the data",
        "seed": "same seed, same run",
        "beta": "KL weight documented below",
        "quiet": "",
    }
    from rlhf_lab.ppo import PPOConfig
    helps = field_help(PPOConfig)
    assert helps["micro_batch_size"].endswith("None: the whole minibatch in one pass")  # was cut at "(gradient"
    assert "rollouts" not in helps["prompts"] and "models and data" not in helps["group_size"]  # sections stay out


@dataclasses.dataclass
class HelpExample:
    """A config written the way the lab's configs are (field_help reads its source)."""

    lr: float = 1e-3  # step size (Kingma and Ba 2015; the default
    # of the lab's PPO) for LoRA only
    # --- training
    epochs: int = 4  # passes over the data
    seed: int = 0  # same seed, same run

    # a comment after a blank line belongs to nobody
    beta: float = 0.1
    """KL weight documented below"""
    quiet: bool = False
