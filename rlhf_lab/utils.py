"""Small helpers every stage uses: seeds, devices, FAST mode, configs, errors."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

# -----------------------------------------------------------------------------
# where things live

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
# The tiny world ships in the repository's data/ folder; RLHF_LAB_DATA points elsewhere if needed.
DATA_DIR = Path(os.environ.get("RLHF_LAB_DATA", REPO_DIR / "data"))
# Every run writes under runs/ (git-ignored), never into data/.
RUNS_DIR = Path(os.environ.get("RLHF_LAB_RUNS", REPO_DIR / "runs"))


class LabError(Exception):
    """An error a learner can act on: the message says what went wrong and what to do.

    The notebooks and the command line show only the message, not a stack trace.
    """


class TrainingDiverged(LabError):
    """A run went non-finite (a NaN reward, loss or gradient) or past a bound it was told to keep; the
    message names the quantity, the step and what to try."""


class ConfigError(LabError):
    """A config field (or a rule between fields) out of range. `fields` names them, so the command
    line can name its options; `problem` is the rule that failed ("must be > 0")."""

    def __init__(self, message: str, config: str = "", fields: tuple[str, ...] = (), problem: str | None = None):
        super().__init__(message)
        self.config, self.fields, self.problem = config, tuple(fields), problem


# -----------------------------------------------------------------------------
# reproducibility and devices


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_states() -> dict:
    """Every RNG's state (torch CPU and CUDA, NumPy, Python) as tensors, numbers and tuples, so a checkpoint
    loads with torch.load(weights_only=True) and a resumed run draws what the uninterrupted one would."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }


def set_rng_states(state: dict) -> None:
    """Restore what rng_states() returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    random.setstate(state["python"])


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto" picks CUDA, then Apple's MPS, then the CPU; "cpu", "cuda", "cuda:N" and "mps" are taken
    as given, once it is clear this machine has them (a LabError that says what it has, if not).
    Under accelerate launch, "auto" and "cuda" are this process's own device (its GPU, cuda:LOCAL_RANK)."""
    from . import distributed

    if distributed.world_size() > 1 and str(device) in ("auto", "cuda", "None"):
        return distributed.device()
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if isinstance(device, torch.device):
        device = str(device)
    here = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (["mps"] if _mps_available() else [])
    from .config_args import DeviceName

    problem = DeviceName().problem(device)
    if problem:
        raise LabError(f"device {problem}; this machine has {', '.join(here)}.")
    kind, _, index = device.partition(":")
    if kind == "cuda" and not torch.cuda.is_available():
        raise LabError(f"device {device!r} was asked for but CUDA is not available here (no NVIDIA GPU, or "
                       f"a CPU-only build of torch); use {' or '.join(repr(d) for d in here)}.")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise LabError(f"device {device!r} was asked for but this machine has {torch.cuda.device_count()} "
                       f"CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    if kind == "mps" and not _mps_available():
        raise LabError(f"device 'mps' (Apple's GPU) was asked for but it is not available here; "
                       f"use {' or '.join(repr(d) for d in here)}.")
    return torch.device(device)


PRECISIONS = ("auto", "bf16", "fp32")
_precision = {"value": os.environ.get("RLHF_LAB_PRECISION", "auto").strip().lower() or "auto"}


def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile would build CPU kernels with ($CXX, else g++, c++ or clang++), or None."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    return next((path for name in names if (path := shutil.which(name))), None)


def set_precision(value: str) -> None:
    """How forward passes run: "auto" (bf16 autocast on a CUDA GPU that supports it, fp32 elsewhere),
    "bf16" (bf16 autocast on CUDA or the CPU), "fp32" (never autocast). RLHF_LAB_PRECISION sets the
    start value; `rlhf-lab --precision` sets it for a command."""
    _precision["value"] = _checked_precision(value)


def _checked_precision(value: str) -> str:
    value = str(value).strip().lower()
    if value not in PRECISIONS:
        raise LabError(f"precision must be one of {', '.join(PRECISIONS)} (set_precision, --precision or "
                       f"RLHF_LAB_PRECISION), got {value!r}.")
    return value


@contextlib.contextmanager
def precision(value: str):
    """set_precision(value) inside the block, the setting before it restored after."""
    before = _precision["value"]
    set_precision(value)
    try:
        yield
    finally:
        _precision["value"] = before


def autocast_dtype(device: str | torch.device) -> torch.dtype | None:
    """torch.bfloat16 where forward passes on `device` run under autocast, None where they run in fp32."""
    value, device = _checked_precision(_precision["value"]), torch.device(device)
    if value == "fp32" or device.type not in ("cuda", "cpu"):
        return None
    if value == "auto":
        # native bf16 only (Ampere and newer): older GPUs emulate it, slower than fp32
        native = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else None
    return torch.bfloat16


def autocast(device: str | torch.device):
    """Context for a forward pass: bf16 autocast where autocast_dtype says so, else nothing.

    Weights, gradients and optimizer states stay fp32 (mixed precision, as TRL and the Trainer do
    with bf16=True); matmuls run in bf16; the stages upcast logits to fp32 before any log-softmax,
    loss or log-prob (ppo_math), where bf16 would move the PPO ratio off 1.
    """
    dtype = autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def fast_mode(default: bool = False) -> bool:
    """FAST mode: the notebooks' `FAST` parameter, switched on by RLHF_LAB_FAST=1 (CI sets it)."""
    value = os.environ.get("RLHF_LAB_FAST", "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return bool(default)


# -----------------------------------------------------------------------------
# configs and run folders


def config_to_dict(config: Any) -> dict:
    """A dataclass config as a JSON-friendly dict (paths and devices become strings)."""
    def plain(value):
        if isinstance(value, (str, int, float, bool)) or value is None:
            return value
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return str(value)

    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}


def save_config(config: Any, path: str | Path) -> Path:
    """Write a dataclass config as JSON next to a run's results, so the run can be repeated."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config_to_dict(config), indent=2) + "\n")
    return path


def read_json(path: str | Path, what: str = "file"):
    """A JSON file the lab wrote (a config, a result, a plan), or a LabError that names the file, the
    line and what to do: a cut-off or hand-edited file should not end in a stack trace."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabError(f"{short_path(path)}: no such file (the {what}). Check the path, or run the stage "
                       "that writes it.") from None
    except UnicodeDecodeError as e:
        raise LabError(f"{short_path(path)}: the {what} is not UTF-8 text (byte {e.start}); it is damaged. "
                       "Delete it and run the stage that writes it again.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise LabError(f"{short_path(path)}, line {e.lineno}, column {e.colno}: the {what} is not valid JSON "
                       f"({e.msg}); it was cut off or edited by hand. Fix that line, or delete the file's "
                       "folder and run that stage again.") from None


@contextlib.contextmanager
def reading_saved(path: str | Path, what: str):
    """A block that loads a saved `what` (an adapter, a head, a checkpoint) from `path`: whatever the
    loaders raise on a damaged file (safetensors' header errors, torch's zip errors, a refused pickle)
    becomes one LabError that says what is wrong and what to do."""
    try:
        yield
    except LabError:
        raise
    except FileNotFoundError as err:
        raise LabError(f"{short_path(path)}: the saved {what} is incomplete ({Path(err.filename or '?').name} "
                       "is missing). Run the stage that writes it again.") from None
    except Exception as err:  # noqa: BLE001 (each loader has its own error types; all mean the same here)
        reason = " ".join(str(err).split()).split(". ")[0][:160]  # the first sentence: torch's run on
        pickled = _pickled_file(Path(path), refused=str(err).startswith("Weights only load failed"))
        if pickled is not None:
            problem = (f"cannot be read: {pickled.name} is a pickle of Python objects, not what the lab writes "
                       "there; the lab never unpickles such a file, since that can run any code")
        else:
            problem = (f"cannot be read ({type(err).__name__}: {reason}); a file in it is damaged (cut off by "
                       "a full disk or a kill, zeroed, or replaced by another kind of file)")
        raise LabError(f"{short_path(path)}: the saved {what} {problem}. Delete it and run the stage that "
                       "writes it again (without --resume).") from None


def _pickled_file(path: Path, refused: bool) -> Path | None:
    """The file at `path` (or in the folder) that is a pickle where the lab expects its own format: a
    .safetensors file that is torch.save's zip (PK...) or a bare pickle (0x80, protocol 2-5); or, when
    torch refused to unpickle (refused=True), a .pt file that is a pickle (the lab's own load with
    weights_only=True, so a refusal means foreign Python objects). None if there is none."""
    files = [path] if path.is_file() else sorted(path.glob("*")) if path.is_dir() else []
    for file in files:
        if file.suffix not in (".safetensors", ".pt"):
            continue
        with open(file, "rb") as f:
            start = f.read(9)
        pickle_protocol = start[:1] == b"\x80" and start[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
        is_pickle = start.startswith(b"PK\x03\x04") or pickle_protocol  # torch.save's zip, or a bare pickle
        header = int.from_bytes(start[:8], "little")  # safetensors: 8 bytes of header length, then "{"
        is_safetensors = start[8:9] == b"{" and 8 + header <= file.stat().st_size
        if is_pickle and (file.suffix == ".safetensors" and not is_safetensors or file.suffix == ".pt" and refused):
            return file
    return None


def run_dir(name: str, root: str | Path | None = None) -> Path:
    """A folder under runs/ (git-ignored) for one notebook's or command's results."""
    path = Path(root) if root is not None else RUNS_DIR
    path = path / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def short_path(path: str | Path) -> str:
    """A path as a reader should see it: relative to the repository when inside it (runs/01_sft),
    not this machine's absolute path."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(REPO_DIR))
    except ValueError:
        return str(path)


# -----------------------------------------------------------------------------
# checkpoints: a folder replaced whole, or not at all


def write_torch(obj, path: str | Path) -> None:
    """torch.save through Python's own write: torch's file writer reports a full disk as "unexpected pos",
    Python's write raises OSError(ENOSPC), which the command line can explain."""
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    Path(path).write_bytes(buffer.getvalue())


@contextlib.contextmanager
def replacing_folder(path: str | Path):
    """Write a folder's new contents into the yielded temporary folder; on leaving the block it replaces
    `path` by two renames, so a kill during the save leaves the previous folder whole (as `path` or, between
    the renames, `path`.old: saved_folder finds either)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def saved_folder(path: str | Path, marker: str) -> Path | None:
    """The folder replacing_folder wrote last: `path` if it holds `marker`, else `path`.old (killed between
    the two renames), else None."""
    path = Path(path)
    for folder in (path, path.with_name(path.name + ".old")):
        if (folder / marker).is_file():
            return folder
    return None
