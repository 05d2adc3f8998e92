"""Metrics to TensorBoard or Weights & Biases, beside the metrics.jsonl every stage writes anyway.

    rlhf-lab run --report-to tensorboard      # then: tensorboard --logdir runs/pipeline/logs
    rlhf-lab run --report-to wandb            # offline unless you are logged in (wandb sync to upload)

Each training loop calls `log(stage, metrics, step)` with the very dict it writes as a line of its
metrics.jsonl, so the names are the JSONL's, under the stage: "sft/eval_loss", "rm/eval_gold_accuracy",
"ppo/gold_score", "dpo/loss". Only numbers are logged (a list or a string in a record is skipped), and only
by the process that writes files (RANK 0 under `accelerate launch`). With no tracker started, `log` does
nothing, so the package and the notebooks never need TensorBoard or wandb: both are optional extras
(`pip install "rlhf-lab[tensorboard]"` or `"rlhf-lab[wandb]"`), as TRL's and the Trainer's `report_to` are.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
from pathlib import Path

from .utils import LabError

REPORT_TO = ("none", "tensorboard", "wandb")
_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb"}  # what each needs installed

_active = None  # the tracker `log` writes to, or None


def missing_package(kind: str) -> str | None:
    """The one-line problem if `kind` cannot be used here (its package is not installed), else None."""
    package = _PACKAGE.get(kind)
    if package is None or importlib.util.find_spec(package) is not None:
        return None
    return (f"--report-to {kind} needs the {package} package, which is not installed: "
            f'pip install "rlhf-lab[{kind}]" (or pip install {package}), or leave --report-to out')


def _numbers(metrics: dict) -> dict[str, float]:
    """The finite-or-not numbers of a metrics record (bools and None, lists and strings left out)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}


class TensorBoardTracker:
    """torch.utils.tensorboard's SummaryWriter: one event file per command in `log_dir`."""

    def __init__(self, log_dir: Path, config: dict):
        import json

        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))
        # the resolved config, as text in TensorBoard's TEXT tab (indented four spaces: shown as code)
        self.writer.add_text("config", "    " + json.dumps(config, indent=2, default=str).replace("\n", "\n    "))

    def log(self, stage: str, metrics: dict, step: int) -> None:
        for name, value in _numbers(metrics).items():
            if math.isfinite(value):  # TensorBoard draws NaN as a gap; the JSONL keeps it
                self.writer.add_scalar(f"{stage}/{name}", value, global_step=step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class WandbTracker:
    """wandb.init / wandb.log / wandb.finish. Offline (files under `log_dir`, `wandb sync` uploads them
    later) unless WANDB_MODE says otherwise or an API key is set: the lab runs on machines without a network."""

    def __init__(self, log_dir: Path, config: dict, name: str):
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "rlhf-lab"), name=name, dir=str(log_dir),
                              config=config, mode=mode)
        self.stages: set[str] = set()

    def log(self, stage: str, metrics: dict, step: int) -> None:
        if stage not in self.stages:  # wandb's own step only grows, and each stage counts from 0 again:
            self.stages.add(stage)    # each stage's metrics are drawn against a step metric of its own
            self.run.define_metric(f"{stage}/step")
            self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
        self.run.log({f"{stage}/step": step} | {f"{stage}/{k}": v for k, v in _numbers(metrics).items()})

    def close(self) -> None:
        self.run.finish()


def start(kind: str, log_dir: str | Path, config: dict | None = None, name: str | None = None):
    """Make `kind` ("none", "tensorboard" or "wandb") the tracker `log` writes to; returns it (None for
    "none"). Only the main process starts one. End it with `stop()`, or use `session(...)`."""
    global _active
    if kind not in REPORT_TO:
        raise LabError(f"report_to = {kind!r}: it must be one of {', '.join(REPORT_TO)}.")
    stop()
    if kind == "none" or int(os.environ.get("RANK", "0")) != 0:
        return None
    problem = missing_package(kind)
    if problem:
        raise LabError(problem + ".")
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    config = config or {}
    _active = (TensorBoardTracker(log_dir, config) if kind == "tensorboard"
               else WandbTracker(log_dir, config, name or log_dir.parent.name))
    return _active


def stop() -> None:
    """Flush and close the tracker, if one is running."""
    global _active
    tracker, _active = _active, None
    if tracker is not None:
        tracker.close()


@contextlib.contextmanager
def session(kind: str, log_dir: str | Path, config: dict | None = None, name: str | None = None):
    """`with session("tensorboard", out / "logs", config): ...` runs the block with that tracker."""
    start(kind, log_dir, config, name)
    try:
        yield
    finally:
        stop()


def log(stage: str, metrics: dict, step: int) -> None:
    """Log one metrics record (a line of `stage`'s metrics.jsonl) at `step`, if a tracker is running."""
    if _active is not None:
        _active.log(stage, metrics, step)
