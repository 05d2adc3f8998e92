"""rlhf_lab/distributed.py: one process computes what it always did; two processes (gloo on the CPU, started
by accelerate launch as a user starts them) take the very step one process takes on the same global batch;
a whole small run under accelerate launch writes its files once and records world_size 2."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_worker import SEED, dpo_step, ppo_trainer, ppo_update, reward_step, sft_step
from faults import RUN

from rlhf_lab import distributed
from rlhf_lab.utils import ConfigError

TESTS = Path(__file__).resolve().parent
TOLERANCE = 1e-5  # float32 sums in another order (two halves, then the all-reduce)

# The config a user writes for two processes (README, "More than one GPU"). MULTI_GPU is plain data
# parallelism (DDP): on a machine without a GPU the lab runs the processes on the CPU, with gloo.
ACCELERATE_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
num_machines: 1
num_processes: 2
mixed_precision: 'no'
dynamo_config: {}
"""


def accelerate_launch(tmp_path: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file CONFIG *args` with 2 processes on the CPU, one thread each."""
    with socket.socket() as s:  # a free port for the processes to meet on (29500 may be taken)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "accelerate.yaml"
    config.write_text(ACCELERATE_CONFIG)
    env = {k: v for k, v in os.environ.items() if k not in ("RLHF_LAB_FAST", "ACCELERATE_USE_CPU")}
    env |= {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(TESTS.parent), env.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--main_process_port", str(port), *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=TESTS.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


# -----------------------------------------------------------------------------
# one process: nothing changes


def test_one_process_is_untouched():
    items, tensor, metrics = [1, 2, 3], torch.arange(4), {"loss": 0.5}
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert distributed.shard(items) is items and distributed.gather(tensor) is tensor
    assert distributed.gather_object(items) is items and distributed.broadcast(tensor) is tensor
    assert distributed.reduce_metrics(metrics) is metrics and distributed.share(3, 8) == 1.0
    assert distributed.prepare(torch.nn.Linear(2, 1)) is None  # the stage calls its own module
    generator = distributed.RankGenerator(SEED)
    torch.manual_seed(1)
    with generator.sampling():  # the global generator, as before
        drawn = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(drawn, torch.rand(3))


def test_shards_follow_the_launcher(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert distributed.world_size() == 2 and distributed.rank() == 1 and not distributed.is_main()
    assert distributed.shard(list(range(7))) == [3, 4, 5, 6]  # contiguous, earlier ranks first
    monkeypatch.setenv("RANK", "0")
    assert distributed.shard(list(range(7))) == [0, 1, 2]
    assert distributed.share(3, 12) == 0.5  # 3 of 12 tokens, times 2: DDP averages the two gradients
    with pytest.raises(ConfigError, match=r"batch_size=33 does not split evenly over 2 processes.*e\.g\. 34"):
        distributed.check_divisible(33, "batch_size", "PPOConfig")


def test_a_cpu_launch_of_one_process_is_named(monkeypatch):
    """accelerate launch --cpu --num_processes 2 starts one process (Accelerate sends CPU runs through mpirun)."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert "--multi_gpu --num_processes N" in distributed.launch_problem()
    monkeypatch.delenv("MASTER_ADDR")  # --num_processes 1: nothing wrong
    assert distributed.launch_problem() is None


# -----------------------------------------------------------------------------
# two processes: the same step as one


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """tests/distributed_worker.py in 2 processes: what each wrote (~25 s)."""
    out = tmp_path_factory.mktemp("distributed")
    accelerate_launch(out, str(TESTS / "distributed_worker.py"), str(out))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def assert_same_step(two: dict, one: dict) -> None:
    """The same optimizer step: the all-reduced gradients are one process's up to rounding, and so are the
    updated weights, except where a gradient is itself rounding noise around 0 (|g| <= 1e-6: the reward
    head's bias, whose gradient is 0 in r_chosen - r_rejected; a few LoRA entries): Adam's first step,
    g / (|g| + eps), turns the sign of such noise into a whole lr either way."""
    assert two["weights"].keys() == one["weights"].keys()
    for name, expected in one["weights"].items():
        assert torch.allclose(two["grads"][name], one["grads"][name], atol=1e-6, rtol=1e-4), name
        settled = one["grads"][name].abs() > 1e-6
        assert torch.allclose(two["weights"][name][settled], expected[settled], atol=TOLERANCE, rtol=0), name


@pytest.mark.slow
def test_both_processes_hold_the_same_weights(two_processes):
    first, second = two_processes
    assert (first["world_size"], first["rank"], second["rank"]) == (2, 0, 1)
    for stage in ("sft", "reward", "dpo", "ppo"):  # DDP all-reduced the gradients: the same step in both
        for name, value in first[stage]["weights"].items():
            assert torch.equal(value, second[stage]["weights"][name]), (stage, name)


def assert_one_step_with_the_same_grad_norm(two: dict, one: dict) -> None:
    """One optimiser step on each side, the same gradient norm (relative), the same updated weights."""
    assert len(one["grad_norms"]) == len(two["grad_norms"]) == 1
    assert abs(one["grad_norms"][0] - two["grad_norms"][0]) < TOLERANCE * one["grad_norms"][0]
    assert_same_step(two, one)


@pytest.mark.slow
def test_sft_step_equals_one_process(two_processes):
    one, two = sft_step(), two_processes[0]["sft"]
    assert abs(one["loss"] - two["loss"]) < TOLERANCE
    assert abs(one["eval_loss_before"] - two["eval_loss_before"]) < TOLERANCE  # measured in halves, summed
    assert abs(one["eval_loss"] - two["eval_loss"]) < TOLERANCE
    assert_one_step_with_the_same_grad_norm(two, one)


@pytest.mark.slow
def test_reward_model_step_equals_one_process(two_processes):
    one, two = reward_step(), two_processes[0]["reward"]
    for key in ("loss", "accuracy", "margin", "eval_loss"):
        assert abs(one[key] - two[key]) < TOLERANCE, key
    assert_one_step_with_the_same_grad_norm(two, one)


@pytest.mark.slow
def test_dpo_step_equals_one_process(two_processes):
    one, two = dpo_step(), two_processes[0]["dpo"]
    for key in ("loss", "accuracy", "margin", "grad_norm", "eval_loss"):
        assert abs(one[key] - two[key]) < TOLERANCE, key
    assert_same_step(two, one)


@pytest.mark.slow
def test_ppo_update_equals_one_process_on_the_gathered_batch(two_processes, tmp_path):
    """Each process sampled 4 episodes; the update ran on the gathered 8 (2 minibatches of 4, each split
    over the processes): one process updating on that batch, in the same order, lands on the same weights."""
    from rlhf_lab.ppo import Batch

    two = two_processes[0]["ppo"]
    trainer = ppo_trainer(tmp_path / "reward-model")
    torch.set_rng_state(two["rng"])
    one = ppo_update(trainer, Batch(**two["batch"]))
    assert len(two["batch"]["prompts"]) == 8 == two["batch"]["response"].shape[0]
    assert two["batch"]["prompts"] == trainer.batch_prompts(0)  # the slices in order: the batch of one process
    assert len(one["losses"]) == len(two["losses"]) == 2
    for a, b in zip(one["losses"], two["losses"]):
        assert abs(a - b) < TOLERANCE
    first = two["stats"][0]  # the rollout's log-probs in the global layout: ratio 1 on the first minibatch
    assert abs(first["ratio_max"] - 1.0) < 1e-6 and first["clipfrac"] == 0.0
    for key in ("pg_loss", "vf_loss", "grad_norm", "approx_kl"):
        assert abs(one["stats"][1][key] - two["stats"][1][key]) < TOLERANCE, key
    assert_same_step(two, one)


# -----------------------------------------------------------------------------
# a whole run


@pytest.mark.slow
def test_run_under_accelerate_launch(tmp_path):
    """Every stage of a small `rlhf-lab run` in 2 processes (~25 s): one process writes and prints."""
    out = tmp_path / "run"
    proc = accelerate_launch(tmp_path, "-m", "rlhf_lab.cli", "run", *RUN, "--out", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert {"gold_score_sft", "gold_score_ppo", "kl"} <= set(summary["ppo"])
    metrics = (out / "04_ppo" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [1, 2]  # written once, not once a process
    assert proc.stdout.count("[sft] held-out loss") == 1 and proc.stdout.count("done in") == 1
    assert (out / "report.md").is_file() and (out / "04_ppo" / "adapter_model.safetensors").is_file()
