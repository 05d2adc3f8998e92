"""What the benchmarks against TRL share: options from a config dataclass, one subprocess per side,
peak memory, the machine and the versions, the shared inputs (prompts, the reward model in both
formats), and model-FLOPs utilisation (MFU) against a matmul measured on the same machine.

The parent process of a benchmark must not import torch (see run_child): everything at module level
here is standard library; torch and the lab are imported inside the functions that only children call.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "data" / "tiny-gpt2"
REVIEWS = REPO / "data" / "reviews" / "train.jsonl"
GIB = 2**30


# -----------------------------------------------------------------------------
# memory, machine, versions


def proc_status(key: str) -> int:
    """A VmRSS / VmHWM line of /proc/self/status in bytes (0 where /proc does not exist)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss() -> int:
    """Peak resident memory of this process in bytes: VmHWM, or ru_maxrss where /proc is missing."""
    hwm = proc_status("VmHWM")
    if hwm:
        return hwm
    import resource
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux kilobytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class HeapWatch:
    """For --heap: glibc's malloc seen from inside a child. A thread reads mallinfo2() every `interval`
    seconds and keeps the peaks of the bytes malloc'd and in use (uordblks, every arena), of the heap
    taken from the system for them (arena: the chunks in use plus the free ones glibc keeps), and of
    the chunks malloc mmapped (hblkhd: reserved, not all of it touched). RSS counts the heap's touched
    pages, free chunks included, so the gap between the first two peaks is what the allocator holds
    beyond the live data. The thread costs time: a --heap run's speeds are not the benchmark's.
    Without glibc 2.33 or later (musl, macOS) there is no mallinfo2 and stop() returns None."""

    FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
              "keepcost")

    def __init__(self, interval: float = 0.001):
        import ctypes
        import ctypes.util
        import threading

        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in self.FIELDS]

        self.interval, self.peak, self.done = interval, {}, threading.Event()
        try:
            self.mallinfo2 = ctypes.CDLL(ctypes.util.find_library("c")).mallinfo2
            self.mallinfo2.restype = MallInfo2
        except (OSError, AttributeError, TypeError):
            self.mallinfo2 = None
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def read(self) -> dict:
        info = self.mallinfo2()
        return {"in_use": info.uordblks, "heap": info.arena, "mmapped": info.hblkhd}

    def _poll(self) -> None:
        while not self.done.is_set():
            for key, value in self.read().items():
                self.peak[key] = max(self.peak.get(key, 0), value)
            time.sleep(self.interval)

    def start(self) -> "HeapWatch":
        if self.mallinfo2 is not None:
            self.thread.start()
        return self

    def stop(self) -> dict | None:
        """{"peak": {in_use, heap, mmapped}, "end": the same now}, in bytes; None without mallinfo2."""
        if self.mallinfo2 is None:
            return None
        self.done.set()
        self.thread.join()
        return {"peak": dict(self.peak), "end": self.read()}


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity") else os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in ("torch", "transformers", "peft", "accelerate", "datasets", "trl"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def run_info(cfg) -> dict:
    """Date, machine, versions and load average before the run, printed and kept in the JSON."""
    info = {"date": datetime.date.today().isoformat(), "machine": machine(), "versions": versions(),
            "load_before": os.getloadavg(), "config": dataclasses.asdict(cfg)}
    load, nproc = info["load_before"][0], info["machine"]["nproc"]
    print(f"load average {load:.2f}   {info['machine']['cpu']}, nproc {nproc}", flush=True)
    if load > 0.5:
        print(f"warning: the machine is busy (load average {load:.2f} on {nproc} CPUs): the figures will be noisy, "
              "and with --threads > 1 OpenMP threads that wait for each other at every operator can slow both "
              "sides several-fold. Measure on a quiet machine, or use --rounds.", flush=True)
    return info


def machine_line(info: dict) -> str:
    """The second line of a report: date, CPU, nproc, load, versions."""
    return (f"{info['date']}, {info['machine']['cpu']}, nproc {info['machine']['nproc']}, load average "
            f"{info['load_before'][0]:.2f} before / {info['load_after'][0]:.2f} after; "
            + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v))


# -----------------------------------------------------------------------------
# records: what the READMEs quote, kept in benchmarks/results/ (tests/test_quoted_figures.py checks the quotes)

def write_record(path: Path, script: str, argv: list[str], info: dict, table: str, figures: dict | None = None) -> None:
    """The run's date, machine, versions, settings, command line and report table, with no file paths (the
    work folder is a temporary one), as JSON: the figures benchmarks/README.md and README.md quote."""
    keep = {k: info[k] for k in ("date", "machine", "versions", "config", "matmul", "load_before", "load_after")
            if k in info}
    if isinstance(keep.get("matmul"), dict):  # its child's log lay in the temporary work folder
        keep["matmul"] = {k: v for k, v in keep["matmul"].items() if k not in ("log", "work")}
    record = {"command": " ".join(["python", f"benchmarks/{script}", *argv]), **keep, "table": table}
    if figures is not None:
        record["figures"] = figures
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


def read_tables(table: str) -> list[dict]:
    """The Markdown tables in a report: [{"header": [cells], "rows": {first cell: [the other cells]}}], in
    order (a report may hold several tables, e.g. one per method)."""
    tables, current = [], None
    for line in table.splitlines():
        if not line.startswith("|"):
            current = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if current is None:
            current = {"header": cells, "rows": {}}
            tables.append(current)
        elif not set("".join(cells)) <= set("-: "):
            current["rows"][cells[0]] = cells[1:]
    return tables


def heap_rows(row, result_of, heap: bool) -> list[str]:
    """The report's rows for a --heap run (HeapWatch): malloc's live bytes and its heap at their peaks.
    row(label, fmt, value) makes a table row; result_of(side) is that side's result."""
    if not heap:
        return []

    def peak(side, key):
        watched = result_of(side).get("heap")
        return watched["peak"][key] if watched else float("nan")

    return [row("malloc'd and in use, peak (GiB; --heap)", lambda v: f"{v / GIB:.2f}", lambda s: peak(s, "in_use")),
            row("malloc's heap from the system, peak (GiB; --heap)", lambda v: f"{v / GIB:.2f}",
                lambda s: peak(s, "heap"))]


HEAP_NOTE = ("--heap: a thread polled glibc's mallinfo2 in each side, which slows it; these speeds are not the "
             "benchmark's")


def check_heap(cfg, record: Path | None) -> None:
    """--heap's watcher slows the sides: a --heap run is recorded only to a file of its own, with "heap" in
    its name, so that no record of the speeds the READMEs quote can come from one."""
    if getattr(cfg, "heap", False) and record is not None and "heap" not in record.name:
        raise SystemExit(f"--heap slows every side (a thread polls the allocator), so its speeds are not the "
                         f"benchmark's: record it to a file of its own with 'heap' in its name (e.g. "
                         f"benchmarks/results/<script>_heap.json), not to {record}")


# -----------------------------------------------------------------------------
# options: one per field of the benchmark's config dataclass, its help from the field's comment


def field_help(cls) -> dict[str, str]:
    """The comment beside each field, as rlhf_lab.config_args reads it; loaded from its file, since
    importing the rlhf_lab package would import torch into the parent process."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("config_args", REPO / "rlhf_lab" / "config_args.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.field_help(cls)


def config_parser(cls, description: str, choices: dict[str, list[str]]) -> argparse.ArgumentParser:
    """--option per field of `cls` (a tuple field takes several of `choices[name]`), and --work, --json,
    --verbose and the hidden --child that the parent uses to start each side."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        help_text = f"{helps.get(f.name, '')} (default: {f.default})"
        if f.name in choices:
            p.add_argument("--" + f.name.replace("_", "-"), nargs="+", choices=choices[f.name],
                           default=list(f.default), help=help_text)
        elif f.type in ("bool", bool):
            p.add_argument("--" + f.name.replace("_", "-"), action="store_true", help=help_text)
        else:
            p.add_argument("--" + f.name.replace("_", "-"), type={"int": int, "float": float}[str(f.type)],
                           default=f.default, help=help_text)
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a fresh temporary one)")
    p.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    p.add_argument("--record", type=Path, default=None,
                   help="also write what the READMEs quote (date, machine, versions, settings, command, table; no "
                        "paths) to this JSON file: benchmarks/results/<script>.json is the one tests check them against")
    p.add_argument("--verbose", action="store_true", help="show each side's output instead of logging it")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def config_from_args(cls, args):
    return cls(**{f.name: tuple(getattr(args, f.name)) if isinstance(f.default, tuple) else getattr(args, f.name)
                  for f in dataclasses.fields(cls)})


# -----------------------------------------------------------------------------
# one subprocess per side


def run_child(script: str, child: str, work: Path, threads: int, verbose: bool, extra: tuple[str, ...] = ()) -> dict:
    """Run `script --child child` in a fresh interpreter and return its result with its own rusage.

    The parent imports no torch: a child started by fork/vfork may otherwise inherit the parent's
    high-water mark into ru_maxrss; the child's own VmHWM is the main figure anyway.
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TRL_EXPERIMENTAL_SILENCE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=os.pathsep.join(
                   [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    log = work / f"{child}.log"
    with open(log, "w") as out:
        wall = time.perf_counter()
        command = [sys.executable, script, "--child", child, "--work", str(work), *extra]
        proc = subprocess.Popen(command, env=env, stdout=None if verbose else out,
                                stderr=subprocess.STDOUT if not verbose else None, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - wall
    if proc.returncode != 0:
        tail = "" if verbose else "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"the {child!r} side failed (exit {proc.returncode}); its log: {log}\n{tail}")
    result = json.loads((work / f"result_{child}.json").read_text())
    scale = 1 if sys.platform == "darwin" else 1024
    result |= {"wall_seconds": wall, "ru_maxrss": usage.ru_maxrss * scale,
               "cpu_seconds": usage.ru_utime + usage.ru_stime, "log": str(log)}
    return result


def child_main(children: dict, child: str, work: Path, cfg) -> None:
    """In the child: run children[child](cfg, work) and write its result, with the process's peak memory
    (and glibc's heap, HeapWatch, where cfg.heap asks for it)."""
    start = time.perf_counter()
    watch = HeapWatch().start() if getattr(cfg, "heap", False) else None
    result = children[child](cfg, work)
    result = {"peak_rss": peak_rss()} | result | {"process_seconds": time.perf_counter() - start}
    if watch is not None:
        result["heap"] = watch.stop()
    (work / f"result_{child}.json").write_text(json.dumps(result, indent=2))


# -----------------------------------------------------------------------------
# the shared inputs (children only)


def pick_prompts(tokenizer, length: int, limit: int = 2048) -> tuple[list[str], list[list[int]]]:
    """Openings of training reviews that tokenize, as generation tokenizes them, to exactly `length`
    tokens (no padding on either side) and decode back to the same ids."""
    prompts, ids = [], []
    for line in REVIEWS.read_text().splitlines():
        text_ids = tokenizer(json.loads(line)["text"], add_special_tokens=False)["input_ids"][:length]
        if len(text_ids) < length:
            continue
        prompt = tokenizer.decode(text_ids)
        if tokenizer([prompt])["input_ids"][0] == text_ids:
            prompts.append(prompt)
            ids.append(text_ids)
        if len(prompts) == limit:
            break
    return prompts, ids


def save_reward_models(trunk, tokenizer, work: Path, r: int, lora_alpha: float):
    """One reward function in two formats: the tiny trunk, a LoRA "reward" adapter whose B is zero (it
    adds nothing, but ours pays for running it) and a linear head N(0, 1/sqrt(n_embd + 1)). Ours is a
    stage-2 reward model in work/reward_ours; TRL's a GPT2ForSequenceClassification (num_labels=1) with
    the same head weights in work/reward_trl (its score layer has no bias; ours is 0)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhf_lab.reward_model import RewardConfig, RewardModel, add_reward_adapter, new_reward_head, save_reward_model

    head = new_reward_head(trunk.config.n_embd)
    rm_cfg = RewardConfig(trunk=str(TINY), r=r, lora_alpha=lora_alpha)
    save_reward_model(RewardModel(add_reward_adapter(trunk, rm_cfg), head=head, tokenizer=tokenizer),
                      work / "reward_ours", rm_cfg)
    trl_rm = AutoModelForSequenceClassification.from_pretrained(str(TINY), num_labels=1)
    with torch.no_grad():
        trl_rm.score.weight.copy_(head.weight)
    trl_rm.config.pad_token_id = tokenizer.pad_token_id
    trl_rm.save_pretrained(work / "reward_trl")


# -----------------------------------------------------------------------------
# model-FLOPs utilisation, the nanoGPT way (estimate_mfu in karpathy/nanoGPT's model.py)


def model_shape(model, lora_params: int) -> dict:
    """What the FLOPs count needs of a GPT-2 (children only): layers, width, vocabulary, the weights of
    the transformer blocks and final layer norm (the trunk; embeddings are lookups, not matmuls), and
    the LoRA adapter's weights. `model` may already carry adapters (peft wraps in place)."""
    gpt2 = model.transformer
    trunk = sum(p.numel() for name, p in [*gpt2.h.named_parameters(), *gpt2.ln_f.named_parameters()]
                if "lora_" not in name)  # peft wraps the layers in place: its adapters are not the trunk
    return {"n_layer": model.config.n_layer, "n_embd": model.config.n_embd,
            "vocab_size": model.get_output_embeddings().weight.shape[0], "trunk_params": trunk,
            "lora_params": lora_params}


def pass_flops(shape: dict, sequences: int, seq_len: int, head_positions: int, lora: bool = True,
               backward: bool = False) -> float:
    """Model FLOPs of one pass over `sequences` sequences of `seq_len` tokens, counted as nanoGPT's
    estimate_mfu counts them: 2 per weight per token forward, and per token 4 L d T for attention's
    QK^T and AV (T = seq_len, no causal halving). The backward pass takes 2 per weight per token for
    the activations' gradients, 2 per *trained* weight for the weights' gradients, and twice the
    forward attention: with every weight trained that is nanoGPT's 6N + 12 L d T per token; with LoRA,
    whose frozen weights get no gradient, 4N + 2 N_lora. The LM head (tied to the frozen embedding)
    is counted only at the `head_positions` per sequence whose log-probs are read (0 for a scalar-head
    pass: reward and value heads, 2d per position, are left out)."""
    weights = shape["trunk_params"] + (shape["lora_params"] if lora else 0)
    attention = 4 * shape["n_layer"] * shape["n_embd"] * seq_len            # per token, forward
    head = 2 * shape["vocab_size"] * shape["n_embd"] * head_positions       # per sequence, forward
    flops = seq_len * (2 * weights + attention) + head
    if backward:
        trained = shape["lora_params"] if lora else 0
        flops += seq_len * (2 * weights + 2 * trained + 2 * attention) + head
    return sequences * flops


def child_matmul(threads: int, n: int = 2048, repeats: int = 6) -> dict:
    """The machine's fp32 matmul rate at `threads` torch threads: the best of `repeats` (n x n) @ (n x n)
    products after one warm-up, 2 n^3 FLOPs each. MFU divides a side's model FLOPs per second by it
    (nanoGPT divides by the GPU's datasheet peak; a CPU has none that one thread reaches)."""
    import torch
    torch.set_num_threads(threads)
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return {"n": n, "threads": torch.get_num_threads(), "seconds": best, "flops_per_second": 2 * n**3 / best}


# -----------------------------------------------------------------------------
# our side: one trainer on the shared trunk, and its updates timed


def our_trainer(pcfg, work: Path, prompts: list[str]):
    """(trainer, reward): rlhf_lab's PPOTrainer (pcfg.algo: ppo, rloo or grpo) on the tiny trunk with the
    policy adapter and the prepare step's reward adapter and head on the same trunk."""
    from rlhf_lab import ppo as lab_ppo
    from rlhf_lab.loading import load_model
    from rlhf_lab.reward_model import load_reward_model

    trunk, tokenizer = load_model(str(TINY), device="cpu")
    model = lab_ppo.add_policy_adapter(trunk, pcfg)
    reward = lab_ppo.TrunkRewardModel(load_reward_model(work / "reward_ours", trunk=model, tokenizer=tokenizer))
    return lab_ppo.PPOTrainer(pcfg, model, tokenizer, reward, prompts), reward


def time_our_updates(trainer, n: int, label: str, unit: str) -> list[dict]:
    """n updates of `trainer`, each timed whole, with a clock on its generation (PPOTrainer.sample):
    seconds, generation, update, scoring (the rest of the rollout), tokens generated, and a few metrics."""
    generated = []
    sample = trainer.sample

    def timed_sample(*args, **kwargs):
        start = time.perf_counter()
        rollout, completions = sample(*args, **kwargs)
        generated.append((time.perf_counter() - start, rollout.response.shape[1]))
        return rollout, completions

    trainer.sample = timed_sample
    updates = []
    for i in range(n):
        generated.clear()
        start = time.perf_counter()
        metrics = trainer.step()
        seconds = time.perf_counter() - start
        generation = sum(s for s, _ in generated)
        updates.append({"seconds": seconds, "generation": generation,
                        "update": metrics.get("seconds_update", float("nan")),
                        "scoring": metrics.get("seconds_rollout", generation) - generation,
                        "generated_tokens": generated[-1][1] if generated else None,
                        "response_length": metrics.get("response_length"), "eos_share": metrics.get("eos_share"),
                        "kl": metrics.get("kl"), "ratio_max": metrics.get("ratio_max")})
        print(f"ours {label}update {i + 1}: {seconds:.2f} s, {trainer.cfg.batch_size / seconds:.1f} {unit}/s", flush=True)
    return updates
