"""Helpers for the fault tests (tests/test_faults_*.py, one module per class of issue 12): the command
line run in this process (no second torch import), a small whole run to damage, and what a user sees."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

# A whole run in seconds: every stage on a handful of examples (FAST mode, then smaller still).
SFT = ["--sft-n-train", "32", "--sft-n-eval", "16", "--sft-eval-every", "2"]
RANK = ["--n-rankings", "16"]
RM = ["--rm-epochs", "1", "--rm-eval-every", "2"]
PPO = ["--steps", "2", "--ppo-batch-size", "8", "--ppo-minibatch-size", "8", "--ppo-norm-episodes", "8",
       "--ppo-eval-prompts", "8", "--ppo-checkpoint-every", "1", "--ppo-max-new-tokens", "16"]
RUN = ["--fast", *SFT, *RANK, *RM, *PPO]


def cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `rlhf-lab argv` run in this process, as main() reports it."""
    from rlhf_lab.cli import main

    capsys.readouterr()  # drop what came before
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit:  # argparse's own exit (a bad option, --help)
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, *argv, code: int = 2) -> str:
    """Run the command, check it failed the way a user's mistake must (exit code 2, no traceback, the
    error on one line of its own), and return that line."""
    got, _, err = cli(capsys, *argv)
    assert got == code, (got, err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err[-3000:]
    assert errors[0].startswith("rlhf-lab"), errors[0]  # its own line, not glued onto a progress bar
    return errors[0]


def subprocess_cli(*argv, env=None, timeout=600):
    """`python -m rlhf_lab.cli argv` in a fresh process, as a learner runs it."""
    return subprocess.run([sys.executable, "-m", "rlhf_lab.cli", *map(str, argv)], capture_output=True, text=True,
                          env=os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {}), timeout=timeout)


def copy_run(run: Path, tmp_path: Path) -> Path:
    """A copy of the shared run folder, to damage without spoiling it for the other tests."""
    return Path(shutil.copytree(run, tmp_path / "run"))


@contextlib.contextmanager
def small_tmpfs(tmp_path: Path, size: str = "1M", read_only: bool = False):
    """A folder on a tmpfs of `size` (a disk that fills up), or read-only; pytest.skip where mounting is
    not allowed (not root, no tmpfs)."""
    import pytest

    folder = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a small disk needs `mount -t tmpfs`, which needs root; this test runs where it is allowed")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill_disk(folder: Path, leave: int = 0) -> Path:
    """Fill the disk under `folder` until at most `leave` bytes are free; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: the full disk shows at the write itself
        chunk = b"\0" * 4096
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
    if leave:
        with open(filler, "r+b") as f:
            f.truncate(max(0, filler.stat().st_size - leave))
    return filler
