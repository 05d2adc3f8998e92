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

Before each check cell (`ok_gae = check_gae(gae)`) the learner's version gets a markdown cell, tagged
"hint", of collapsible hints in the style of ARENA's exercises: first a nudge, then a stronger hint,
never the solution. They are written in HINTS below, one entry per check; a check cell without hints
is an error, so that a new exercise cannot ship without them.
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


class MissingHintsError(ValueError):
    pass


CHECK_CALL = re.compile(r"^\s*(?:\w+\s*=\s*)?(check_\w+)\(", re.MULTILINE)  # ok_gae = check_gae(gae)

# -----------------------------------------------------------------------------
# the hints shown before each check: (a nudge, a stronger hint). Markdown; never a line of the solution
# (tests/test_exercises.py looks for solution lines in the learner's notebook, hints included).

HINTS = {
    "check_completion_loss": (
        "Shift first, then mask. After `logits[:, :-1]` and `labels[:, 1:]`, position `t` of the one lines "
        "up with position `t` of the other. Then: the log-probability of each target token, and a mean over "
        "the positions whose target is not `-100`, and over nothing else.",
        "`torch.log_softmax(..., dim=-1)` gives `(B, T-1, V)`; `gather` along the last dimension with the "
        "targets (`unsqueeze(-1)`, then `squeeze(-1)`) picks one log-probability per position, `(B, T-1)`. "
        "`gather` cannot look up `-100`: replace it by any valid id first (`clamp(min=0)`), as the mask drops "
        "those positions anyway. Divide the masked sum by the *number of counted tokens*, not by "
        "`B * (T - 1)`, and keep the result a tensor: no `.item()`.",
    ),
    "check_pairs_from_ranking": (
        "First write the completions out in the ranking's order, best first. Each text then beats every text "
        "that comes *after* it in that list.",
        "`ranking[0]` is the *index* of the best completion, not a rank. Two loops, `i` over the positions and "
        "`j` over the positions after `i`, give each pair once with the better text as `chosen`: K(K-1)/2 "
        "pairs. Skip a pair whose two texts are equal.",
    ),
    "check_pairwise_loss": (
        "Only the margin `chosen_rewards - rejected_rewards` matters. The loss is the negative log of the "
        "probability Bradley-Terry gives the label, averaged over the pairs: a smooth curve, not a hinge "
        "like `max(0, 1 - margin)`.",
        "`F.logsigmoid(x)` is log sigmoid(x), computed stably (`torch.log(torch.sigmoid(x))` gives `-inf` for "
        "a very negative `x`). Apply it to the margin, negate, and average over the N pairs; return the "
        "tensor, without `.item()`.",
    ),
    "check_last_token_index": (
        "Ask *where is the last 1 of each row?* rather than *how many 1s are there?*: a count finds the last "
        "token only when all the padding is on the right.",
        "Make a `(B, T)` tensor of positions `0 .. T-1` (`torch.arange` and `expand`), keep a position where "
        "the mask is 1 and put `-1` where it is 0 (`torch.where`), and take the largest per row. Convert the "
        "mask with `.bool()` first (it may be int or bool), and return integers.",
    ),
    "check_kl_shaped_rewards": (
        "Two steps. The penalty on every token, `-kl_coef * kl`, with `kl` set to 0 on padding; then each "
        "row's score *added* at one position: its last response token.",
        "`torch.where(mask.bool(), ..., 0.0)` zeroes the padding. `last_token_index(mask)` gives the `(B,)` "
        "positions; `rewards[torch.arange(B), last]` picks one entry per row, and `+=` adds the scores there "
        "while that token keeps its own penalty. Return the masked `kl` too: PPO sums it per response.",
    ),
    "check_gae": (
        "Loop backwards, `for t in reversed(range(T))`, carrying one `(B,)` tensor: the advantage of the step "
        "after `t` (0 to begin with). Return the raw advantages: the PPO loop whitens them itself, after "
        "`gae`.",
        "Zero the values and rewards on padding first, so that the value after the last real token is 0. At "
        "each `t`: the TD error uses `values[:, t + 1]` (0 when `t = T - 1`) and `values[:, t]`; the advantage "
        "is that error plus `gamma * lam` times the carried one, set to 0 where `mask[:, t]` is 0 so nothing "
        "flows back through padding. Store it in `advantages[:, t]`; the returns are advantages plus values.",
    ),
    "check_policy_loss": (
        "Three pieces: the probability ratio, the two loss terms (unclipped and clipped), and their "
        "per-token max averaged over the response tokens. The ratio is of *probabilities*, and you hold "
        "*log*-probabilities: they subtract where probabilities divide.",
        "The ratio is `exp` of the difference of log-probabilities, never `logprobs / old_logprobs`. Clip it "
        "with `torch.clamp(ratio, 1 - clip_range, 1 + clip_range)`. The loss of a token is the `torch.max` of "
        "`-advantages` times each ratio (a loss, so PPO's min becomes a max). Average over every response "
        "token of the batch at once: the masked sum divided by the number of 1s in the mask, not a mean per "
        "response.",
    ),
    "check_value_loss": (
        "Clip the *change* of the value since the rollout, `values - old_values`, and add it back to "
        "`old_values`; then compare both the clipped and the unclipped value with the returns.",
        "`torch.clamp(values - old_values, -clip_range_value, clip_range_value)`. Take the per-token max of "
        "the two squared errors, average over every response token of the batch (the masked sum divided by "
        "the number of 1s in the mask), and halve it.",
    ),
    "check_kl_controller": (
        "`update` only changes `self.value`. The error is relative: 0 when the KL is on target, positive when "
        "it is too high, and a KL that is too high must make beta *larger*.",
        "Clip the error `current_kl / target - 1` to `[-0.2, 0.2]` (Python's `min` and `max` will do: these "
        "are floats), then *multiply* beta by `1 + error * n_steps / horizon`.",
    ),
}


def hint_cell(check: str) -> nbformat.NotebookNode:
    """The markdown cell of collapsible hints shown before the cell that runs `check`."""
    if check not in HINTS:
        raise MissingHintsError(f"a cell runs {check}, which has no hints: add them to HINTS in "
                                "scripts/make_exercises.py.")
    blocks = [f"<details>\n<summary>{summary}</summary>\n\n{text}\n</details>"  # blank line: markdown inside
              for summary, text in zip(("Hint 1: a nudge", "Hint 2: closer to the answer"), HINTS[check])]
    cell = nbformat.v4.new_markdown_cell("Stuck? Open a hint, one at a time.\n\n" + "\n\n".join(blocks),
                                         metadata={"tags": ["hint"]})
    cell.id = f"hint-{check}"  # the same id at every regeneration: no churn in the committed notebook
    return cell



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
    """The learner's notebook: solution blocks stubbed, "solution" cells dropped, hints before each check,
    no outputs."""
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
            cell.metadata.pop("execution", None)  # the solution run's timestamps
            check = CHECK_CALL.search(cell.source)
            if check:
                cells.append(hint_cell(check.group(1)))
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
