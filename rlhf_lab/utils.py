"""Small helpers every stage uses: seeds, devices, FAST mode, configs, errors."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
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


# -----------------------------------------------------------------------------
# reproducibility and devices


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto" picks CUDA, then Apple's MPS, then the CPU; any other value is taken as given."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LabError(f"device {str(device)!r} was asked for but CUDA is not available here; "
                       "use device='auto' or 'cpu'.")
    return device


PRECISIONS = ("auto", "bf16", "fp32")
_precision = {"value": os.environ.get("RLHF_LAB_PRECISION", "auto").strip().lower() or "auto"}


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
