"""Shared fixtures: the tiny world, loaded once per test session."""

import os

import pytest
import torch

# Tests never reach for the network: hub code paths are tested on local folders.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n 2 (pyproject.toml): two test processes share the CPUs, so one thread each, and one for
    # what they start (notebook kernels, CLI runs). Threads of two processes spinning on the same cores
    # slow both several times over (benchmarks/README.md); the tiny model's operators gain little from two.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer) of the tiny GPT-2, on the CPU, in eval mode. Do not train it in place."""
    from rlhf_lab.loading import load_model
    return load_model("tiny", device="cpu")


@pytest.fixture(scope="session")
def gpt2_like_tokenizer_dir(tmp_path_factory, tiny):
    """The tiny tokenizer saved the way the hub's GPT-2 tokenizer is: no pad token, BOS = EOS."""
    _, tokenizer = tiny
    path = tmp_path_factory.mktemp("gpt2-like-tokenizer")
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tok.pad_token = None
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A whole small `rlhf-lab run` (every stage on a handful of examples, in this process: ~20 s),
    for the fault tests to copy and damage, or to resume (tests/faults.py)."""
    from faults import RUN

    from rlhf_lab.cli import main

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    assert main(["run", *RUN, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def replayed_run(tiny_run, tmp_path_factory):
    """tiny_run made again from the config it saved (configs/run.yaml), logging to TensorBoard (~10 s):
    for the --config round trip (tests/test_config_file.py), --report-to (tests/test_tracking.py) and
    `rlhf-lab compare` (tests/test_runs.py)."""
    from rlhf_lab.cli import main

    out = tmp_path_factory.mktemp("replayed-run") / "run"
    assert main(["run", "--config", str(tiny_run / "configs" / "run.yaml"), "--report-to", "tensorboard",
                 "--out", str(out)]) == 0
    return out
