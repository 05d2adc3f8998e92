"""Every notebook runs top to bottom in FAST mode, on its own, as CI and a new learner would run it."""

import os
from pathlib import Path

import pytest

from rlhf_lab import figures

ROOT = Path(__file__).resolve().parents[1]
# The learners' exercise notebooks (notebooks/exercises/*.ipynb) hold unfilled holes and are not run;
# their solution versions (notebooks/exercises/solutions/) are. tests/test_exercises.py checks that the
# two agree.
LEARNER_EXERCISES = ROOT / "notebooks" / "exercises"
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb")
                   if ".ipynb_checkpoints" not in p.parts and p.parent != LEARNER_EXERCISES)


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[str(p.relative_to(ROOT / "notebooks")) for p in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    # The kernel inherits this environment: FAST on, and a fresh runs/ folder so that each notebook
    # proves it can run without the earlier notebooks' results.
    monkeypatch.setenv("RLHF_LAB_FAST", "1")
    monkeypatch.setenv("RLHF_LAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    # the figures the committed (full) run recorded are recorded in FAST mode too
    committed = figures.of_notebook(path)
    assert set(figures.collect(nb)) >= set(committed), set(committed) - set(figures.collect(nb))
