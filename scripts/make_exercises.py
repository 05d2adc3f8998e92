"""Write the learners' exercise notebooks from the solution notebooks (one source, two versions).

    python scripts/make_exercises.py            # notebooks/exercises/solutions/*.ipynb -> notebooks/exercises/
    python scripts/make_exercises.py --check    # exit 1 if a committed learner notebook is out of date

The solution notebooks are the source: edit those, run this script, commit both. In a code cell, the
lines between `# BEGIN SOLUTION` and `# END SOLUTION` (markers included) become a stub at the same
indentation:

    # Exercise 5: write gae here (the solution has 14 lines), then run the check below.
    raise NotImplementedError("Exercise 5: gae is not written yet")

A cell tagged "solution" is left out altogether (e.g. a teacher's note). Outputs, execution counts and
the run metadata are cleared: a learner opens a notebook with nothing filled in and nothing run.
tests/test_exercises.py fails when a committed learner notebook differs from what this script makes.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "notebooks" / "exercises" / "solutions"
LEARNERS = ROOT / "notebooks" / "exercises"
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
# the exercise number of each function or class the learner writes (rlhf_lab.checks.EXERCISES; kept
# here so that this script needs no torch)
NUMBERS = {"completion_loss": 1, "pairs_from_ranking": 2, "pairwise_loss": 2, "last_token_index": 3,
           "kl_shaped_rewards": 4, "gae": 5, "policy_loss": 6, "value_loss": 6, "AdaptiveKLController": 7}


class SolutionMarkerError(ValueError):
    pass


def _enclosing_name(lines: list[str], index: int) -> str:
    """The function (or Class.method) the line at `index` belongs to, from the nearest def/class above."""
    indent = len(lines[index]) - len(lines[index].lstrip())
    names = []
    for line in reversed(lines[:index]):
        stripped = line.lstrip()
        this_indent = len(line) - len(stripped)
        match = re.match(r"(?:async\s+)?(def|class)\s+(\w+)", stripped)
        if match and this_indent < indent:
            names.append(match.group(2))
            indent = this_indent
            if this_indent == 0:
                break
    return ".".join(reversed(names)) or "this exercise"


def _is_code(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def strip_solutions(source: str, where: str = "cell") -> tuple[str, list[list[str]]]:
    """(learner source, solution blocks): each BEGIN/END block replaced by a stub."""
    lines = source.split("\n")
    out, blocks = [], []
    i = 0
    while i < len(lines):
        if lines[i].strip().startswith(BEGIN):
            try:
                end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(END))
            except StopIteration:
                raise SolutionMarkerError(f"{where}: '{BEGIN}' on line {i + 1} has no '{END}' after it.") from None
            block = lines[i + 1:end]
            if any(line.strip().startswith(BEGIN) for line in block):
                raise SolutionMarkerError(f"{where}: a second '{BEGIN}' inside the block of line {i + 1}.")
            indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
            name = _enclosing_name(lines, i)
            number = NUMBERS.get(name.split(".")[0])
            label = f"Exercise {number}" if number else "Exercise"
            n_lines = sum(_is_code(line) for line in block)
            out.append(f"{indent}# {label}: write {name} here (the solution has {n_lines} lines), "
                       "then run the check below.")
            out.append(f'{indent}raise NotImplementedError("{label}: {name} is not written yet")')
            blocks.append(block)
            i = end + 1
            continue
        if lines[i].strip().startswith(END):
            raise SolutionMarkerError(f"{where}: '{END}' on line {i + 1} without a '{BEGIN}' before it.")
        out.append(lines[i])
        i += 1
    return "\n".join(out), blocks


def learner_version(nb: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """The learner's notebook: solution blocks stubbed, "solution" cells dropped, no outputs."""
    nb = copy.deepcopy(nb)
    cells = []
    for n, cell in enumerate(nb.cells):
        tags = cell.get("metadata", {}).get("tags", [])
        if "solution" in tags:
            continue
        if cell.cell_type == "code":
            cell.source, _ = strip_solutions(cell.source, f"{name}, cell {n}")
            cell.outputs = []
            cell.execution_count = None
        elif BEGIN in cell.source:
            raise SolutionMarkerError(f"{name}, cell {n}: solution markers work in code cells only; tag a "
                                      "markdown cell 'solution' to leave it out of the learner's version.")
        cells.append(cell)
    nb.cells = cells
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("rlhf_lab", None)  # last_run: the learner's version has not been run
    nb.metadata["rlhf_lab"] = {"generated_by": "scripts/make_exercises.py",
                               "source": f"solutions/{name}"}
    return nb


def solution_blocks(nb: nbformat.NotebookNode) -> list[list[str]]:
    """Every solution block of a notebook, as lists of lines."""
    blocks = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            blocks += strip_solutions(cell.source)[1]
    return blocks


def pairs(paths: list[Path] | None = None) -> list[tuple[Path, Path]]:
    """(solution notebook, learner notebook) for each solution notebook."""
    paths = paths or sorted(SOLUTIONS.glob("*.ipynb"))
    return [(p, LEARNERS / p.name) for p in paths]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("solutions", nargs="*", type=Path, help="solution notebooks (default: all)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a learner notebook is stale")
    args = parser.parse_args(argv)
    stale = []
    for solution, learner in pairs(args.solutions or None):
        made = learner_version(nbformat.read(solution, as_version=4), solution.name)
        if args.check:
            current = nbformat.read(learner, as_version=4) if learner.exists() else None
            if current is None or [(c.cell_type, c.source) for c in current.cells] != \
                    [(c.cell_type, c.source) for c in made.cells]:
                stale.append(learner)
            continue
        nbformat.write(made, learner)
        print(f"{solution.relative_to(ROOT)} -> {learner.relative_to(ROOT)}")
    if stale:
        print("out of date (run python scripts/make_exercises.py):", *[str(p.relative_to(ROOT)) for p in stale],
              sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
