"""Every notebook runs top to bottom in FAST mode, on its own, as CI and a new learner would run it.

Each starts from an empty runs/ folder, so it must make what it needs (pipeline.ensure_sft, ensure_rankings,
ensure_reward_model train a quick one when none is there), except the notebooks that build on the quick
reward model (04-07) and the exercise solutions that build on the quick SFT model: they start from a copy of
one FAST runs/ folder made here once by those same functions, with the same settings and seed, so they see
exactly what they would have made themselves, and CI does not train the same quick models nine times
(about 10-15 s each). Notebooks 01-03 and the tests of rlhf_lab/pipeline.py still make them from nothing.
"""

import os
import shutil
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


def builds_on_the_quick_models(path: Path) -> bool:
    """Whether a notebook takes the quick reward model (or, an exercise solution, the quick SFT model)."""
    text = path.read_text()
    return "ensure_reward_model(" in text or (path.parent.name == "solutions" and "ensure_sft(" in text)


@pytest.fixture(scope="session")
def quick_runs(tmp_path_factory):
    """A runs/ folder with the FAST SFT adapter, rankings and reward model, as the notebooks' ensure_* make them."""
    from rlhf_lab import pipeline

    root = tmp_path_factory.mktemp("quick-runs")
    pipeline.ensure_sft(root, fast=True)
    pipeline.ensure_rankings(root, fast=True)
    pipeline.ensure_reward_model(root, fast=True)
    return root


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[str(p.relative_to(ROOT / "notebooks")) for p in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(path, tmp_path, monkeypatch, request):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    # The kernel inherits this environment: FAST on, and a runs/ folder of its own: empty, so that the
    # notebook proves it can run without the earlier notebooks' results, or the quick models (see above).
    monkeypatch.setenv("RLHF_LAB_FAST", "1")
    monkeypatch.setenv("RLHF_LAB_RUNS", str(tmp_path / "runs"))
    if builds_on_the_quick_models(path):
        shutil.copytree(request.getfixturevalue("quick_runs"), tmp_path / "runs")
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


@pytest.mark.notebook
def test_runner_runs_in_the_runs_folder_it_is_given(tmp_path):
    """scripts/run_notebooks.py --runs DIR: the kernel's RLHF_LAB_RUNS is DIR (a re-run from nothing), the
    figures are saved in the notebook's metadata, and a folder already holding runs is named in a note."""
    import subprocess
    import sys

    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os\nfrom rlhf_lab import figures\nfigures.record(runs=os.environ['RLHF_LAB_RUNS'])")])
    path = tmp_path / "probe.ipynb"
    nbformat.write(nb, path)
    runs = tmp_path / "fresh"
    (runs / "04_ppo").mkdir(parents=True)
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_notebooks.py"), "--fast", "--runs", str(runs),
                          str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"{runs} already holds 04_ppo" in out.stdout
    meta = nbformat.read(path, as_version=4).metadata["rlhf_lab"]
    assert meta["figures"] == {"runs": str(runs)}
    assert meta["last_run"]["fast"] is True
