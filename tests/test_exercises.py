"""notebooks/exercises: one source (the solution notebooks), two versions (scripts/make_exercises.py).

The learners' notebooks must be what the script makes from the solutions, hold no solution code and no
outputs; the solution notebooks follow the repository's conventions and carry a full run's outputs.
(tests/test_notebooks.py executes the solution notebooks in FAST mode.)
"""

import importlib.util
from pathlib import Path

import nbformat
import pytest

from rlhf_lab import checks

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "notebooks" / "exercises" / "solutions").glob("*.ipynb"))


def load_script():
    spec = importlib.util.spec_from_file_location("make_exercises", ROOT / "scripts" / "make_exercises.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make = load_script()
IDS = [p.stem for p in SOLUTIONS]


def learner_path(solution: Path) -> Path:
    return ROOT / "notebooks" / "exercises" / solution.name


def test_there_are_solution_notebooks_for_every_exercise():
    assert len(SOLUTIONS) >= 3
    assert {e.notebook for e in checks.EXERCISES} == {p.stem for p in SOLUTIONS}


# -----------------------------------------------------------------------------
# the learners' versions


@pytest.mark.parametrize("solution", SOLUTIONS, ids=IDS)
def test_learner_version_is_up_to_date(solution):
    learner = learner_path(solution)
    assert learner.exists(), f"{learner} is missing: run python scripts/make_exercises.py"
    made = make.learner_version(nbformat.read(solution, as_version=4), solution.name)
    committed = nbformat.read(learner, as_version=4)
    assert [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in committed.cells] == \
        [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in made.cells], \
        f"{learner.name} is out of date with solutions/{solution.name}: run python scripts/make_exercises.py"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=IDS)
def test_learner_version_holds_no_solution_code_and_no_outputs(solution):
    solution_nb = nbformat.read(solution, as_version=4)
    learner_nb = nbformat.read(learner_path(solution), as_version=4)
    learner_text = "\n".join(c.source for c in learner_nb.cells)
    assert make.BEGIN not in learner_text and make.END not in learner_text

    def count(lines, line):
        return sum(candidate.strip() == line for candidate in lines)

    # a solution line may appear in the learner's notebook only as often as it appears in the solution
    # notebook outside the solution blocks (e.g. `import torch`)
    blocks = make.solution_blocks(solution_nb)
    assert blocks, f"{solution.name} has no solution blocks"
    outside = "\n".join(make.strip_solutions(c.source)[0] for c in solution_nb.cells).split("\n")
    learner_lines = learner_text.split("\n")
    for block in blocks:
        for line in (line.strip() for line in block):
            if line and not line.startswith("#"):
                assert count(learner_lines, line) <= count(outside, line), f"solution line leaked: {line!r}"
    stubs = learner_text.count("raise NotImplementedError(")
    assert stubs == len(blocks)
    for cell in learner_nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    assert "last_run" not in learner_nb.metadata.get("rlhf_lab", {})
    assert "widgets" not in learner_nb.metadata


@pytest.mark.parametrize("solution", SOLUTIONS, ids=IDS)
def test_learners_get_not_written_from_every_check_and_the_solutions_pass_them_all(solution, capsys):
    unfilled = checks.grade(learner_path(solution))
    assert unfilled.total >= 1 and unfilled.score == 0 and not unfilled.errors
    assert all(r["mistake"] == "not_written" for r in unfilled.rows())
    solved = checks.grade(solution)
    assert solved.score == solved.total == unfilled.total and not solved.errors


@pytest.mark.parametrize("solution", SOLUTIONS, ids=IDS)
def test_every_check_cell_has_collapsible_hints_before_it(solution):
    cells = nbformat.read(learner_path(solution), as_version=4).cells
    checked = []
    for before, cell in zip(cells, cells[1:]):
        match = make.CHECK_CALL.search(cell.source) if cell.cell_type == "code" else None
        if not match:
            continue
        checked.append(match.group(1))
        assert before.cell_type == "markdown" and before.metadata.get("tags") == ["hint"], \
            f"no hint cell before {cell.source!r}"
        n = before.source.count("<details>")
        assert 1 <= n <= 2 and before.source.count("</details>") == n
        assert before.source.count("<summary>Hint") == n
    assert sorted(checked) == sorted({e.check.__name__ for e in checks.EXERCISES if e.notebook == solution.stem})


def test_every_check_has_hints_and_a_check_without_them_is_an_error():
    assert set(make.HINTS) == {e.check.__name__ for e in checks.EXERCISES}
    assert all(len(hints) == 2 and all(hints) for hints in make.HINTS.values())
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("ok = check_something_new(f)")])
    with pytest.raises(make.MissingHintsError, match="check_something_new"):
        make.learner_version(nb)


def test_the_check_command_agrees():
    assert make.main(["--check"]) == 0


# -----------------------------------------------------------------------------
# the script itself


def test_strip_solutions_keeps_the_indentation_and_names_the_function():
    source = ("def gae(rewards, values, mask):\n"
              "    \"\"\"doc\"\"\"\n"
              "    # BEGIN SOLUTION\n"
              "    x = 1\n"
              "\n"
              "    # a comment\n"
              "    return x\n"
              "    # END SOLUTION\n"
              "print('after')")
    out, blocks = make.strip_solutions(source)
    assert out.split("\n") == [
        "def gae(rewards, values, mask):",
        "    \"\"\"doc\"\"\"",
        "    # Exercise 5: write gae here (the solution has 2 lines), then run the check below.",
        "    raise NotImplementedError(\"Exercise 5: gae is not written yet\")",
        "print('after')",
    ]
    assert blocks == [["    x = 1", "", "    # a comment", "    return x"]]
    method = ("class AdaptiveKLController:\n    def update(self):\n"
              "        # BEGIN SOLUTION\n        pass\n        # END SOLUTION\n")
    assert "Exercise 7: write AdaptiveKLController.update here" in make.strip_solutions(method)[0]


@pytest.mark.parametrize("source", ["x = 1\n# BEGIN SOLUTION\ny = 2\n", "# END SOLUTION\n",
                                    "# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION\n"])
def test_unmatched_markers_are_an_error(source):
    with pytest.raises(make.SolutionMarkerError):
        make.strip_solutions(source, "test cell")


def test_cells_tagged_solution_are_left_out_and_outputs_cleared():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("a teacher's note", metadata={"tags": ["solution"]}),
        nbformat.v4.new_code_cell("print(1)", outputs=[nbformat.v4.new_output("stream", text="1\n")],
                                  execution_count=3),
    ])
    nb.metadata["rlhf_lab"] = {"last_run": {"fast": False, "seconds": 1.0}}
    made = make.learner_version(nb, "x.ipynb")
    assert [c.source for c in made.cells] == ["print(1)"]
    assert made.cells[0].outputs == [] and made.cells[0].execution_count is None
    assert made.metadata["rlhf_lab"] == {"generated_by": "scripts/make_exercises.py", "source": "solutions/x.ipynb"}
    with pytest.raises(make.SolutionMarkerError):
        make.learner_version(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# BEGIN SOLUTION")]))


# -----------------------------------------------------------------------------
# the solution notebooks: conventions and committed outputs


@pytest.mark.parametrize("solution", SOLUTIONS, ids=IDS)
def test_solution_notebook_has_the_parameters_cell_then_fast_mode(solution):
    nb = nbformat.read(solution, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    i = tagged[0]
    assert code[i].source.split("\n")[0].startswith("FAST = False")
    assert "FAST = fast_mode(FAST)" in [line.strip() for line in code[i + 1].source.split("\n")]


@pytest.mark.parametrize("solution", SOLUTIONS, ids=IDS)
def test_solution_notebook_carries_a_full_runs_outputs(solution):
    nb = nbformat.read(solution, as_version=4)
    assert nb.metadata.get("rlhf_lab", {}).get("last_run", {}).get("fast") is False, \
        f"run python scripts/run_notebooks.py {solution.relative_to(ROOT)} (full mode)"
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "a plot of the metric"
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    exercises = [e for e in checks.EXERCISES if e.notebook == solution.stem]
    assert text.count("\u2713 Exercise") == len(exercises)  # each check's verdict, passed
    assert "\u2717" not in text


@pytest.mark.parametrize("solution", SOLUTIONS, ids=IDS)
def test_every_exercise_cell_is_tagged_and_holds_one_solution(solution):
    nb = nbformat.read(solution, as_version=4)
    for cell in nb.cells:
        has_block = cell.cell_type == "code" and make.BEGIN in cell.source
        assert has_block == ("exercise" in cell.metadata.get("tags", [])), cell.source[:80]
    names = {e.name for e in checks.EXERCISES if e.notebook == solution.stem}
    namespace, errors = checks.exercise_namespace(solution)
    assert not errors and names <= set(namespace)


def test_the_teachers_guide_names_every_notebook_and_exercise():
    guide = (ROOT / "notebooks" / "exercises" / "README.md").read_text()
    for path in SOLUTIONS:
        assert path.name in guide
    for exercise in checks.EXERCISES:
        assert exercise.name in guide and exercise.check.__name__ in guide
    assert "python -m rlhf_lab.checks" in guide
