"""Checks for the classroom exercises, and a way to plug your own functions into the package.

    from rlhf_lab.checks import check_gae, plugged_in, require_passed
    ok = check_gae(gae)            # hand-made cases + random batches against the reference: a verdict
    require_passed(ok)             # stops a "Run all" here, with one line, until the check passes
    with plugged_in(gae=gae):      # the package's PPO loop now calls *your* gae
        result = train_ppo(cfg)

How a check works. Each exercise has a few small hand-made cases, each built so that one usual
mistake fails it, and random batches compared with the package's reference implementation
(rlhf_lab.sft, rlhf_lab.rankings, rlhf_lab.ppo_math). Every case is run; the verdict names the first
failing case, what was expected and what came back. The hint comes from the usual mistakes, which are
written out below as small wrong implementations: if the learner's function agrees with one of them
on every case (or, for a mistake that comes in many spellings such as whitening inside gae, shows its
tell-tale sign), the verdict names that mistake. Otherwise the failing case's own hint is given. Before
any of that, a function that returns a Python float, a NumPy array or a list where a tensor belongs is
told so: the values are not compared further, as no usual mistake can explain a wrong type.

Grading: `grade(path_or_namespace)` runs every check on a learner's notebook (its cells tagged
"exercise") or module and prints a score; from a shell:

    python -m rlhf_lab.checks notebooks/exercises/02_preferences.ipynb [--json scores.json]

It executes the learner's code in this process: grade untrusted submissions in a sandbox.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import pkgutil
import random
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from . import ppo_math, rankings, sft
from .utils import LabError

__all__ = [
    "CheckResult", "ExerciseNotReady", "EXERCISES",
    "check_completion_loss", "check_pairs_from_ranking", "check_pairwise_loss", "check_last_token_index",
    "check_kl_shaped_rewards", "check_gae", "check_policy_loss", "check_value_loss",
    "check_kl_controller", "plugged_in", "require_passed", "usual_mistake", "grade",
]

IGNORE = sft.IGNORE_INDEX  # -100: the label of tokens the SFT loss skips


# -----------------------------------------------------------------------------
# the verdict


@dataclass
class CheckResult:
    """What a check found. True in an `if` when every case passed."""

    exercise: int  # the exercise's number in notebooks/exercises
    name: str  # the function (or class) checked
    passed: bool
    n_cases: int = 0
    n_passed: int = 0
    failed_case: str | None = None  # the first failing case
    mistake: str | None = None  # tag of the usual mistake diagnosed, e.g. "mask_forgotten"
    hint: str = ""
    message: str = ""  # the verdict as printed

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        state = "passed" if self.passed else f"failed ({self.mistake or 'see the message'})"
        return f"CheckResult(exercise {self.exercise}, {self.name}: {state}, {self.n_passed}/{self.n_cases} cases)"


class ExerciseNotReady(LabError):
    """Raised by require_passed; Jupyter shows only its message, not a stack trace."""

    def _render_traceback_(self):  # IPython's hook for custom tracebacks
        return [f"\u2192 {self}"]


def require_passed(*results: CheckResult) -> None:
    """Stop here (one line, no stack trace) unless every given check passed.

    Put it before a training run that plugs in the learner's function: a half-written function would
    otherwise fail deep inside the training code. To watch a wrong version train anyway, skip this line.
    """
    for result in results:
        if not isinstance(result, CheckResult):
            raise ExerciseNotReady("require_passed wants the result of a check, e.g. ok = check_gae(gae); "
                                   "run the check cell above first.")
        if not result.passed:
            raise ExerciseNotReady(f"Exercise {result.exercise}: {result.name} does not pass its check yet "
                                   "(see the verdict above). Fix it, run its check cell again, then this cell.")


# -----------------------------------------------------------------------------
# cases, usual mistakes, and the runner


@dataclass
class Case:
    name: str  # what the case is about, as the learner reads it
    args: tuple  # positional arguments; tensors are cloned for every call
    kwargs: dict = field(default_factory=dict)
    hint: str = ""  # what usually makes this case fail
    mistake: str = "other"  # the tag of that usual mistake
    show: bool = True  # print the inputs when it fails (hand-made cases; random ones are too long)
    grad: tuple[int, ...] = ()  # positions of float inputs that get requires_grad: the output must keep a graph


@dataclass
class Mistake:
    tag: str  # e.g. "sign_flipped"; tests pin these
    hint: str
    fn: Callable  # a wrong implementation with the exercise's signature
    key: str = ""  # a name of its own, when several mistakes share a tag (usual_mistake finds it by either)
    # for a mistake with many spellings: looks_like(got, case) -> True (this output shows the mistake's
    # sign), False (it does not), None (this case cannot tell). The learner's function is diagnosed with
    # it when no case says False and at least two say True, even where it disagrees with fn.
    looks_like: Callable | None = None


def _clone(value, requires_grad: bool = False):
    if isinstance(value, torch.Tensor):
        out = value.detach().clone()
        return out.requires_grad_(True) if requires_grad and out.is_floating_point() else out
    return copy.deepcopy(value)


def _call_function(fn, case: Case):
    """fn(*args, **kwargs) on fresh copies; also says whether fn changed its inputs in place."""
    args = [_clone(a, i in case.grad) for i, a in enumerate(case.args)]
    kwargs = {k: _clone(v) for k, v in case.kwargs.items()}
    out = fn(*args, **kwargs)
    changed = [i for i, (a, b) in enumerate(zip(case.args, args))
               if isinstance(a, torch.Tensor) and not torch.equal(a, b.detach())]
    return out, changed


def _round(x, digits: int = 4):
    if isinstance(x, list):
        return [_round(v, digits) for v in x]
    if isinstance(x, float):
        return round(x, digits) if math.isfinite(x) else x
    return x


def _fmt(x) -> str:
    """A value as the learner should read it: short, rounded, lists rather than tensor reprs."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype == torch.bool:
            return str(x.int().tolist())
        if x.is_floating_point():
            return str(_round(x.tolist()))
        return str(x.tolist())
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, (list, tuple)) and x and all(isinstance(v, torch.Tensor) for v in x):
        return "(" + ", ".join(_fmt(v) for v in x) + ")"
    return repr(x)


def _run_check(exercise: int, name: str, fn, reference, cases: list[Case], mistakes: list[Mistake],
               compare: Callable, arg_names: list[str], call: Callable = _call_function,
               verbose: bool = True) -> CheckResult:
    """Run every case on fn and the reference, diagnose the usual mistake, print the verdict."""
    result = CheckResult(exercise, name, passed=False, n_cases=len(cases))
    title = f"Exercise {exercise} \u00b7 {name}"
    lines: list[str] = []

    def finish(message_lines):
        result.message = "\n".join(message_lines)
        if verbose:
            print(result.message)
        return result

    if not callable(fn):
        result.mistake, result.hint = "not_a_function", f"pass the function itself: check_...({name})"
        return finish([f"\u2717 {title}: expected a function, got {type(fn).__name__}. {result.hint}"])

    outcomes = []  # (case, ok, got, detail lines, error: the exception, "in place", or None)
    expected_outputs = []  # the reference's output on each case, in the same order
    for case in cases:
        expected, _ = call(reference, case)
        expected_outputs.append(expected)
        try:
            got, changed = call(fn, case)
        except NotImplementedError as e:
            result.mistake = "not_written"
            result.hint = f"Write the body of {name} where the exercise cell says, then run this check again."
            result.failed_case = case.name
            return finish([f"\u2717 {title}: not written yet ({e or 'NotImplementedError'}).", f"  {result.hint}"])
        except Exception as e:  # the learner's code may fail in any way; say how, on which case
            outcomes.append((case, False, None, [f"your {name} raised {type(e).__name__}: {e}"], e))
            continue
        if changed:
            names = ", ".join(arg_names[i] for i in changed)
            outcomes.append((case, False, got, [f"your {name} changed its input {names} in place; the training "
                                                "loop reuses that tensor afterwards."], "in place"))
            continue
        ok, detail = compare(expected, got, case)
        outcomes.append((case, ok, got, detail, None))

    result.n_passed = sum(ok for _, ok, _, _, _ in outcomes)
    failures = [o for o in outcomes if not o[1]]
    if not failures:
        result.passed = True
        return finish([f"\u2713 {title}: all {len(cases)} cases pass (hand-made cases, and random batches "
                       "against the package's reference). Well done: now plug it in below."])

    # a wrong type first: no usual mistake explains it, and the values cannot be compared
    wrong_type = next(((outcome, hint) for outcome, expected in zip(outcomes, expected_outputs)
                       if outcome[4] is None and (hint := _wrong_type_hint(expected, outcome[2], name))), None)
    diagnosed = None
    if wrong_type is None:
        # which usual mistake? one that gives the learner's outputs on every case, or shows its sign
        diagnosed = next((m for m in mistakes if _agrees(m, outcomes, call, compare) or _shows_sign(m, outcomes)),
                         None)

    case, _, got, detail, error = wrong_type[0] if wrong_type else failures[0]
    result.failed_case = case.name
    if wrong_type:
        result.mistake, result.hint = "not_a_tensor", wrong_type[1]
    elif diagnosed:
        result.mistake, result.hint = diagnosed.tag, diagnosed.hint
    elif error == "in place":
        result.mistake = "modified_input"
        result.hint = "work on a copy (x = x.clone(), or torch.where(mask, x, 0)) instead of changing x in place."
    elif error is not None:
        result.mistake = "error"
        result.hint = (f"Read the error above; {case.hint}" if case.hint else "Read the error above.")
    else:
        result.mistake, result.hint = case.mistake, case.hint
        if not result.hint:  # a case without a hint of its own, e.g. a random batch
            result.hint = ("none of the usual mistakes fits. Go through your code line by line against the "
                           "equation above, on this case" + (" (a random batch: several rows, different "
                                                             "lengths, padding)." if not case.show else "."))
    lines.append(f"\u2717 {title}: {result.n_passed} of {len(cases)} cases pass.")
    lines.append(f"  First failing case: {case.name}")
    if case.show:
        for arg_name, value in zip(arg_names, case.args):
            lines.append(f"    {arg_name} = {_fmt(value)}")
        for key, value in case.kwargs.items():
            lines.append(f"    {key} = {_fmt(value)}")
    lines += [f"    {d}" for d in detail]
    label = result.mistake.replace("_", " ") if result.mistake not in ("other", "error") else "hint"
    verdict = "Mistake" if wrong_type else "Likely mistake" if diagnosed else "Hint"
    lines.append(f"  {verdict} ({label}): {result.hint}")
    others = [c.name for c, *_ in failures if c is not case]
    if others:
        lines.append(f"  Also failing: {'; '.join(others)}")
    return finish(lines)


def _agrees(mistake: Mistake, outcomes: list, call: Callable, compare: Callable) -> bool:
    """Whether the mistake's wrong implementation gives the learner's outputs on every case (or raises
    where the learner's function raised)."""
    for case, _, got, _, error in outcomes:
        try:
            wrong, _ = call(mistake.fn, case)
        except Exception:
            if error is None:
                return False
        else:
            if error is not None or got is None or not compare(wrong, got, case)[0]:
                return False
    return True


def _shows_sign(mistake: Mistake, outcomes: list) -> bool:
    """Whether the learner's outputs show the mistake's tell-tale sign: no case contradicts it, and at
    least two cases show it."""
    if mistake.looks_like is None:
        return False
    verdicts = []
    for case, _, got, _, error in outcomes:
        if error is None and got is not None:
            try:
                verdicts.append(mistake.looks_like(got, case))
            except Exception:  # the learner's output may be anything
                verdicts.append(None)
    return False not in verdicts and verdicts.count(True) >= 2


def _wrong_type_hint(expected, got, name: str) -> str | None:
    """What to tell a learner whose function returned a Python number, a NumPy array or a list where the
    reference returns a tensor (or a tuple of tensors); None when the types are right."""
    if isinstance(expected, torch.Tensor):
        pairs = [(expected, got[0] if isinstance(got, tuple) and got else got)]  # (loss, stats) is fine
    elif (isinstance(expected, tuple) and all(isinstance(e, torch.Tensor) for e in expected)
          and isinstance(got, (tuple, list)) and len(got) == len(expected)):
        pairs = list(zip(expected, got))
    else:
        return None
    for e, g in pairs:
        if isinstance(g, torch.Tensor):
            continue
        if isinstance(g, (bool, int, float)):
            what, fix = f"a Python {type(g).__name__}", "drop the .item() (or float(...))"
        elif type(g).__module__ == "numpy":
            what = "a NumPy array" if type(g).__name__ == "ndarray" else "a NumPy number"
            fix = "compute with torch functions, without .numpy()"
        elif isinstance(g, (list, tuple)):
            what, fix = f"a Python {type(g).__name__}", "build it with torch functions (torch.stack, torch.where)"
        else:
            return None  # e.g. None: the comparison says what came back
        if e.dim() == 0:  # a loss
            need = "return the 0-d tensor so that gradients can flow (the training loop calls .backward() on it)"
        else:
            need = "return a tensor (the training loop indexes it and does tensor arithmetic with it)"
        try:
            right = _close(e, g)
        except Exception:
            right = False
        value = ("Its value is right: only the type is wrong." if right else
                 "Its value differs from the reference too: fix the type, then run the check again.")
        return f"your {name} returned {what}; {need}: {fix}. {value}"
    return None


# -----------------------------------------------------------------------------
# comparing outputs


def _as_float64(x) -> torch.Tensor:
    return torch.as_tensor(x).detach().to(torch.float64)


def _close(a, b, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    a, b = _as_float64(a), _as_float64(b)
    return a.shape == b.shape and bool(torch.isclose(a, b, atol=atol, rtol=rtol).all())  # inf == inf, nan != nan


def _compare_scalar(what: str, need_grad: bool = False):
    """A loss: a tensor with one number (0-d), equal to the reference's."""
    def compare(expected, got, case):
        if isinstance(got, tuple) and got and isinstance(got[0], torch.Tensor):
            got = got[0]  # (loss, stats), as the package's own losses return
        if not isinstance(got, torch.Tensor):
            return False, [f"expected {what} as a torch tensor (the training loop calls .backward() on it), "
                           f"got {type(got).__name__} {got!r:.60}"]
        if got.numel() != 1:
            return False, [f"expected {what} as one number (a 0-d tensor), got shape {tuple(got.shape)}: "
                           "did you forget to average?"]
        detail = [f"expected {what} {_fmt(expected.reshape(()))}", f"got {what}      {_fmt(got.reshape(()))}"]
        if not _close(expected.reshape(()), got.reshape(())):
            return False, detail
        if need_grad and case.grad and not got.requires_grad:
            return False, [f"{what} has the right value but no gradient: something in your function left "
                           "the graph (.item(), .detach(), .numpy(), torch.no_grad, or a new tensor built "
                           "from Python numbers)."]
        return True, detail
    return compare


def _compare_tensors(names: tuple[str, ...], mask_arg: int | None = None, integer: bool = False):
    """One tensor or a tuple of tensors, each equal to the reference's (on mask_arg's 1s, if given)."""
    def compare(expected, got, case):
        expected_t = expected if isinstance(expected, tuple) else (expected,)
        got_t = got if isinstance(got, tuple) else (got,)
        if isinstance(got, list) and len(names) > 1:
            got_t = tuple(got)
        if len(got_t) != len(expected_t):
            return False, [f"expected {len(expected_t)} outputs ({', '.join(names)}), got "
                           f"{len(got_t)}: return {', '.join(names)}"]
        detail = []
        ok = True
        for what, e, g in zip(names, expected_t, got_t):
            if not isinstance(g, torch.Tensor):
                return False, [f"expected {what} as a torch tensor, got {type(g).__name__}"]
            if tuple(g.shape) != tuple(e.shape):
                return False, [f"expected {what} of shape {tuple(e.shape)}, got shape {tuple(g.shape)}"]
            if integer and (g.is_floating_point() or g.dtype == torch.bool):
                return False, [f"expected {what} as integers (they index a tensor), got dtype {g.dtype}: "
                               "use .long()"]
            if mask_arg is not None:
                keep = case.args[mask_arg].bool()
                e_view = torch.where(keep, _as_float64(e), torch.zeros((), dtype=torch.float64))
                g_view = torch.where(keep, _as_float64(g), torch.zeros((), dtype=torch.float64))
            else:
                e_view, g_view = e, g
            this_ok = _close(e_view, g_view)
            ok &= this_ok
            if case.show:
                detail += [f"expected {what} {_fmt(e)}", f"got {what}      {_fmt(g)}"]
            elif not this_ok:
                diff = (_as_float64(e_view) - _as_float64(g_view)).abs()
                where = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0]) if diff.numel() else ()
                detail.append(f"{what}: max |expected - got| = {diff.max().item():.4g} at index {list(where)}")
        if mask_arg is not None and case.show:
            detail.append("(positions where the mask is 0 are not compared)")
        return ok, detail
    return compare


# =============================================================================
# Exercise 1: the completion-only SFT loss


def _sft_reference(logits, labels):
    return sft.completion_loss(logits, labels)


def _sft_no_shift(logits, labels):
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)


def _sft_shift_wrong_way(logits, labels):
    return F.cross_entropy(logits[:, 1:].flatten(0, 1), labels[:, :-1].flatten(), ignore_index=IGNORE)


def _sft_mask_forgotten(logits, labels):
    targets = labels[:, 1:].clamp(min=0)  # -100 made a valid id: prompt and padding now count
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten())


def _sft_mask_not_in_mean(logits, labels):
    losses = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE,
                             reduction="none")
    return losses.mean()  # zeros at the skipped positions, but they still count in the denominator


def _sft_mean_of_means(logits, labels):
    return sft.completion_loss(logits, labels, reduction="per_example").mean()


def _sft_sum(logits, labels):
    return sft.completion_loss(logits, labels, reduction="sum")


SFT_MISTAKES = [
    Mistake("off_by_one", "logits at position t predict the token at t + 1: compare logits[:, :-1] with "
            "labels[:, 1:]. Without the shift the model is taught to copy its input.", _sft_no_shift),
    Mistake("off_by_one", "the shift goes the other way: logits[:, :-1] (drop the last position) with "
            "labels[:, 1:] (drop the first).", _sft_shift_wrong_way),
    Mistake("mask_forgotten", "the prompt and padding tokens (label -100) must not count: keep only the "
            "positions where labels[:, 1:] != -100. Here they were counted as if -100 were a token.",
            _sft_mask_forgotten),
    Mistake("mask_not_in_mean", "the skipped positions are 0 in the sum but still counted in the mean: divide "
            "by the number of counted tokens, mask.sum(), not by B * (T - 1).", _sft_mask_not_in_mean),
    Mistake("mean_of_means", "average over all counted tokens of the batch, not per example and then over "
            "examples: a long completion has more tokens to learn from and should weigh more.",
            _sft_mean_of_means),
    Mistake("sum_not_mean", "take the mean over the counted tokens, not the sum: the loss must not grow "
            "with the batch.", _sft_sum),
]


def _sft_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1)
    V = 5

    def logits(B, T):
        return torch.randn(B, T, V, generator=g) * 2

    cases = [
        Case("one example, every token counted (no prompt, no padding)",
             (logits(1, 4), torch.tensor([[1, 3, 0, 2]])), mistake="off_by_one",
             hint="logits[:, t] predicts labels[:, t + 1]: shift by one."),
        Case("a 3-token prompt (label -100) before a 3-token completion",
             (logits(1, 6), torch.tensor([[IGNORE, IGNORE, IGNORE, 4, 1, 2]])), mistake="mask_forgotten",
             hint="positions whose label is -100 must not count, in the sum nor in the mean."),
        Case("right padding: two examples with completions of 4 and 2 tokens",
             (logits(2, 6), torch.tensor([[IGNORE, IGNORE, 0, 3, 3, 1], [IGNORE, 2, 4, IGNORE, IGNORE, IGNORE]])),
             mistake="mean_of_means", hint="average over all counted tokens of the batch."),
        Case("left padding (label -100 before the prompt)",
             (logits(2, 6), torch.tensor([[IGNORE, IGNORE, IGNORE, IGNORE, 1, 2], [IGNORE, IGNORE, 0, 1, 4, 4]])),
             mistake="mask_forgotten", hint="padding is -100 like the prompt; it must not count."),
        Case("the gradient reaches the logits", (logits(1, 5), torch.tensor([[IGNORE, 1, 2, 3, 0]])), grad=(0,),
             mistake="no_gradient", hint="keep the loss in the graph."),
    ]
    for seed in (11, 12):
        r = random.Random(seed)
        B, T = 3, 9
        labels = torch.full((B, T), IGNORE)
        for b in range(B):
            n = r.randint(3, T)
            prompt = r.randint(1, n - 1)
            labels[b, prompt:n] = torch.tensor([r.randrange(V) for _ in range(n - prompt)])
        cases.append(Case(f"random batch (seed {seed}) against the reference", (logits(B, T), labels), show=False))
    return cases


def check_completion_loss(fn, verbose: bool = True) -> CheckResult:
    """Exercise 1: completion_loss(logits (B, T, V), labels (B, T)) -> mean next-token cross-entropy
    over the tokens whose label is not -100 (the completion; prompt and padding are -100)."""
    return _run_check(1, "completion_loss", fn, _sft_reference, _sft_cases(), SFT_MISTAKES,
                      _compare_scalar("loss", need_grad=True), ["logits", "labels"],
                      verbose=verbose)


# =============================================================================
# Exercise 2a: rankings -> pairs


def _pairs_reversed(prompt, completions, ranking):
    return [{"prompt": p["prompt"], "chosen": p["rejected"], "rejected": p["chosen"]}
            for p in rankings.pairs_from_ranking(prompt, completions, ranking)]


def _pairs_indices_as_ranks(prompt, completions, ranking):
    order = sorted(range(len(ranking)), key=lambda i: ranking[i])  # ranking[i] read as the rank of completion i
    return rankings.pairs_from_ranking(prompt, completions, order)


def _pairs_adjacent(prompt, completions, ranking):
    texts = [completions[i] for i in ranking]
    return [{"prompt": prompt, "chosen": a, "rejected": b} for a, b in zip(texts, texts[1:]) if a != b]


def _pairs_best_vs_rest(prompt, completions, ranking):
    texts = [completions[i] for i in ranking]
    return [{"prompt": prompt, "chosen": texts[0], "rejected": t} for t in texts[1:] if t != texts[0]]


def _pairs_both_directions(prompt, completions, ranking):
    pairs = rankings.pairs_from_ranking(prompt, completions, ranking)
    return pairs + _pairs_reversed(prompt, completions, ranking)


def _pairs_identical_kept(prompt, completions, ranking):
    texts = [completions[i] for i in ranking]
    return [{"prompt": prompt, "chosen": texts[i], "rejected": texts[j]}
            for i in range(len(texts)) for j in range(i + 1, len(texts))]


PAIRS_MISTAKES = [
    Mistake("ranks_read_in_reverse", "the ranking lists completions best first: ranking[0] is the best, so "
            "it is 'chosen' against every later one. Your pairs prefer the worse text.", _pairs_reversed),
    Mistake("indices_read_as_ranks", "ranking holds indices into completions, best first (ranking[0] = the "
            "index of the best completion), not the rank of each completion.", _pairs_indices_as_ranks),
    Mistake("adjacent_pairs_only", "every completion beats *every* completion ranked below it, not only the "
            "next one: K(K-1)/2 pairs, not K - 1.", _pairs_adjacent),
    Mistake("best_vs_rest_only", "not only the best one: each completion beats every completion ranked below "
            "it, K(K-1)/2 pairs in all.", _pairs_best_vs_rest),
    Mistake("both_directions", "each pair once, best as 'chosen': (a, b) and (b, a) would cancel out in the "
            "loss.", _pairs_both_directions),
    Mistake("identical_pair_kept", "skip a pair whose two texts are equal (the model sampled the same text "
            "twice): it says nothing about which is better.", _pairs_identical_kept),
]


def _compare_pairs(expected, got, case):
    def key(pair):
        return pair["prompt"], pair["chosen"], pair["rejected"]

    if not isinstance(got, (list, tuple)) or not all(isinstance(p, dict) for p in got):
        return False, [f"expected a list of dicts with prompt, chosen and rejected, got {type(got).__name__}"]
    for p in got:
        missing = {"prompt", "chosen", "rejected"} - set(p)
        if missing:
            return False, [f"a pair lacks the keys {sorted(missing)}: each pair is "
                           "{'prompt': ..., 'chosen': ..., 'rejected': ...}"]
    show = lambda pairs: sorted(f"{p['chosen']!r} > {p['rejected']!r}" for p in pairs)  # noqa: E731
    detail = [f"expected {len(expected)} pair(s), chosen > rejected: {', '.join(show(expected))}",
              f"got {len(got)} pair(s):                     {', '.join(show(got))}"]
    return sorted(map(key, expected)) == sorted(map(key, got)), detail


def _pairs_cases() -> list[Case]:
    cases = [
        Case("K = 2: the second completion is ranked best", ("The film", ["was dull.", "was great."], [1, 0]),
             mistake="ranks_read_in_reverse", hint="ranking[0] is the index of the best completion."),
        Case("K = 3, ranking [2, 0, 1]: best is completion 2, then 0, then 1",
             ("It", [" was good.", " was bad.", " was superb."], [2, 0, 1]),
             mistake="indices_read_as_ranks", hint="ranking lists indices, best first."),
        Case("K = 4: every completion beats all those ranked below it (K(K-1)/2 = 6 pairs)",
             ("Plot:", [" a", " b", " c", " d"], [3, 1, 0, 2]), mistake="adjacent_pairs_only",
             hint="all K(K-1)/2 pairs."),
        Case("two identical completions: their pair is left out",
             ("Acting:", [" fine.", " fine.", " poor."], [0, 1, 2]), mistake="identical_pair_kept",
             hint="skip a pair whose chosen and rejected texts are equal."),
    ]
    for seed in (21, 22):
        r = random.Random(seed)
        K = 5
        ranking = list(range(K))
        r.shuffle(ranking)
        cases.append(Case(f"random ranking of K = {K} (seed {seed}) against the reference",
                          ("A review:", [f" text {i}" for i in range(K)], ranking)))
    return cases


def check_pairs_from_ranking(fn, verbose: bool = True) -> CheckResult:
    """Exercise 2: pairs_from_ranking(prompt, completions, ranking) -> all (chosen, rejected) pairs."""
    return _run_check(2, "pairs_from_ranking", fn, rankings.pairs_from_ranking, _pairs_cases(), PAIRS_MISTAKES,
                      _compare_pairs, ["prompt", "completions", "ranking"], verbose=verbose)


# =============================================================================
# Exercise 2b: the Bradley-Terry loss


PAIRWISE_MISTAKES = [
    Mistake("sign_flipped", "the loss is -log sigmoid(r_chosen - r_rejected): chosen minus rejected. Yours "
            "rewards the model for preferring the rejected text.",
            lambda c, r: -F.logsigmoid(r - c).mean()),
    Mistake("sign_flipped", "a minus sign is missing: the loss is -log sigmoid(margin), which is >= 0 and "
            "falls as the margin grows.", lambda c, r: F.logsigmoid(c - r).mean()),
    Mistake("sum_not_mean", "average over the pairs (.mean()), not the sum: the loss must not grow with the "
            "batch.", lambda c, r: -F.logsigmoid(c - r).sum()),
    Mistake("unstable_log_sigmoid", "log(sigmoid(x)) underflows to log(0) = -inf when x is very negative: "
            "use F.logsigmoid(x), which computes the same thing stably.",
            lambda c, r: -torch.log(torch.sigmoid(c - r)).mean()),
    Mistake("probability_not_log", "the loss is the negative *log* of sigmoid(margin), the log-likelihood "
            "of the label under Bradley-Terry.", lambda c, r: -torch.sigmoid(c - r).mean()),
    Mistake("probability_not_log", "the loss is -log sigmoid(margin), not 1 - sigmoid(margin).",
            lambda c, r: (1 - torch.sigmoid(c - r)).mean()),
    Mistake("hinge_loss", "that is a hinge (margin ranking) loss, max(0, 1 - margin), not Bradley-Terry: it is "
            "exactly 0, with no gradient, once the margin passes 1, and it is not the likelihood of the label. "
            "The Bradley-Terry loss is -log sigmoid(r_chosen - r_rejected), smooth everywhere: log 2 at margin "
            "0, falling towards 0 as the margin grows. Use F.logsigmoid on the margin.",
            lambda c, r: F.relu(1 - (c - r)).mean(), "hinge_margin_1"),
    Mistake("hinge_loss", "that is a hinge loss with margin 0, max(0, -margin) (F.margin_ranking_loss's "
            "default), not Bradley-Terry: every pair already in the right order costs 0 and teaches nothing. "
            "The Bradley-Terry loss is -log sigmoid(r_chosen - r_rejected): log 2 at margin 0, falling "
            "towards 0 as the margin grows. Use F.logsigmoid on the margin.",
            lambda c, r: F.relu(r - c).mean(), "hinge_margin_0"),
]


def _pairwise_cases() -> list[Case]:
    t = torch.tensor
    g = torch.Generator().manual_seed(3)
    return [
        Case("equal rewards: the model cannot tell (loss log 2)", (t([0.0]), t([0.0])), mistake="sign_flipped",
             hint="-log sigmoid(0) = log 2 = 0.6931."),
        Case("chosen scores 2 more than rejected (a small loss)", (t([2.0]), t([0.0])), mistake="sign_flipped",
             hint="-log sigmoid(r_chosen - r_rejected): chosen minus rejected."),
        Case("a batch of four pairs", (t([1.0, 0.0, 3.0, -1.0]), t([0.0, 0.5, 1.0, -2.0])),
             mistake="sum_not_mean", hint="the mean over the pairs."),
        Case("a very wrong pair: rejected scores 200 more", (t([-100.0]), t([100.0])),
             mistake="unstable_log_sigmoid", hint="use F.logsigmoid: the loss is 200, not inf."),
        Case("the gradient reaches both rewards", (t([0.5, -0.5]), t([0.0, 1.0])), grad=(0, 1),
             mistake="no_gradient", hint="keep the loss in the graph."),
        Case("random batch of 16 pairs against the reference",
             (torch.randn(16, generator=g) * 3, torch.randn(16, generator=g) * 3), show=False),
    ]


def check_pairwise_loss(fn, verbose: bool = True) -> CheckResult:
    """Exercise 2: pairwise_loss(chosen_rewards (N,), rejected_rewards (N,)) -> mean -log sigmoid(margin)."""
    return _run_check(2, "pairwise_loss", fn, ppo_math.pairwise_loss, _pairwise_cases(), PAIRWISE_MISTAKES,
                      _compare_scalar("loss", need_grad=True), ["chosen_rewards", "rejected_rewards"],
                      verbose=verbose)


# =============================================================================
# Exercise 3: the reward at the last non-pad token


def _last_always_final(mask):
    return torch.full((mask.shape[0],), mask.shape[1] - 1, dtype=torch.long)


LAST_TOKEN_MISTAKES = [
    Mistake("assumes_left_padding", "the last column is the last token only under left padding; with right "
            "padding it is a pad token. Find the position of the last 1 in each row.", _last_always_final),
    Mistake("assumes_right_padding", "mask.sum(-1) - 1 counts the real tokens: it is the index of the last one "
            "only when the padding is on the right. Under left padding, find the position of the last 1.",
            lambda mask: mask.long().sum(-1) - 1),
    Mistake("off_by_one", "indices start at 0: a row with n real tokens (right-padded) has its last at "
            "n - 1, not n. And in general: the position of the last 1.", lambda mask: mask.long().sum(-1)),
    Mistake("first_token", "argmax returns the *first* maximum, i.e. the first real token. You want the last "
            "one: e.g. the largest position where the mask is 1.", lambda mask: mask.long().argmax(-1)),
    Mistake("first_pad_minus_one", "'first 0 minus one' fails on rows without padding (argmin finds no 0 and "
            "returns 0) and under left padding. Take the largest position where the mask is 1.",
            lambda mask: mask.long().argmin(-1) - 1),
]


def _last_token_cases() -> list[Case]:
    t = torch.tensor
    cases = [
        Case("right padding (rows of 3, 5 and 1 real tokens)",
             (t([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]),), mistake="assumes_left_padding",
             hint="under right padding the last real token is followed by pads."),
        Case("left padding (as for generation)", (t([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]]),),
             mistake="assumes_right_padding", hint="under left padding the last real token is the last column."),
        Case("both sides: a left-padded prompt, then a right-padded response (as PPO scores them)",
             (t([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]]),), mistake="assumes_right_padding",
             hint="the position of the last 1, wherever the padding is."),
        Case("a bool mask", (t([[True, True, False], [True, True, True]]),), mistake="other",
             hint="the mask may be bool or integer: convert it first (mask.long() or mask.bool())."),
    ]
    for seed in (31, 32):
        r = random.Random(seed)
        B, T = 6, 10
        mask = torch.zeros(B, T, dtype=torch.long)
        for b in range(B):
            start = r.randint(0, 4)
            end = r.randint(start + 1, T)
            mask[b, start:end] = 1
        cases.append(Case(f"random padding on either side (seed {seed}) against the reference", (mask,)))
    return cases


def check_last_token_index(fn, verbose: bool = True) -> CheckResult:
    """Exercise 3: last_token_index(mask (B, T)) -> (B,) index of the last 1 (the last real token) per row."""
    return _run_check(3, "last_token_index", fn, ppo_math.last_token_index, _last_token_cases(), LAST_TOKEN_MISTAKES,
                      _compare_tensors(("index",), integer=True), ["mask"], verbose=verbose)


# =============================================================================
# Exercise 4: the KL-shaped per-token reward


def _kl_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, *, sign=-1.0, mask_kl=True, mask_rewards=True,
                position="last", add=True, reverse=False):
    """A configurable KL-shaped reward, to write out the usual mistakes."""
    maskb = mask.bool()
    kl = (ref_logprobs - logprobs) if reverse else (logprobs - ref_logprobs)
    kl_masked = torch.where(maskb, kl, torch.zeros_like(kl))
    kl_out = kl_masked if mask_kl else kl
    rewards = sign * kl_coef * (kl_masked if mask_rewards else kl)
    B, T = mask.shape
    last = ppo_math.last_token_index(maskb)
    rows = torch.arange(B)
    if position == "every":
        rewards = rewards + scores[:, None] * mask
    else:
        where = {"last": last, "final_column": torch.full_like(last, T - 1),
                 "after_last": (last + 1).clamp(max=T - 1)}[position]
        rewards = rewards.clone()
        if add:
            rewards[rows, where] += scores
        else:
            rewards[rows, where] = scores
    return rewards, kl_out


def _kl_reference(scores, logprobs, ref_logprobs, mask, kl_coef, kl_kind="k1"):
    return ppo_math.kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, kl_kind)


KL_MISTAKES = [
    Mistake("sign_flipped", "the KL is a *penalty*: reward_t = -kl_coef * (log pi - log pi_ref). With a plus "
            "the policy is paid to drift away from the reference.",
            lambda s, lp, rl, m, c, kl_kind="k1": _kl_rewards(s, lp, rl, m, c, sign=1.0)),
    Mistake("sign_flipped", "the per-token KL estimate is log pi(a_t) - log pi_ref(a_t) (policy minus "
            "reference); yours is the other way round.",
            lambda s, lp, rl, m, c, kl_kind="k1": _kl_rewards(s, lp, rl, m, c, reverse=True)),
    Mistake("kl_over_padding", "the tokens after EOS were never generated: set the KL (and the reward) to 0 "
            "where the mask is 0, or the KL summed per response counts padding.",
            lambda s, lp, rl, m, c, kl_kind="k1": _kl_rewards(s, lp, rl, m, c, mask_kl=False, mask_rewards=False)),
    Mistake("kl_over_padding", "the rewards are masked but the returned kl is not: PPO sums kl over each "
            "response to measure the KL (and the controller reads it), so padding must be 0 there too.",
            lambda s, lp, rl, m, c, kl_kind="k1": _kl_rewards(s, lp, rl, m, c, mask_kl=False)),
    Mistake("score_wrong_position", "the score goes on the *last response token* (the last 1 of the mask), "
            "not on the last column: with right padding that is a pad token.",
            lambda s, lp, rl, m, c, kl_kind="k1": _kl_rewards(s, lp, rl, m, c, position="final_column"),
            "score_in_last_column"),
    Mistake("score_wrong_position", "the score goes on the last response token itself, not one slot after it "
            "(TRL's removed PPOTrainer did that; it was reported as a bug).",
            lambda s, lp, rl, m, c, kl_kind="k1": _kl_rewards(s, lp, rl, m, c, position="after_last"),
            "score_after_last_token"),
    Mistake("score_on_every_token", "the score is given once per response, on its last token, not on every "
            "token.", lambda s, lp, rl, m, c, kl_kind="k1": _kl_rewards(s, lp, rl, m, c, position="every")),
    Mistake("score_replaces_penalty", "add the score to the last token's reward (+=): that token keeps its own "
            "KL penalty too.", lambda s, lp, rl, m, c, kl_kind="k1": _kl_rewards(s, lp, rl, m, c, add=False)),
    Mistake("kl_coef_missing", "multiply the KL by kl_coef (beta).",
            lambda s, lp, rl, m, c, kl_kind="k1": _kl_rewards(s, lp, rl, m, 1.0)),
]


def _kl_cases() -> list[Case]:
    t = torch.tensor
    g = torch.Generator().manual_seed(4)
    cases = [
        Case("one response of 3 tokens, no padding (kl_coef 0.1, score 2)",
             (t([2.0]), t([[-1.0, -2.0, -0.5]]), t([[-1.5, -1.0, -0.5]]), t([[1, 1, 1]]), 0.1),
             mistake="sign_flipped", hint="reward_t = -kl_coef * (logprobs_t - ref_logprobs_t), plus the score "
             "on the last token."),
        Case("right padding: the score goes on the last response token (index 1), not after it",
             (t([1.0]), t([[-1.0, -2.0, -3.0, -3.0]]), t([[-1.2, -2.0, -3.0, -3.0]]), t([[1, 1, 0, 0]]), 0.1),
             mistake="score_wrong_position", hint="the last 1 of the mask: ppo_math.last_token_index(mask)."),
        Case("padding holds leftover log-probs: KL and reward there must be 0",
             (t([0.5]), t([[-1.0, -1.0, -1.0, -4.0, -4.0]]), t([[-1.0, -1.5, -1.0, -0.5, -0.5]]),
              t([[1, 1, 1, 0, 0]]), 0.2),
             mistake="kl_over_padding", hint="zero the KL where the mask is 0."),
        Case("the last token keeps its KL penalty: the score is added to it",
             (t([1.0, -1.0]), t([[-1.0, -0.5], [-2.0, -1.0]]), t([[-1.0, -1.5], [-1.0, -2.0]]),
              t([[1, 1], [1, 1]]), 0.5),
             mistake="score_replaces_penalty", hint="rewards[last] += score."),
        Case("a batch of three lengths, bool mask, kl_coef 0.05",
             (t([1.0, 0.0, -2.0]), t([[-0.5, -1.0, -2.0], [-1.0, -0.1, -0.2], [-3.0, -1.0, -1.0]]),
              t([[-1.5, -1.0, -1.0], [-0.5, -0.1, -0.7], [-1.0, -1.0, -1.0]]),
              t([[True, True, True], [True, False, False], [True, True, False]]), 0.05, "k1")),
    ]
    for seed in (41, 42):
        r = random.Random(seed)
        B, T = 4, 8
        mask = torch.zeros(B, T, dtype=torch.long)
        for b in range(B):
            mask[b, :r.randint(1, T)] = 1
        cases.append(Case(f"random batch (seed {seed}) against the reference",
                          (torch.randn(B, generator=g), -torch.rand(B, T, generator=g) * 3,
                           -torch.rand(B, T, generator=g) * 3, mask, 0.1), show=False))
    return cases


def check_kl_shaped_rewards(fn, verbose: bool = True) -> CheckResult:
    """Exercise 4: kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, kl_coef) -> (rewards, kl), (B, T) each."""
    return _run_check(4, "kl_shaped_rewards", fn, _kl_reference, _kl_cases(), KL_MISTAKES,
                      _compare_tensors(("rewards", "kl")),
                      ["scores", "logprobs", "ref_logprobs", "mask", "kl_coef", "kl_kind"], verbose=verbose)


# =============================================================================
# Exercise 5: generalised advantage estimation


def _gae_variant(rewards, values, mask, gamma=1.0, lam=0.95, *, next_same=False, store_before=False,
                 forward=False, use_mask=True, add_values=True, delta_sign=1.0, lam_in_recursion=True,
                 whiten=False):
    """A configurable GAE, to write out the usual mistakes."""
    maskb = mask.bool()
    if use_mask:
        values = torch.where(maskb, values, torch.zeros_like(values))
        rewards = torch.where(maskb, rewards, torch.zeros_like(rewards))
    B, T = values.shape
    advantages = torch.zeros_like(values)
    lastgaelam = torch.zeros(B, dtype=values.dtype)
    steps = range(T) if forward else reversed(range(T))
    for t in steps:
        if next_same:
            nextvalues = values[:, t]
        else:
            nextvalues = values[:, t + 1] if t < T - 1 else torch.zeros(B, dtype=values.dtype)
        delta = delta_sign * (rewards[:, t] + gamma * nextvalues - values[:, t])
        if store_before:
            advantages[:, t] = lastgaelam
        lastgaelam = delta + gamma * (lam if lam_in_recursion else 1.0) * lastgaelam
        if use_mask:
            lastgaelam = torch.where(maskb[:, t], lastgaelam, torch.zeros_like(lastgaelam))
        if not store_before:
            advantages[:, t] = lastgaelam
    returns = advantages + values if add_values else advantages
    if whiten:  # the returns from the raw advantages, then the advantages whitened over the response tokens
        mean = ppo_math.masked_mean(advantages, maskb)
        std = ppo_math.masked_mean((advantages - mean) ** 2, maskb).sqrt()
        advantages = torch.where(maskb, (advantages - mean) / (std + 1e-8), torch.zeros_like(advantages))
    return advantages, returns


def _looks_whitened(got, case) -> bool | None:
    """Whether gae's advantages have mean 0 and standard deviation 1: over the response tokens, over each
    response, or over the whole (B, T) tensor. None where the case cannot tell (under 3 response tokens)."""
    mask = case.args[2].bool()
    if mask.sum() < 3:
        return None
    advantages = got[0].detach().to(torch.float64)

    def whitened(x):
        if x.numel() < 2:
            return False
        spread = [x.std(correction=0).item(), x.std().item()]  # biased or unbiased: either is whitening
        return abs(x.mean().item()) < 1e-3 and any(abs(sd - 1) < 0.02 for sd in spread)

    rows = [advantages[b][mask[b]] for b in range(mask.shape[0]) if mask[b].sum() >= 2]
    return whitened(advantages[mask]) or whitened(advantages.flatten()) or bool(rows and all(map(whitened, rows)))


GAE_MISTAKES = [
    Mistake("off_by_one", "delta_t = r_t + gamma * V(s_{t+1}) - V(s_t): the *next* value, values[:, t + 1] "
            "(0 after the last token). You used V(s_t) twice.",
            lambda r, v, m, gamma=1.0, lam=0.95: _gae_variant(r, v, m, gamma, lam, next_same=True)),
    Mistake("off_by_one", "each advantage is stored one step late: update lastgaelam = delta_t + gamma * lam * "
            "lastgaelam first, then store it as advantages[:, t].",
            lambda r, v, m, gamma=1.0, lam=0.95: _gae_variant(r, v, m, gamma, lam, store_before=True)),
    Mistake("wrong_direction", "GAE runs backwards in time, from the last token to the first: "
            "for t in reversed(range(T)).",
            lambda r, v, m, gamma=1.0, lam=0.95: _gae_variant(r, v, m, gamma, lam, forward=True)),
    Mistake("mask_forgotten", "the response ends at its last real token: the value after it is 0, and "
            "nothing flows back from the padding. Zero values and rewards where the mask is 0.",
            lambda r, v, m, gamma=1.0, lam=0.95: _gae_variant(r, v, m, gamma, lam, use_mask=False)),
    Mistake("returns_without_values", "returns = advantages + values: the value head's target is the return, "
            "not the advantage.",
            lambda r, v, m, gamma=1.0, lam=0.95: _gae_variant(r, v, m, gamma, lam, add_values=False)),
    Mistake("sign_flipped", "delta_t = r_t + gamma * V(s_{t+1}) - V(s_t): reward plus next value minus this "
            "value. Yours has the opposite sign.",
            lambda r, v, m, gamma=1.0, lam=0.95: _gae_variant(r, v, m, gamma, lam, delta_sign=-1.0)),
    Mistake("discount_wrong", "the recursion is A_t = delta_t + gamma * lam * A_{t+1}: both gamma and lam.",
            lambda r, v, m, gamma=1.0, lam=0.95: _gae_variant(r, v, m, gamma, lam, lam_in_recursion=False)),
    # whitening comes in many spellings (masked or not, per row, biased or not, returns before or after):
    # the sign of all of them is advantages with mean 0 and standard deviation 1
    Mistake("whitened_inside_gae", "your advantages are whitened (mean 0, std 1). gae returns the raw "
            "advantages: the PPO loop whitens them itself, per batch, right after gae (rlhf_lab.ppo calls "
            "masked_whiten(advantages, mask)), and the value head's target is returns = raw advantages + "
            "values. A one-token response has no spread to divide by at all. Take the normalisation out of "
            "gae.", lambda r, v, m, gamma=1.0, lam=0.95: _gae_variant(r, v, m, gamma, lam, whiten=True),
            looks_like=_looks_whitened),
]


def _gae_cases() -> list[Case]:
    t = torch.tensor
    g = torch.Generator().manual_seed(5)
    cases = [
        Case("one token: advantage = r - V, return = r", (t([[1.0]]), t([[0.25]]), t([[1]])),
             mistake="returns_without_values", hint="delta = r + 0 - V; returns = advantages + values."),
        Case("three tokens, gamma = lam = 1: advantage_t = (sum of rewards from t) - V(s_t)",
             (t([[0.0, 0.0, 1.0]]), t([[0.2, 0.5, 0.7]]), t([[1, 1, 1]])), {"gamma": 1.0, "lam": 1.0},
             mistake="off_by_one", hint="delta_t uses values[:, t + 1], and 0 after the last token."),
        Case("gamma = 0.9, lam = 0.8", (t([[1.0, 0.0, 2.0]]), t([[0.5, 1.0, 1.5]]), t([[1, 1, 1]])),
             {"gamma": 0.9, "lam": 0.8}, mistake="discount_wrong",
             hint="delta_t = r_t + gamma V(s_{t+1}) - V(s_t); A_t = delta_t + gamma lam A_{t+1}."),
        Case("padding after the last token holds junk values and rewards",
             (t([[0.0, 1.0, 9.0, 9.0]]), t([[0.5, 0.5, 7.0, 7.0]]), t([[1, 1, 0, 0]])),
             mistake="mask_forgotten", hint="the value after the last real token is 0."),
        Case("a batch of two lengths", (t([[0.1, -0.1, 0.5], [1.0, 2.0, 3.0]]), t([[0.0, 0.3, 0.2], [1.0, 0.5, 0.1]]),
                                        t([[1, 1, 1], [1, 0, 0]]))),
    ]
    for seed in (51, 52):
        r = random.Random(seed)
        B, T = 4, 9
        mask = torch.zeros(B, T, dtype=torch.long)
        for b in range(B):
            mask[b, :r.randint(1, T)] = 1
        cases.append(Case(f"random batch (seed {seed}), gamma 1, lam 0.95, against the reference",
                          (torch.randn(B, T, generator=g), torch.randn(B, T, generator=g), mask), show=False))
    return cases


def check_gae(fn, verbose: bool = True) -> CheckResult:
    """Exercise 5: gae(rewards, values, mask, gamma, lam) -> (advantages, returns), (B, T) each."""
    return _run_check(5, "gae", fn, ppo_math.gae, _gae_cases(), GAE_MISTAKES,
                      _compare_tensors(("advantages", "returns"), mask_arg=2), ["rewards", "values", "mask"],
                      verbose=verbose)


# =============================================================================
# Exercise 6: the clipped PPO losses


def _policy_variant(logprobs, old_logprobs, advantages, mask, clip_range=0.2, *, sign=-1.0, use_mask=True,
                    combine="max", clip="ratio", ratio_of_logprobs=False, per_sequence=False):
    ratio = logprobs / old_logprobs if ratio_of_logprobs else torch.exp(logprobs - old_logprobs)
    clipped = ratio
    if clip == "ratio":
        clipped = torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    elif clip == "around_zero":
        clipped = torch.clamp(ratio, -clip_range, clip_range)
    elif clip == "logratio":
        clipped = torch.exp(torch.clamp(logprobs - old_logprobs, -clip_range, clip_range))
    elif clip == "swapped":
        clipped = torch.clamp(ratio, 1 + clip_range, 1 - clip_range)
    losses1 = sign * advantages * ratio
    losses2 = sign * advantages * clipped
    if clip == "advantage":
        losses2 = sign * torch.clamp(advantages, -clip_range, clip_range) * ratio
    losses = {"max": torch.max(losses1, losses2), "min": torch.min(losses1, losses2), "none": losses1,
              "clipped_only": losses2}[combine]
    if not use_mask:
        return losses.mean()
    if per_sequence:
        return ppo_math.masked_mean(losses, mask, dim=1).mean()
    return ppo_math.masked_mean(losses, mask)


def _pv(**kw):
    return lambda lp, old, adv, m, clip_range=0.2: _policy_variant(lp, old, adv, m, clip_range, **kw)


POLICY_MISTAKES = [
    Mistake("sign_flipped", "the loss is the *negative* surrogate: -advantage * ratio. We minimise the loss to "
            "maximise the advantage-weighted ratio.", _pv(sign=1.0)),
    Mistake("mask_forgotten", "average over the response tokens only (the mask), e.g. ppo_math.masked_mean: "
            "padding after EOS is not part of any response.", _pv(use_mask=False)),
    Mistake("mean_of_means", "average over all response tokens of the batch at once (the masked sum divided "
            "by mask.sum()), not per response and then over responses: a per-response mean gives each token "
            "of a short response more weight than a token of a long one.", _pv(per_sequence=True)),
    Mistake("ratio_of_logprobs", "the ratio is of probabilities, pi / pi_old = exp(logprobs - old_logprobs): "
            "log-probabilities subtract where probabilities divide. logprobs / old_logprobs is 1 when the two "
            "are equal (so the ratio-1 cases pass) but is no probability ratio anywhere else.",
            _pv(ratio_of_logprobs=True)),
    Mistake("min_instead_of_max", "the loss takes the *max* of the two terms (-A * ratio and -A * clipped "
            "ratio): the pessimistic bound, PPO eq. 7 with the sign flipped for a loss. min is the "
            "optimistic one and removes the clip's brake.", _pv(combine="min")),
    Mistake("no_clipping", "clip the ratio to [1 - clip_range, 1 + clip_range] and take the max of the "
            "clipped and unclipped losses.", _pv(combine="none")),
    Mistake("clipped_only", "keep both terms and take their max: the clip only removes the incentive to move "
            "further; when the ratio moved the unfavourable way, the unclipped term wins.",
            _pv(combine="clipped_only")),
    Mistake("clip_wrong_way", "clip the *ratio* around 1: torch.clamp(ratio, 1 - clip_range, 1 + clip_range). "
            "Clamping it to [-clip_range, clip_range] clips around 0.", _pv(clip="around_zero")),
    Mistake("clip_wrong_way", "clip the ratio itself to [1 - eps, 1 + eps], not the log-ratio to [-eps, eps] "
            "(exp(0.2) = 1.22, not 1.2).", _pv(clip="logratio")),
    Mistake("clip_wrong_way", "torch.clamp(ratio, min, max) takes the lower bound first: "
            "(1 - clip_range, 1 + clip_range).", _pv(clip="swapped")),
    Mistake("clip_wrong_way", "clip the ratio, not the advantage.", _pv(clip="advantage")),
]


def _policy_cases() -> list[Case]:
    t = torch.tensor
    g = torch.Generator().manual_seed(6)
    old = t([[-1.0, -2.0, -0.5]])
    old2 = t([[-1.0, -2.0, -0.5], [-0.3, -1.2, -0.8]])

    def lp(*ratios, base=None):
        base = old if base is None else base
        return base + torch.log(t([list(ratios)]))

    cases = [
        Case("ratio = 1 (first minibatch): loss = -mean(advantages)", (old.clone(), old, t([[1.0, -2.0, 0.5]]),
                                                                        t([[1, 1, 1]])),
             mistake="sign_flipped", hint="loss = -advantage * ratio, averaged."),
        Case("padding with large advantages is left out", (old.clone(), old, t([[1.0, 0.5, 50.0]]), t([[1, 1, 0]])),
             mistake="mask_forgotten", hint="average over the mask's 1s only."),
        Case("responses of 1 and 3 tokens: every token weighs the same (loss -5 / 4)",
             (old2.clone(), old2, t([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), t([[1, 0, 0], [1, 1, 1]])),
             mistake="mean_of_means", hint="sum over all response tokens of the batch, divided by mask.sum()."),
        Case("ratio 1.5 with a positive advantage: the clip binds (loss -1.2, not -1.5)",
             (lp(1.5, base=t([[-1.0]])), t([[-1.0]]), t([[1.0]]), t([[1]])), mistake="no_clipping",
             hint="max(-A * ratio, -A * clamp(ratio, 0.8, 1.2))."),
        Case("ratio 0.5 with a positive advantage: the unclipped term is the pessimistic one",
             (lp(0.5, base=t([[-1.0]])), t([[-1.0]]), t([[1.0]]), t([[1]])), mistake="min_instead_of_max",
             hint="the max of the two loss terms."),
        Case("ratio 0.5 with a negative advantage: the clip binds below",
             (lp(0.5, base=t([[-1.0]])), t([[-1.0]]), t([[-1.0]]), t([[1]])), mistake="clip_wrong_way",
             hint="clamp(ratio, 1 - clip_range, 1 + clip_range)."),
        Case("ratio 1.1 inside the clip range, clip_range 0.3", (lp(1.1, base=t([[-1.0]])), t([[-1.0]]), t([[2.0]]),
                                                                 t([[1]])), {"clip_range": 0.3},
             mistake="clip_wrong_way", hint="inside [1 - eps, 1 + eps] nothing is clipped."),
        Case("the gradient reaches the log-probs", (lp(1.1, 0.9, 1.3), old, t([[1.0, -1.0, 0.5]]), t([[1, 1, 1]])),
             grad=(0,), mistake="no_gradient", hint="keep the loss in the graph."),
    ]
    for seed in (61, 62):
        r = random.Random(seed)
        B, T = 4, 7
        mask = torch.zeros(B, T, dtype=torch.long)
        for b in range(B):
            mask[b, :r.randint(1, T)] = 1
        old_r = -torch.rand(B, T, generator=g) * 3
        cases.append(Case(f"random batch (seed {seed}) against the reference",
                          (old_r + torch.randn(B, T, generator=g) * 0.3, old_r, torch.randn(B, T, generator=g), mask),
                          show=False))
    return cases


def _policy_reference(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    return ppo_math.policy_loss(logprobs, old_logprobs, advantages, mask, clip_range)[0]


def check_policy_loss(fn, verbose: bool = True) -> CheckResult:
    """Exercise 6: policy_loss(logprobs, old_logprobs, advantages, mask, clip_range) -> the clipped loss
    (a 0-d tensor; (loss, stats) as the package returns is fine too)."""
    return _run_check(6, "policy_loss", fn, _policy_reference, _policy_cases(), POLICY_MISTAKES,
                      _compare_scalar("loss", need_grad=True), ["logprobs", "old_logprobs", "advantages", "mask"],
                      verbose=verbose)


def _value_variant(values, old_values, returns, mask, clip_range_value=0.2, *, use_mask=True, combine="max",
                   clip="old", half=True, per_sequence=False):
    center = {"old": old_values, "returns": returns, "zero": torch.zeros_like(old_values)}[clip]
    clipped = center + torch.clamp(values - center, -clip_range_value, clip_range_value)
    losses1 = (values - returns) ** 2
    losses2 = (clipped - returns) ** 2
    losses = {"max": torch.max(losses1, losses2), "min": torch.min(losses1, losses2), "none": losses1,
              "clipped_only": losses2}[combine]
    if per_sequence:
        loss = ppo_math.masked_mean(losses, mask, dim=1).mean()
    else:
        loss = ppo_math.masked_mean(losses, mask) if use_mask else losses.mean()
    return 0.5 * loss if half else loss


def _vv(**kw):
    return lambda v, old, ret, m, clip_range_value=0.2: _value_variant(v, old, ret, m, clip_range_value, **kw)


VALUE_MISTAKES = [
    Mistake("mask_forgotten", "average over the response tokens only (the mask): padding has no return.",
            _vv(use_mask=False)),
    Mistake("mean_of_means", "average over all response tokens of the batch at once (the masked sum divided "
            "by mask.sum()), not per response and then over responses: a per-response mean gives each token "
            "of a short response more weight than a token of a long one.", _vv(per_sequence=True)),
    Mistake("min_instead_of_max", "take the *max* of the clipped and unclipped squared errors (pessimistic, as "
            "for the policy): min lets the value jump past the clip.", _vv(combine="min")),
    Mistake("no_clipping", "the value may move at most clip_range_value from its rollout value: "
            "values_clipped = old_values + clamp(values - old_values, -eps, eps), and the max of both errors. "
            "(Clipping around the returns instead never binds: it is the same as no clipping.)",
            _vv(combine="none")),
    Mistake("clipped_only", "keep both squared errors and take their max.", _vv(combine="clipped_only")),
    Mistake("clip_wrong_way", "clip the *change* of the value (values - old_values), not the value itself: "
            "clamp(values, -eps, eps) clips around 0.", _vv(clip="zero")),
    Mistake("missing_half", "the loss is 0.5 * mean(max(...)) (lm-human-preferences' vf_loss), which makes its "
            "gradient (V - R).", _vv(half=False)),
]


def _value_cases() -> list[Case]:
    t = torch.tensor
    g = torch.Generator().manual_seed(7)
    cases = [
        Case("values equal to the old values: 0.5 * mean squared error",
             (t([[0.5, 1.0]]), t([[0.5, 1.0]]), t([[1.0, 0.0]]), t([[1, 1]])), mistake="missing_half",
             hint="0.5 * mean((values - returns) ** 2)."),
        Case("padding with large errors is left out", (t([[0.5, 1.0, 9.0]]), t([[0.5, 1.0, 9.0]]),
                                                        t([[1.0, 0.0, -9.0]]), t([[1, 1, 0]])),
             mistake="mask_forgotten", hint="average over the mask's 1s only."),
        Case("responses of 1 and 3 tokens: every token weighs the same (loss 0.5 * 1.75 / 4)",
             (t([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), t([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
              t([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]), t([[1, 0, 0], [1, 1, 1]])),
             mistake="mean_of_means", hint="sum over all response tokens of the batch, divided by mask.sum()."),
        Case("the value moved 0.5 away from the return: the unclipped error wins",
             (t([[0.5]]), t([[0.0]]), t([[0.0]]), t([[1]])), mistake="min_instead_of_max",
             hint="max of the two squared errors."),
        Case("the value moved 0.5 towards the return: the clipped error wins",
             (t([[0.5]]), t([[0.0]]), t([[1.0]]), t([[1]])), mistake="no_clipping",
             hint="values_clipped = old_values + clamp(values - old_values, -eps, eps)."),
        Case("old value 1, new 1.3, return 2: clip around the old value",
             (t([[1.3]]), t([[1.0]]), t([[2.0]]), t([[1]])), mistake="clip_wrong_way",
             hint="clip around old_values."),
        Case("the gradient reaches the values", (t([[0.3, 1.5]]), t([[0.0, 1.0]]), t([[1.0, 1.0]]), t([[1, 1]])),
             grad=(0,), mistake="no_gradient", hint="keep the loss in the graph."),
    ]
    for seed in (71, 72):
        r = random.Random(seed)
        B, T = 4, 7
        mask = torch.zeros(B, T, dtype=torch.long)
        for b in range(B):
            mask[b, :r.randint(1, T)] = 1
        old_v = torch.randn(B, T, generator=g)
        cases.append(Case(f"random batch (seed {seed}) against the reference",
                          (old_v + torch.randn(B, T, generator=g) * 0.4, old_v, torch.randn(B, T, generator=g), mask),
                          show=False))
    return cases


def _value_reference(values, old_values, returns, mask, clip_range_value=0.2):
    return ppo_math.value_loss(values, old_values, returns, mask, clip_range_value)[0]


def check_value_loss(fn, verbose: bool = True) -> CheckResult:
    """Exercise 6: value_loss(values, old_values, returns, mask, clip_range_value) -> the clipped value loss."""
    return _run_check(6, "value_loss", fn, _value_reference, _value_cases(), VALUE_MISTAKES,
                      _compare_scalar("loss", need_grad=True), ["values", "old_values", "returns", "mask"],
                      verbose=verbose)


# =============================================================================
# Exercise 7: the adaptive KL controller


def _call_controller(cls, case: Case):
    """cls(init_kl_coef, target, horizon), then update(kl, n_steps) for each update; beta after each."""
    (init, target, horizon), updates = case.args
    controller = cls(init, target, horizon)
    values = [float(controller.value)]
    for kl, n in updates:
        controller.update(kl, n)
        values.append(float(controller.value))
    return torch.tensor(values, dtype=torch.float64), []


def _controller_class(*, sign=1.0, clip="error", inverted=False, use_steps=True, use_horizon=True,
                      additive=False):
    """A configurable adaptive KL controller, to write out the usual mistakes."""
    class Controller:
        def __init__(self, init_kl_coef, target, horizon):
            self.value, self.target, self.horizon = float(init_kl_coef), float(target), float(horizon)

        def update(self, current_kl, n_steps):
            if clip == "kl":  # the KL clipped instead of the error
                error = min(max(current_kl, -0.2), 0.2) / self.target - 1
            else:
                error = (self.target / current_kl - 1) if inverted else (current_kl / self.target - 1)
                if clip == "error":
                    error = min(max(error, -0.2), 0.2)
                elif clip == "around_one":
                    error = min(max(error, 0.8), 1.2)
            step = error * (n_steps if use_steps else 1) / (self.horizon if use_horizon else 1)
            if additive:
                self.value += sign * step
            else:
                self.value *= 1 + sign * step
            return self.value
    return Controller


KL_CONTROLLER_MISTAKES = [
    Mistake("sign_flipped", "too much KL must make beta *larger* (a stronger brake): "
            "beta *= 1 + error * n_steps / horizon with error = KL / target - 1.", _controller_class(sign=-1.0)),
    Mistake("ratio_inverted", "the error is KL / target - 1 (positive when the KL is too high), not target / KL - 1.",
            _controller_class(inverted=True)),
    Mistake("no_clipping", "clip the proportional error to [-0.2, 0.2] so one noisy batch cannot swing beta "
            "(Ziegler et al. 2019, section 2.2).", _controller_class(clip="none")),
    Mistake("clip_wrong_way", "clip the proportional *error* KL / target - 1 to [-0.2, 0.2], not the KL itself.",
            _controller_class(clip="kl")),
    Mistake("clip_wrong_way", "the error is clipped around 0, to [-0.2, 0.2]: it is a relative error (0 when the "
            "KL is on target), not a ratio around 1.", _controller_class(clip="around_one")),
    Mistake("step_size", "the step scales with n_steps / horizon: a 20 % error moves beta by 20 % over one "
            "horizon of episodes.", _controller_class(use_steps=False)),
    Mistake("step_size", "divide by the horizon: beta *= 1 + error * n_steps / horizon.",
            _controller_class(use_horizon=False)),
    Mistake("additive", "the update is multiplicative: beta *= 1 + error * n_steps / horizon.",
            _controller_class(additive=True)),
]


def _kl_controller_cases() -> list[Case]:
    return [
        Case("KL on target: beta stays 0.1", ((0.1, 6.0, 10000), [(6.0, 64)]), mistake="other",
             hint="error = KL / target - 1 = 0 here."),
        Case("KL 10 % too high, 1,000 episodes of a 10,000 horizon: beta x 1.01",
             ((0.1, 6.0, 10000), [(6.6, 1000)]), mistake="sign_flipped",
             hint="beta *= 1 + (KL / target - 1) * n_steps / horizon."),
        Case("KL 10 times the target: the error is clipped to +20 %", ((0.1, 6.0, 10000), [(60.0, 1000)]),
             mistake="no_clipping", hint="error clipped to [-0.2, 0.2]."),
        Case("KL a tenth of the target: the error is clipped to -20 %", ((0.1, 6.0, 10000), [(0.6, 1000)]),
             mistake="clip_wrong_way", hint="error clipped to [-0.2, 0.2]."),
        Case("the step scales with n_steps / horizon (64 episodes, horizon 640)",
             ((0.15, 6.0, 640), [(6.6, 64), (6.6, 64)]), mistake="step_size", hint="n_steps / horizon."),
        Case("several updates compound",
             ((0.2, 2.0, 2000), [(3.0, 500), (2.2, 500), (0.5, 500), (2.0, 500), (4.0, 250)]),
             mistake="additive", hint="each update multiplies beta."),
    ]


def check_kl_controller(cls, verbose: bool = True) -> CheckResult:
    """Exercise 7: a class AdaptiveKLController(init_kl_coef, target, horizon) with .value and
    .update(current_kl, n_steps)."""
    return _run_check(7, "AdaptiveKLController", cls, ppo_math.AdaptiveKLController, _kl_controller_cases(),
                      KL_CONTROLLER_MISTAKES, _compare_tensors(("beta after each update",)),
                      ["(init_kl_coef, target, horizon)", "updates [(current_kl, n_steps), ...]"],
                      call=_call_controller,
                      verbose=verbose)


# =============================================================================
# plugging the learner's functions into the package


PLUGGABLE = {  # name -> the module that defines the reference
    "completion_loss": "rlhf_lab.sft",
    "pairs_from_ranking": "rlhf_lab.rankings",
    "pairwise_loss": "rlhf_lab.ppo_math",
    "last_token_index": "rlhf_lab.ppo_math",
    "kl_shaped_rewards": "rlhf_lab.ppo_math",
    "gae": "rlhf_lab.ppo_math",
    "policy_loss": "rlhf_lab.ppo_math",
    "value_loss": "rlhf_lab.ppo_math",
    "AdaptiveKLController": "rlhf_lab.ppo_math",
}


def _adapt_completion_loss(mine, reference):
    def completion_loss(logits, labels, reduction="mean"):
        if reduction == "mean":
            return mine(logits, labels)  # the training loss: yours
        # evaluation (sum, per_example) keeps the package's ruler, so the held-out loss is measured
        # the same way whatever the training loss does
        return reference(logits, labels, reduction=reduction)
    return completion_loss


def _adapt_loss_with_stats(mine, reference):
    def loss_with_stats(*args, **kwargs):
        out = mine(*args, **kwargs)
        loss, own_stats = (out if isinstance(out, tuple) else (out, {}))
        with torch.no_grad():  # the diagnostics the trainer logs (clipfrac, approx_kl, ...) come from the reference
            _, stats = reference(*[a.detach() if isinstance(a, torch.Tensor) else a for a in args], **kwargs)
        return loss, stats | dict(own_stats)
    return loss_with_stats


def _adapt_last_token_index(mine, reference):
    def last_token_index(mask):
        return torch.as_tensor(mine(mask)).long()
    return last_token_index


_ADAPTERS = {"completion_loss": _adapt_completion_loss, "policy_loss": _adapt_loss_with_stats,
             "value_loss": _adapt_loss_with_stats, "last_token_index": _adapt_last_token_index}


def _package_modules() -> list:
    """Every imported rlhf_lab module (after importing them all, so that each has bound its names)."""
    import rlhf_lab

    for info in pkgutil.iter_modules(rlhf_lab.__path__):
        name = f"rlhf_lab.{info.name}"
        if name not in sys.modules and name != __name__:
            try:
                importlib.import_module(name)
            except ImportError:  # an optional dependency missing (e.g. a widget library): that module cannot run anyway
                pass
    return [m for n, m in sorted(sys.modules.items())
            if m is not None and (n == "rlhf_lab" or n.startswith("rlhf_lab."))]


@contextmanager
def plugged_in(**functions):
    """Temporarily make the package call your functions instead of its reference implementations.

        with plugged_in(gae=my_gae, policy_loss=my_policy_loss) as where:
            train_ppo(cfg)          # rlhf_lab.ppo's loop calls my_gae and my_policy_loss
        # here everything is as before, also after an error inside the block

    Every rlhf_lab module that bound the reference (e.g. both rlhf_lab.ppo_math.gae and rlhf_lab.ppo.gae,
    since ppo.py did `from .ppo_math import gae`) is patched. `where` maps each name to those modules.
    A few names get a thin adapter so that a learner's simpler function fits the training code:
    completion_loss trains with yours but evaluates with the reference's reductions; policy_loss and
    value_loss may return the loss alone (the logged diagnostics come from the reference);
    last_token_index's output is made integer.
    """
    modules = _package_modules()
    patched: list[tuple[Any, str, Any]] = []  # (module, name, original)
    wrappers: dict[str, tuple[Any, Any]] = {}  # name -> (wrapper, original)
    where: dict[str, list[str]] = {}
    try:
        for name, mine in functions.items():
            if name not in PLUGGABLE:
                raise LabError(f"plugged_in does not know {name!r}; it can plug in {', '.join(PLUGGABLE)}.")
            if not callable(mine):
                raise LabError(f"plugged_in({name}=...) needs a function (or a class), got {type(mine).__name__}.")
            original = getattr(sys.modules[PLUGGABLE[name]], name)
            wrapper = _ADAPTERS[name](mine, original) if name in _ADAPTERS else mine
            if wrapper is not mine:
                wrapper.__wrapped__ = mine
                wrapper.__name__ = getattr(mine, "__name__", name)
            wrappers[name] = (wrapper, original)
            where[name] = []
            for module in modules:
                if getattr(module, name, None) is original:
                    setattr(module, name, wrapper)
                    patched.append((module, name, original))
                    where[name].append(module.__name__)
        yield where
    finally:
        for module, name, original in reversed(patched):
            setattr(module, name, original)
        # a module first imported inside the block bound the wrapper: point it back too
        for module in _package_modules():
            for name, (wrapper, original) in wrappers.items():
                if getattr(module, name, None) is wrapper:
                    setattr(module, name, original)


# =============================================================================
# the exercises, and grading


@dataclass(frozen=True)
class Exercise:
    number: int
    name: str  # the function or class the learner writes
    check: Callable[..., CheckResult]
    notebook: str  # notebooks/exercises/<notebook>.ipynb
    mistakes: tuple[Mistake, ...] = ()  # the usual mistakes the check diagnoses
    cases: Callable[[], list[Case]] | None = None  # the check's cases


EXERCISES = [
    Exercise(1, "completion_loss", check_completion_loss, "01_sft_loss", tuple(SFT_MISTAKES), _sft_cases),
    Exercise(2, "pairs_from_ranking", check_pairs_from_ranking, "02_preferences", tuple(PAIRS_MISTAKES),
             _pairs_cases),
    Exercise(2, "pairwise_loss", check_pairwise_loss, "02_preferences", tuple(PAIRWISE_MISTAKES), _pairwise_cases),
    Exercise(3, "last_token_index", check_last_token_index, "02_preferences", tuple(LAST_TOKEN_MISTAKES),
             _last_token_cases),
    Exercise(4, "kl_shaped_rewards", check_kl_shaped_rewards, "03_rewards_advantages", tuple(KL_MISTAKES),
             _kl_cases),
    Exercise(5, "gae", check_gae, "03_rewards_advantages", tuple(GAE_MISTAKES), _gae_cases),
    Exercise(6, "policy_loss", check_policy_loss, "04_ppo_update", tuple(POLICY_MISTAKES), _policy_cases),
    Exercise(6, "value_loss", check_value_loss, "04_ppo_update", tuple(VALUE_MISTAKES), _value_cases),
    Exercise(7, "AdaptiveKLController", check_kl_controller, "04_ppo_update", tuple(KL_CONTROLLER_MISTAKES),
             _kl_controller_cases),
]


def usual_mistake(name: str, tag: str) -> Callable:
    """A wrong implementation of exercise `name` making the usual mistake `tag` (or key), e.g. to watch
    what it does to training: usual_mistake("completion_loss", "off_by_one"). The first one that fits."""
    by_name = {e.name: e for e in EXERCISES}
    if name not in by_name:
        raise LabError(f"no exercise is called {name!r}; the exercises are {list(by_name)}.")
    mistakes = by_name[name].mistakes
    for mistake in sorted(mistakes, key=lambda m: m.key != tag):  # an exact key first, then the tag
        if tag in (mistake.key, mistake.tag):
            return mistake.fn
    known = sorted({m.tag for m in mistakes} | {m.key for m in mistakes if m.key})
    raise LabError(f"{name} has no usual mistake {tag!r}; it has {known}.")


def exercise_namespace(path: str | Path) -> tuple[dict, list[str]]:
    """Run a notebook's cells tagged "exercise" (the learner's functions) in a fresh namespace.

    Returns (namespace, errors): a cell that fails to run is reported, and the others still run.
    Only those cells run (not the training cells), so grading a notebook takes seconds.
    """
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    namespace: dict = {"__name__": "__exercises__"}
    errors = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code" or "exercise" not in cell.get("metadata", {}).get("tags", []):
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        source = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
        try:
            exec(compile(source, f"{path} (cell {i})", "exec"), namespace)  # the learner's code, by design
        except Exception as e:
            errors.append(f"cell {i}: {type(e).__name__}: {e}")
    return namespace, errors


@dataclass
class GradeReport:
    source: str
    results: dict[str, CheckResult | None]  # None: the function is missing
    errors: list[str] = field(default_factory=list)

    @property
    def score(self) -> int:
        return sum(bool(r) for r in self.results.values())

    @property
    def total(self) -> int:
        return len(self.results)

    def rows(self) -> list[dict]:
        by_name = {e.name: e for e in EXERCISES}
        return [{"exercise": by_name[n].number, "function": n,
                 "passed": bool(r), "cases": f"{r.n_passed}/{r.n_cases}" if r is not None else "-",
                 "mistake": (r.mistake or "") if r is not None else "missing"} for n, r in self.results.items()]

    def __str__(self) -> str:
        lines = [f"{self.source}: {self.score} / {self.total}"]
        for row in self.rows():
            mark = "\u2713" if row["passed"] else "\u2717"
            lines.append(f"  {mark} {row['exercise']}  {row['function']:<22}{row['cases']:>7}  {row['mistake']}")
        lines += [f"  ! {e}" for e in self.errors]
        return "\n".join(lines)


def grade(source, names: list[str] | None = None, verbose: bool = False) -> GradeReport:
    """Run the checks on a learner's work and score it: one point per function that passes.

    source: a notebook path (its "exercise" cells are run; the exercises of that notebook count),
            a module, or a dict (a namespace, e.g. globals()).
    names:  the functions to grade (default: the notebook's exercises, or every exercise found).
    """
    errors: list[str] = []
    label = str(source)
    if isinstance(source, (str, Path)) and str(source).endswith(".ipynb"):
        namespace, errors = exercise_namespace(source)
        stem = Path(source).stem
        if names is None:
            names = [e.name for e in EXERCISES if e.notebook == stem] or None
    elif isinstance(source, dict):
        namespace, label = source, "namespace"
    else:
        namespace, label = vars(source), getattr(source, "__name__", repr(source))
    if names is None:
        names = [e.name for e in EXERCISES if e.name in namespace]
    by_name = {e.name: e for e in EXERCISES}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise LabError(f"no exercise is called {unknown}; the exercises are {[e.name for e in EXERCISES]}.")
    results = {}
    for name in names:
        fn = namespace.get(name)
        results[name] = by_name[name].check(fn, verbose=verbose) if fn is not None else None
    return GradeReport(label, results, errors)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rlhf_lab.checks",
                                     description="Grade learners' exercise notebooks: one point per function "
                                                 "that passes its check. Runs their code: use a sandbox.")
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="also write the scores as JSON (for a gradebook)")
    parser.add_argument("--verbose", action="store_true", help="print each check's full verdict")
    args = parser.parse_args(argv)
    reports = []
    for path in args.notebooks:
        report = grade(path, verbose=args.verbose)
        print(report)
        reports.append({"notebook": str(path), "score": report.score, "total": report.total,
                        "rows": report.rows(), "errors": report.errors})
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
