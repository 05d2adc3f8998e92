"""The install promise: pyproject.toml, environment.yml, the README and .ci/run agree."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def environment_pip_section() -> list[str]:
    """The pip entries of environment.yml (read by hand: a plain list, the way a reader sees it)."""
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    return [line.strip()[2:].strip() for line in lines[start + 1:] if line.strip().startswith("- ")]


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    project = pyproject()["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    pip = environment_pip_section()
    assert "-e .[dev]" in pip, "environment.yml must install the lab itself through its pip section"
    listed = [p for p in pip if not p.startswith("-e")]
    assert sorted(_name(p) for p in listed) == sorted(_name(p) for p in wanted)
    # and with the same version constraints, so the two environments cannot drift apart
    assert sorted(listed) == sorted(r.split("#")[0].strip() for r in wanted)


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    install = 'pip install -e ".[dev]"'
    assert install in readme and install in ci
    assert re.search(r"^pytest$", ci, re.M), ".ci/run must run the README's test command: pytest"
    assert re.search(r"^pytest$", readme, re.M)
    assert "pip install torch==2.13.0" in ci  # the CPU build on disk; a plain `torch` pulls CUDA


def test_every_notebook_has_a_parameters_cell_with_fast_false():
    import json
    for path in sorted((ROOT / "notebooks").rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts:
            continue
        cells = json.loads(path.read_text())["cells"]
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
        assert re.search(r"^FAST = False", "".join(tagged[0]["source"]), re.M), path.name


def test_model_and_ppo_modules_do_not_import_datasets():
    """datasets brings pandas and pyarrow (~80 MiB of memory): loading a model, a reward model or a
    PPO trainer given its prompts must not pay for it; loading data does."""
    import subprocess
    import sys

    code = ("import sys, rlhf_lab.ppo, rlhf_lab.loading, rlhf_lab.reward_model, rlhf_lab.sft\n"
            "from rlhf_lab.loading import load_model\n"
            "load_model('tiny', device='cpu')\n"
            "print('datasets' in sys.modules, 'pandas' in sys.modules)\n"
            "from rlhf_lab.loading import load_prompts\n"
            "print(len(load_prompts('tiny', 'validation')), 'datasets' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "256", "True"]
