"""--report-to (rlhf_lab/tracking.py): the JSONL's metrics, by the same names, in TensorBoard or wandb."""

import importlib.machinery
import json
import sys
import types

import pytest

from faults import one_line_error

from rlhf_lab import tracking


def _numeric_keys(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {k for row in rows for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}


def test_a_run_with_report_to_tensorboard_logs_the_jsonl_metrics(replayed_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(replayed_run / "logs"))
    events.Reload()
    tags = {}
    for tag in events.Tags()["scalars"]:
        stage, _, name = tag.partition("/")
        tags.setdefault(stage, set()).add(name)
    for stage, folder in (("sft", "01_sft"), ("rm", "03_reward_model"), ("ppo", "04_ppo")):
        assert tags[stage] == _numeric_keys(replayed_run / folder / "metrics.jsonl"), stage
    # the values too: PPO's gold per update, step by step, as metrics.jsonl has them
    rows = [json.loads(line) for line in (replayed_run / "04_ppo" / "metrics.jsonl").read_text().splitlines()]
    logged = events.Scalars("ppo/gold")
    assert [e.step for e in logged] == [r["step"] for r in rows]
    assert [e.value for e in logged] == pytest.approx([r["gold"] for r in rows], rel=1e-6)
    assert "config/text_summary" in events.Tags()["tensors"]  # the resolved config, in the TEXT tab


class FakeRun:
    def __init__(self, **kwargs):
        self.init, self.logged, self.defined, self.finished = kwargs, [], [], False

    def define_metric(self, name, step_metric=None):
        self.defined.append((name, step_metric))

    def log(self, values):
        self.logged.append(values)

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    """A stand-in `wandb` module that records what the tracker asks of it."""
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    module.runs = []

    def init(**kwargs):
        module.runs.append(FakeRun(**kwargs))
        return module.runs[-1]

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return module


def test_wandb_is_offline_without_a_key_and_each_stage_has_its_own_step(fake_wandb, tmp_path):
    with tracking.session("wandb", tmp_path / "logs", {"ppo": {"kl_coef": 0.1}}, name="run-x"):
        tracking.log("sft", {"step": 2, "train_loss": 1.5, "eval_loss": None}, 2)
        tracking.log("ppo", {"step": 1, "gold": 0.25, "kl": 0.5, "algo": "ppo", "ended": True}, 1)
    run = fake_wandb.runs[0]
    assert run.init["mode"] == "offline" and run.init["name"] == "run-x"
    assert run.init["config"] == {"ppo": {"kl_coef": 0.1}} and run.init["dir"] == str(tmp_path / "logs")
    # numbers only: a None, a string and a bool are left out, as the JSONL's other readers expect
    assert run.logged == [{"sft/step": 2, "sft/train_loss": 1.5}, {"ppo/step": 1, "ppo/gold": 0.25, "ppo/kl": 0.5}]
    assert ("ppo/*", "ppo/step") in run.defined and run.finished
    assert tracking._active is None


def test_only_the_main_process_logs(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "1")
    assert tracking.start("tensorboard", tmp_path / "logs") is None
    tracking.log("ppo", {"gold": 1.0}, 1)  # nothing to log to: does nothing
    assert not (tmp_path / "logs").exists()


def test_a_tracker_whose_package_is_missing_is_refused_while_parsing(capsys, monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    line = one_line_error(capsys, "run", "--fast", "--report-to", "tensorboard", "--out", tmp_path / "out")
    assert 'pip install "rlhf-lab[tensorboard]"' in line
    assert not (tmp_path / "out").exists()
