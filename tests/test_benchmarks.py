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


def test_hub_scale_counts_the_default_hub_run_and_floors_small_steps():
    """benchmarks/hub_scale.py: the default hub run's steps from the configs, and the estimate's arithmetic."""
    bench = load("hub_scale")
    counts = bench.default_run_counts()
    # SFT: 2,000 demonstrations, batches of 16, 2 epochs; the held-out loss on 200 at step 0 and every 25 steps
    assert counts["sft_steps"] == 250 and counts["sft_eval_examples"] == 11 * 200
    assert counts["rm_steps"] == 63 * 4 and counts["ppo_updates"] == 40  # 2,000 pairs in batches of 32, 4 epochs
    # 1,600 samples to rank, 512 to normalise the reward model, PPO's 256 and 2 x 256 to evaluate, 3 report batches
    assert counts["sample_batches"] == 25 + 8 + 4 + 8 + 3
    tiny = {"seconds": 1.0, "peak_gib": 1.0, "flops": 1.0}  # FLOPs that cost nothing: only the floors count
    est = bench.estimate({k: tiny for k in ("sft_step", "sft_eval_16", "sample_64x48", "rm_step", "rm_forward_64",
                                            "ppo_update")}, counts)
    parts = est["parts"]
    assert parts["SFT training"]["gpu_seconds"] == pytest.approx(250 * bench.TRAIN_FLOOR)
    assert parts["sampling (rankings, normalisation, evaluation)"]["gpu_seconds"] == \
        pytest.approx(48 * 48 * bench.DECODE_FLOOR)
    assert parts["PPO updates"]["gpu_seconds"] == pytest.approx(
        40 * (48 * bench.DECODE_FLOOR + 3 * bench.FORWARD_FLOOR + 8 * bench.TRAIN_FLOOR))
    # and FLOPs that do not fit the floor are timed at the assumed share of the GPU's peak
    big = dict(tiny, flops=1e15)
    est = bench.estimate({k: big for k in ("sft_step", "sft_eval_16", "sample_64x48", "rm_step", "rm_forward_64",
                                           "ppo_update")}, counts)
    assert est["parts"]["SFT training"]["gpu_seconds"] == pytest.approx(250 * 1e15 / (989e12 * bench.ASSUMED_MFU))
    assert est["sft_eval_share_of_flops"] == pytest.approx((2200 / 16) / est["total_flops"] * 1e15)


def test_a_record_keeps_the_table_and_no_paths(tmp_path):
    """--record: the date, machine, versions, settings, command and table a README quotes; the temporary work
    folder's paths are left out; read_tables gives each table's rows by their first cell."""
    common = load("bench_common")
    table = ("Title line\n\n| | ours | TRL | ours / TRL |\n|---|---:|---:|---:|\n| speed | 96.4 | 37.6 | 2.56x |\n"
             "| memory | 0.59 | 1.03 | 0.57x |\n\nGoal: met.\n\n| method | x |\n|---|---|\n| DPO | 6.9x |")
    info = {"date": "2026-12-05", "machine": {"nproc": 2}, "versions": {"torch": "2.13.0"}, "config": {"threads": 2},
            "work": "/tmp/x", "matmul": {"flops_per_second": 3.4e11, "log": "/tmp/x/matmul.log"}}
    common.write_record(tmp_path / "r.json", "ppo_vs_trl.py", ["--rounds", "3"], info, table)
    saved = (tmp_path / "r.json").read_text()
    assert "/tmp/x" not in saved
    import json
    record = json.loads(saved)
    assert record["command"] == "python benchmarks/ppo_vs_trl.py --rounds 3"
    assert record["matmul"] == {"flops_per_second": 3.4e11} and record["table"] == table
    tables = common.read_tables(record["table"])
    assert [t["header"] for t in tables] == [["", "ours", "TRL", "ours / TRL"], ["method", "x"]]
    assert tables[0]["rows"] == {"speed": ["96.4", "37.6", "2.56x"], "memory": ["0.59", "1.03", "0.57x"]}
    assert tables[1]["rows"] == {"DPO": ["6.9x"]}


def test_heap_watch_sees_the_allocations_it_lives_through():
    """--heap (bench_common.HeapWatch): the peak of malloc's bytes in use rises by what was allocated and freed
    while it watched, and the heap taken from the system is at least the bytes in use."""
    common = load("bench_common")
    watch = common.HeapWatch(interval=0.0005)
    if watch.mallinfo2 is None:
        pytest.skip("no glibc mallinfo2 here")
    before = watch.read()["in_use"]
    watch.start()
    import time
    chunks = [bytearray(64 * 1024) for _ in range(512)]  # 32 MiB in chunks below the mmap threshold: the heap
    time.sleep(0.05)
    del chunks
    time.sleep(0.01)
    seen = watch.stop()
    assert seen["peak"]["in_use"] - before >= 30 * 2**20
    assert seen["peak"]["heap"] >= seen["peak"]["in_use"]
    assert seen["end"]["in_use"] < seen["peak"]["in_use"] - 20 * 2**20


def test_a_heap_run_is_never_recorded_as_the_speed_record(tmp_path):
    """--heap slows the sides: with --record it must go to a file of its own, named for it."""
    common = load("bench_common")
    cfg = load("vs_trl_current").BenchConfig(heap=True)
    with pytest.raises(SystemExit, match="with 'heap' in its name"):
        common.check_heap(cfg, Path("benchmarks/results/vs_trl_current.json"))
    common.check_heap(cfg, Path("benchmarks/results/vs_trl_current_heap.json"))
    common.check_heap(load("vs_trl_current").BenchConfig(), Path("benchmarks/results/vs_trl_current.json"))
    rows = common.heap_rows(lambda label, fmt, value: f"| {label} | {fmt(value('ours'))} | {fmt(value('trl'))} |",
                            {"ours": {"heap": {"peak": {"in_use": 2**29, "heap": 2**30}}}, "trl": {"heap": None}}.get,
                            True)
    assert rows == ["| malloc'd and in use, peak (GiB; --heap) | 0.50 | nan |",
                    "| malloc's heap from the system, peak (GiB; --heap) | 1.00 | nan |"]
    assert common.heap_rows(None, None, False) == []
