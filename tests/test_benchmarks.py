"""benchmarks/: the scripts start (--help needs no torch and no TRL), and MFU's FLOPs count is nanoGPT's."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    """A benchmark module from its file (benchmarks/ is not a package; its scripts import bench_common)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve their string annotations through it
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_vs_trl_current_help_runs_without_torch_in_the_parent():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "vs_trl_current.py"), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--methods {dpo,rloo,grpo}" in done.stdout and "--rounds ROUNDS" in done.stdout
    assert "timed updates per method and side" in done.stdout


def test_pass_flops_is_nanogpts_count_when_every_weight_trains():
    """nanoGPT's estimate_mfu: 6N + 12 L d T per token for forward + backward, 1/3 of it forward only."""
    common = load("bench_common")
    shape = {"n_layer": 4, "n_embd": 128, "vocab_size": 100, "trunk_params": 0, "lora_params": 1000}
    L, d, T, N = 4, 128, 32, 1000
    per_token = 6 * N + 12 * L * d * T
    assert common.pass_flops(shape, 3, T, 0, backward=True) == 3 * T * per_token
    assert common.pass_flops(shape, 3, T, 0) == 3 * T * (2 * N + 4 * L * d * T)
    # LoRA: the frozen trunk's weights get no gradient (4 FLOPs per weight per token, not 6), and the
    # LM head (tied to the frozen embedding) is counted only where log-probs are read
    frozen = dict(shape, trunk_params=5000, lora_params=0)
    head = 2 * 100 * 128 * 24
    assert common.pass_flops(frozen, 1, T, 24, lora=False, backward=True) == \
        T * (4 * 5000 + 12 * L * d * T) + 2 * head


def test_dpo_flops_count_each_distinct_text_once():
    """The task's work for DPO is the distinct texts: 4 samples make 6 pairs, 2 samples make 1."""
    bench = load("vs_trl_current")
    shape = {"n_layer": 4, "n_embd": 128, "vocab_size": 2858, "trunk_params": 790_000, "lora_params": 65_536}
    ranked = bench.BenchConfig(dpo_batch_size=48, dpo_samples_per_prompt=4)   # 8 prompts, 32 texts
    disjoint = bench.BenchConfig(dpo_batch_size=48, dpo_samples_per_prompt=2)  # 48 prompts, 96 texts
    assert bench.update_flops(disjoint, "dpo", shape) == pytest.approx(3 * bench.update_flops(ranked, "dpo", shape))
    # GRPO with one epoch needs no old log-probs pass; RLOO needs it for the KL in its reward
    one_epoch = bench.BenchConfig(epochs=1)
    assert bench.update_flops(one_epoch, "grpo", shape) < bench.update_flops(one_epoch, "rloo", shape)
