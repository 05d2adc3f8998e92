"""A class as annotators: every learner scores and ranks the same samples, then sees the class's agreement.

The seed's reason for rankings (InstructGPT; "Illustrating RLHF") is about people: annotators give the
same text different scores (one a 6, another a 4), while their rankings agree far more. Simulated
annotators can only show it by construction; a classroom is a room full of real annotators.

    item_set = make_item_set(model, tokenizer)        # N prompts x K samples, seeded; save_item_set(...)
    session = learner_session(item_set, "ada", folder) # the learner's two blocks: score, rank (or rank, score)
    labels = read_class_files(["collected/"])          # every learner's file; bad lines reported, never fatal
    result = agreement(labels)                         # alpha, Kendall's W, exact matches, pair agreement
    rlhf-lab class merge collected/*.jsonl             # the same from the command line

The design: **every learner scores every text and ranks every prompt's K texts, in counterbalanced
order** (half the class scores first, half ranks first: `first_task`, from the learner's name). Both
tasks on the same items, because the comparison that matters is like with like: the pairwise order
agreement of the rankings against the order the *same people's* scores imply on the *same pairs*;
split items (half scored, half ranked) would mix the task's effect with the items' (some prompts are
near-ties, others are easy) and halve the data for each. Counterbalanced, because the first task
colours the second (having scored a text, one may just rank by those scores): the order is balanced
across the class, and `agreement(labels, first="score")` measures each half on its own. The scores are
asked one text at a time in an order that spreads each prompt's samples apart, so that scoring is an
absolute judgement and not a hidden ranking.

The statistics come from the `krippendorff` package (Castro, "Fast Krippendorff", on PyPI), which
tests/test_classroom.py pins to Krippendorff's (2011) worked example: alpha on the scores at the
interval level, on the rankings at the ordinal level (each text's place 1..K within its prompt).
Kendall's W and pairwise order agreement are a few lines each, written here.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import random
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from .gold import gold_score
from .utils import LabError, read_json, short_path

# scores.py (and through it rankings.py and datasets, ~80 MiB) is imported where it is used: the command
# line builds this module's parser for every command, and most never need it.

ITEM_SET_KIND = "rlhf-lab class item set"
CLASS_DIR = "08_classroom"  # runs/08_classroom: the notebook's item set, learners' files, simulated class
N_PROMPTS = 8  # 8 prompts x K = 4: 32 texts to score (~6 s each) and 8 rankings (~25 s each), about
# 8 minutes of a 15-minute slot; the rest is handing out, merging and looking at the result
K = 4  # samples per prompt, as notebook 02 ranks (InstructGPT: 4 to 9)
TASKS = ("score", "rank")
SCALE = (1, 7)  # scores.SCALE: a 7-point scale, as InstructGPT's labelers rated each output


# -----------------------------------------------------------------------------
# the item set: one file for the whole class


def _fingerprint(body: dict) -> str:
    text = json.dumps([body["items"], body["score_order"], body["scale"]], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def spread_order(n_prompts: int, k: int, seed: int) -> list[tuple[int, int]]:
    """(prompt index, sample index) pairs in the order to score them: round r scores one sample of every
    prompt, so the K samples of a prompt are never next to each other (a learner would compare them)."""
    rng = random.Random(seed)
    per_prompt = [rng.sample(range(k), k) for _ in range(n_prompts)]  # which sample comes in which round
    order: list[tuple[int, int]] = []
    for r in range(k):
        prompts = rng.sample(range(n_prompts), n_prompts)
        if order and n_prompts > 1 and prompts[0] == order[-1][0]:
            prompts.append(prompts.pop(0))  # not the last prompt of the previous round again
        order += [(i, per_prompt[i][r]) for i in prompts]
    return order


def make_item_set(model, tokenizer, n_prompts: int = N_PROMPTS, k: int = K, seed: int = 0,
                  scale: tuple[int, int] = SCALE, max_new_tokens: int = 48, model_name: str = "tiny") -> dict:
    """N prompts of the tiny world's training split (in a seeded order) with K sampled completions each,
    all different and not empty, and the order to score them in. Save it with save_item_set and hand the
    file out: every learner then labels the same texts in the same order, whatever their machine samples."""
    from .loading import load_prompts
    from .pipeline import sample_items
    from .scores import check_scale

    if not 2 <= k <= 9:
        raise LabError(f"k = {k}: the ranking widget shows 2 to 9 samples per prompt (one key each).")
    prompts = list(dict.fromkeys(load_prompts("tiny", "train")["prompt"]))
    random.Random(seed).shuffle(prompts)
    sampled = sample_items(model, tokenizer, prompts[:3 * n_prompts], K=k, seed=seed, max_new_tokens=max_new_tokens)
    items = [item for item in sampled
             if len(set(item["completions"])) == k and all(c.strip() for c in item["completions"])][:n_prompts]
    if len(items) < n_prompts:
        raise LabError(f"only {len(items)} of {3 * n_prompts} prompts got {k} different, non-empty samples; "
                       "ask for fewer prompts or a smaller k.")
    body = {"items": items, "score_order": [list(p) for p in spread_order(n_prompts, k, seed)],
            "scale": list(check_scale(tuple(scale))), "k": k, "seed": seed, "model": model_name}
    return {"kind": ITEM_SET_KIND, "id": _fingerprint(body)} | body


def save_item_set(item_set: dict, path: str | Path) -> Path:
    """Write the item set (whole or not at all: a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(item_set, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_item_set(path: str | Path) -> dict:
    """An item set file, checked: a LabError names the file and says what is wrong and what to do."""
    from .scores import check_scale

    data = read_json(path, "class item set")
    where = short_path(path)
    if not isinstance(data, dict) or data.get("kind") != ITEM_SET_KIND:
        raise LabError(f"{where} is not a class item set (no \"kind\": \"{ITEM_SET_KIND}\"); make one with "
                       "`rlhf-lab class items --out FILE` or notebooks/08_classroom.ipynb.")
    try:
        check_scale(tuple(data["scale"]))
        items, order, k = data["items"], [tuple(p) for p in data["score_order"]], data["k"]
        for n, item in enumerate(items):
            if not (isinstance(item["prompt"], str) and len(item["completions"]) == k
                    and all(isinstance(c, str) for c in item["completions"])):
                raise LabError(f"item {n} must have a prompt and {k} completions")
        if sorted(order) != [(i, j) for i in range(len(items)) for j in range(k)]:
            raise LabError("score_order must name every (prompt, sample) once")
    except (KeyError, TypeError) as e:
        raise LabError(f"{where}: the item set lacks a field or has one of the wrong type ({e}); make it again.") from None
    except LabError as e:
        raise LabError(f"{where}: {e}; make the item set again, or ask for the file again.") from None
    if data.get("id") != _fingerprint(data):
        raise LabError(f"{where}: the items do not match the set's id {data.get('id')!r} (edited by hand?); every "
                       "learner must label the same texts, so ask for the file again.")
    return data


def texts_to_score(item_set: dict) -> list[dict]:
    """[{"prompt", "completion"}] in the set's score order (each prompt's samples spread apart)."""
    items = item_set["items"]
    return [{"prompt": items[i]["prompt"], "completion": items[i]["completions"][j]} for i, j in item_set["score_order"]]


# -----------------------------------------------------------------------------
# a learner: two blocks, in counterbalanced order


def learner_file(folder: str | Path, name: str) -> Path:
    """folder/<name>.jsonl, the name made safe for a file name ("Ada L." -> ada-l.jsonl)."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", str(name).strip().lower()).strip("-")
    if not slug:
        raise LabError(f"name {name!r} gives no file name; set NAME to your name (letters or digits), e.g. NAME = \"ada\".")
    return Path(folder) / f"{slug}.jsonl"


def first_task(name: str) -> str:
    """"score" or "rank": which block a learner does first, from a stable hash of the name, so that
    about half a class starts with each (the teacher can also assign it)."""
    digest = hashlib.sha256(str(name).strip().lower().encode("utf-8")).digest()
    return TASKS[digest[0] % 2]


@dataclass
class LearnerSession:
    name: str
    path: Path  # the learner's file: hand this one in
    order: tuple[str, str]  # ("score", "rank") or ("rank", "score")
    parts: list  # the two widgets, in that order


def learner_session(item_set: dict, name: str, folder: str | Path, first: str | None = None,
                    keyboard: bool = True) -> LearnerSession:
    """The learner's two widgets on one file (scores.LabelStore), in their order: display parts[0],
    then parts[1]. Running it again resumes where the learner stopped."""
    from .scores import LabelStore
    from .widget import RankingWidget, ScoreWidget

    first = first or first_task(name)
    if first not in TASKS:
        raise LabError(f"first must be 'score' or 'rank', got {first!r}.")
    store = LabelStore(learner_file(folder, name))
    score = ScoreWidget(texts_to_score(item_set), store, annotator=str(name).strip(),
                        scale=tuple(item_set["scale"]), keyboard=keyboard)
    rank = RankingWidget(item_set["items"], store, annotator=str(name).strip(), keyboard=keyboard)
    order = (first, "rank" if first == "score" else "score")
    return LearnerSession(str(name).strip(), store.path, order, [{"score": score, "rank": rank}[t] for t in order])


# -----------------------------------------------------------------------------
# pooling: every learner's file, bad lines reported and left out, never fatal to the rest

MAX_PROBLEMS_PER_FILE = 5  # a wrong file (a notebook, a CSV) would otherwise report every line


@dataclass
class ClassLabels:
    """A class's labels, pooled: one row per label, and what could not be used, file by file."""

    scores: list[dict] = field(default_factory=list)  # {"learner", "prompt", "completion", "score", "seconds"}
    rankings: list[dict] = field(default_factory=list)  # {"learner", "prompt", "completions", "ranking", "seconds"}
    scale: tuple[int, int] = SCALE
    learners: list[str] = field(default_factory=list)  # in the order their files were read
    first: dict[str, str] = field(default_factory=dict)  # learner -> "score" or "rank": the block they did first
    files: dict[str, str] = field(default_factory=dict)  # learner -> the file their labels came from
    problems: list[str] = field(default_factory=list)  # "FILE, line N: what is wrong; what to do"


def class_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files to read: each path as given, a folder as the *.jsonl files in it, a pattern such as
    "collected/*.jsonl" (a shell that does not expand it, a notebook's parameter) as the files it matches."""
    import glob

    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(path.glob("*.jsonl"))
        elif not path.exists() and glob.has_magic(str(path)):
            files += sorted(Path(p) for p in glob.glob(str(path))) or [path]  # no match: reported as missing
        else:
            files.append(path)
    return files


def read_learner_file(path: str | Path) -> tuple[list[tuple[int, dict]], list[str]]:
    """(line number, record) of every valid label line, and one problem per line that is not. Opened
    read-only, never changed. A last line cut off mid-write (a kernel that died) is reported and left
    out: the widget never said "Saved" for it."""
    from .preferences import _looks_cut_off
    from .scores import check_label_record

    path, where = Path(path), short_path(path)
    if path.is_dir():
        return [], [f"{where}: a folder, not a learner's file; name the .jsonl files (or pass the folder alone)."]
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return [], [f"{where}: cannot be read ({e.strerror or e}); check the path."]
    lines = data.split(b"\n")
    records, problems = [], []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
            record = json.loads(text)
            check_label_record(record)
            records.append((number, record))
            continue
        except UnicodeDecodeError as e:
            problem = f"not UTF-8 text (byte {e.start + 1}); is this a learner's .jsonl file?"
        except json.JSONDecodeError as e:
            if number == len(lines) and _looks_cut_off(text, e):
                problem = ("the last line is cut off (the kernel died while writing it?); left out, nothing to fix: "
                           "that label was never saved")
            else:
                problem = f"not valid JSON ({e.msg} at column {e.colno}); fix or delete that line"
        except LabError as e:
            problem = f"{e} Fix or delete that line."
        problems.append(f"{where}, line {number}: {problem}")
    if len(problems) > MAX_PROBLEMS_PER_FILE:
        more = len(problems) - MAX_PROBLEMS_PER_FILE
        problems = problems[:MAX_PROBLEMS_PER_FILE] + [f"{where}: {more} more lines like these; is it a learner's file?"]
    return records, problems


def read_class_files(paths: Iterable[str | Path]) -> ClassLabels:
    """Every learner's labels from their files (or folders of them), pooled. A file that cannot be read,
    a bad line, a second label of the same text: each is one line in .problems, and the rest is used.
    Each annotator name is a learner; the same name in two files is told apart by the file's name."""
    from .scores import is_score_record

    labels = ClassLabels()
    scale_counts: Counter = Counter()
    for path in class_files(paths):
        where = short_path(path)
        records, problems = read_learner_file(path)
        labels.problems += problems
        if not records and not problems:
            labels.problems.append(f"{where}: no labels in it yet; left out.")
        by_annotator: dict[str, list[tuple[int, dict]]] = {}
        for number, record in records:
            by_annotator.setdefault(str(record.get("annotator") or Path(path).stem), []).append((number, record))
        for annotator, located in by_annotator.items():
            learner = annotator
            if learner in labels.files:
                learner = f"{annotator} ({where})"
                labels.problems.append(f"{where}: the name {annotator!r} is also in {labels.files[annotator]}; "
                                       f"these labels count as {learner!r}, another learner.")
            labels.learners.append(learner)
            labels.files[learner] = where
            labels.first[learner] = "score" if is_score_record(located[0][1]) else "rank"
            seen: dict[tuple, int] = {}
            for number, record in located:
                key = ((record["prompt"], record["completion"]) if is_score_record(record)
                       else (record["prompt"], tuple(record["completions"])))
                if key in seen:
                    labels.problems.append(f"{where}, line {number}: {annotator} labelled this text already "
                                           f"(line {seen[key]}); the first label is kept.")
                    continue
                seen[key] = number
                if is_score_record(record) and record["score"] is not None:
                    scale_counts[tuple(record["scale"])] += 1
                    labels.scores.append({"learner": learner, "prompt": record["prompt"], "line": number,
                                          "completion": record["completion"], "score": record["score"],
                                          "scale": tuple(record["scale"]), "seconds": record.get("seconds")})
                elif not is_score_record(record) and record["ranking"] is not None:
                    labels.rankings.append({"learner": learner, "prompt": record["prompt"],
                                            "completions": list(record["completions"]),
                                            "ranking": record["ranking"], "seconds": record.get("seconds")})
    if scale_counts:
        labels.scale = scale_counts.most_common(1)[0][0]
        other = [s for s in labels.scores if s["scale"] != labels.scale]
        for s in other:
            labels.problems.append(f"{labels.files[s['learner']]}, line {s['line']}: a score on the scale "
                                   f"{s['scale'][0]}-{s['scale'][1]}, not the class's {labels.scale[0]}-{labels.scale[1]} "
                                   "(another item set?); left out.")
        labels.scores = [s for s in labels.scores if s["scale"] == labels.scale]
    labels.learners = [name for name in labels.learners
                       if any(r["learner"] == name for r in labels.scores + labels.rankings)]
    return labels


# -----------------------------------------------------------------------------
# agreement


def krippendorff_alpha(table: np.ndarray, level: str) -> float:
    """Krippendorff's alpha of a (learners, units) table, NaN where a learner gave no value; level
    "interval" (scores) or "ordinal" (places in a ranking). NaN if no unit has two values, or all agree
    on one value (alpha is then undefined: no disagreement is expected either)."""
    import krippendorff

    try:
        return float(krippendorff.alpha(reliability_data=table, level_of_measurement=level))
    except ValueError:  # "at least one unit with values assigned by at least two coders", "more than one value"
        return float("nan")


def exact_agreement(table: np.ndarray) -> float:
    """The share of (two learners, one unit) where both gave a value and it is the same value."""
    same = total = 0
    for a, b in itertools.combinations(range(table.shape[0]), 2):
        both = ~np.isnan(table[a]) & ~np.isnan(table[b])
        same += int((table[a][both] == table[b][both]).sum())
        total += int(both.sum())
    return same / total if total else float("nan")


def kendalls_w(places: np.ndarray) -> float:
    """Kendall's coefficient of concordance of m rankings of n objects, places (m, n) with 1 = best:
    W = 12 S / (m^2 (n^3 - n)), S the sum of squared deviations of the objects' place sums from their
    mean (Kendall & Babington Smith 1939). 1: all rank alike; 0: no common order."""
    m, n = places.shape
    sums = places.sum(axis=0)                                                  # (n,)
    s = float(((sums - sums.mean()) ** 2).sum())
    return 12 * s / (m ** 2 * (n ** 3 - n))


def pair_order_agreement(values: np.ndarray) -> tuple[float, int]:
    """(agreeing, compared) over every pair of learners and every pair of objects they both valued:
    values (learners, objects), higher is better, NaN where missing. The same strict order counts 1, the
    opposite 0, a tie in either 0.5 (what a coin flip to break it gives on average)."""
    agreeing, compared = 0.0, 0
    for a, b in itertools.combinations(range(values.shape[0]), 2):
        for i, j in itertools.combinations(range(values.shape[1]), 2):
            da, db = values[a, i] - values[a, j], values[b, i] - values[b, j]
            if np.isnan(da) or np.isnan(db):
                continue
            agreeing += 0.5 if da == 0 or db == 0 else float((da > 0) == (db > 0))
            compared += 1
    return agreeing, compared


def _score_groups(labels: ClassLabels, learners: list[str]) -> dict[str, tuple[list[str], np.ndarray]]:
    """prompt -> (its completions, (learners, completions) scores with NaN where missing)."""
    row = {name: n for n, name in enumerate(learners)}
    completions: dict[str, list[str]] = {}
    for s in labels.scores:
        if s["learner"] in row and s["completion"] not in completions.setdefault(s["prompt"], []):
            completions[s["prompt"]].append(s["completion"])
    groups = {p: (cs, np.full((len(learners), len(cs)), np.nan)) for p, cs in completions.items()}
    for s in labels.scores:
        if s["learner"] in row:
            texts, table = groups[s["prompt"]]
            table[row[s["learner"]], texts.index(s["completion"])] = s["score"]
    return groups


def _rank_groups(labels: ClassLabels, learners: list[str]) -> dict[tuple, np.ndarray]:
    """(prompt, completions) -> (learners, K) places, 1 = best, NaN where the learner did not rank it."""
    row = {name: n for n, name in enumerate(learners)}
    groups: dict[tuple, np.ndarray] = {}
    for r in labels.rankings:
        if r["learner"] in row:
            key = r["prompt"], tuple(r["completions"])
            table = groups.setdefault(key, np.full((len(learners), len(key[1])), np.nan))
            for place, i in enumerate(r["ranking"], start=1):
                table[row[r["learner"]], i] = place
    return groups


def agreement(labels: ClassLabels, first: str | None = None) -> dict:
    """The class's agreement on its scores and on its rankings (first="score" or "rank": only the
    learners who did that block first). Pair agreements are over pairs of learners and pairs of samples
    of one prompt, so the scores' is on the same pairs as the rankings'."""
    learners = [n for n in labels.learners if first is None or labels.first.get(n) == first]
    score_groups, rank_groups = _score_groups(labels, learners), _rank_groups(labels, learners)
    scores = np.concatenate([t for _, t in score_groups.values()], axis=1) if score_groups else np.empty((0, 0))
    places = np.concatenate(list(rank_groups.values()), axis=1) if rank_groups else np.empty((0, 0))
    score_pairs = [pair_order_agreement(t) for _, t in score_groups.values()]
    rank_pairs = [pair_order_agreement(-t) for t in rank_groups.values()]  # place 1 is best: higher = better
    ties = [(t[:, i] == t[:, j]).sum() for _, t in score_groups.values()
            for i, j in itertools.combinations(range(t.shape[1]), 2)]
    tie_total = sum(int((~np.isnan(t[:, i]) & ~np.isnan(t[:, j])).sum()) for _, t in score_groups.values()
                    for i, j in itertools.combinations(range(t.shape[1]), 2))
    full = [t[~np.isnan(t).any(axis=1)] for t in rank_groups.values()]
    ws = [kendalls_w(t) for t in full if len(t) >= 2]

    def share(pairs):
        compared = sum(n for _, n in pairs)
        return sum(a for a, _ in pairs) / compared if compared else float("nan")

    return {
        "learners": len(learners),
        "texts_scored": int(scores.shape[1]) if scores.size else 0,
        "prompts_ranked": len(rank_groups),
        "scale": list(labels.scale),
        "alpha_scores": krippendorff_alpha(scores, "interval") if scores.size else float("nan"),
        "alpha_rankings": krippendorff_alpha(places, "ordinal") if places.size else float("nan"),
        "exact_share_scores": exact_agreement(scores) if scores.size else float("nan"),
        "kendalls_w": float(np.mean(ws)) if ws else float("nan"),
        "pair_agreement_scores": share(score_pairs),
        "pair_agreement_rankings": share(rank_pairs),
        "score_tie_share": sum(ties) / tie_total if tie_total else float("nan"),  # a learner's two scores equal
        "pairs_compared_scores": sum(n for _, n in score_pairs),
        "pairs_compared_rankings": sum(n for _, n in rank_pairs),
    }


def versus_gold(labels: ClassLabels) -> dict[str, dict]:
    """Per learner: the share of sample pairs (of one prompt, gold not tied) that their ranking orders
    as the gold labeler does, and that their scores do (a tie in their scores counts 0.5)."""
    out = {}
    for name in labels.learners:
        ranked = [0.0, 0]
        for r in labels.rankings:
            if r["learner"] != name:
                continue
            gold = [gold_score(r["prompt"] + c) for c in r["completions"]]
            place = {i: p for p, i in enumerate(r["ranking"])}
            for i, j in itertools.combinations(range(len(gold)), 2):
                if abs(gold[i] - gold[j]) > 1e-9:
                    ranked[0] += float((gold[i] > gold[j]) == (place[i] < place[j]))
                    ranked[1] += 1
        scored = [0.0, 0]
        for prompt, (texts, table) in _score_groups(labels, [name]).items():
            gold = [gold_score(prompt + c) for c in texts]
            for i, j in itertools.combinations(range(len(gold)), 2):
                if abs(gold[i] - gold[j]) > 1e-9 and not np.isnan(table[0, i] - table[0, j]):
                    mine = table[0, i] - table[0, j]
                    scored[0] += 0.5 if mine == 0 else float((mine > 0) == (gold[i] > gold[j]))
                    scored[1] += 1
        out[name] = {"rankings": ranked[0] / ranked[1] if ranked[1] else float("nan"),
                     "scores": scored[0] / scored[1] if scored[1] else float("nan"),
                     "mean_score": statistics.fmean(s["score"] for s in labels.scores if s["learner"] == name)
                     if any(s["learner"] == name for s in labels.scores) else float("nan")}
    return out


def label_cost(labels: ClassLabels) -> dict:
    """The class's own seconds: median per score, per ranking, and per prompt's K(K-1)/2 pairs either way
    (K scores, or one ranking). Medians: a learner who walked away from one item does not move them."""
    score_s = [s["seconds"] for s in labels.scores if s["seconds"] is not None]
    rank_s = [r["seconds"] for r in labels.rankings if r["seconds"] is not None]
    k = Counter(len(r["completions"]) for r in labels.rankings).most_common(1)[0][0] if labels.rankings else K
    per_score = statistics.median(score_s) if score_s else float("nan")
    per_ranking = statistics.median(rank_s) if rank_s else float("nan")
    return {"k": k, "seconds_per_score": per_score, "seconds_per_ranking": per_ranking,
            "seconds_per_prompt_scored": k * per_score, "seconds_per_prompt_ranked": per_ranking,
            "pairs_per_prompt": k * (k - 1) // 2, "timed_scores": len(score_s), "timed_rankings": len(rank_s)}


def agreement_table(result: dict, cost: dict | None = None) -> str:
    """The agreement as a short plain-text table (the command line prints it)."""
    low, high = result["scale"]

    def f(x, fmt="{:.2f}"):
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)

    rows = [("", f"scores ({low}-{high})", "rankings"),
            ("Krippendorff's alpha", f"{f(result['alpha_scores'])} interval", f"{f(result['alpha_rankings'])} ordinal"),
            ("same score / Kendall's W", f(result["exact_share_scores"], "{:.0%}"), f"W = {f(result['kendalls_w'])}"),
            ("pairs ordered alike", f"{f(result['pair_agreement_scores'], '{:.1%}')} (implied)",
             f(result["pair_agreement_rankings"], "{:.1%}"))]
    if cost is not None:
        rows.append((f"seconds per prompt (K={cost['k']})", f"{f(cost['seconds_per_prompt_scored'], '{:.0f}')} s "
                     f"({cost['k']} scores)", f"{f(cost['seconds_per_prompt_ranked'], '{:.0f}')} s"))
    width = [max(len(r[c]) for r in rows) for c in range(3)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, width)).rstrip() for r in rows)


# -----------------------------------------------------------------------------
# simulated learners: each with their own use of the scale, so scores are no shared map of quality


@dataclass(frozen=True)
class SimulatedLearner:
    """A simulated learner. Perception = gold + taste (this person's lasting view of this text, the same
    in both tasks) + noise (drawn afresh at each look: the score's and the ranking's differ). Score =
    low + (high - low) * sigmoid((perception - centre) / width) ** curve, rounded: each person's own
    range, threshold, steepness and curve, so the scores are no affine map shared by the class."""

    name: str
    low: int = 1  # the part of the scale this person uses: some never give a 1 or a 7
    high: int = 7
    centre: float = 0.0  # the perceived gold they call middling: harsh > 0 > lenient
    width: float = 0.8  # gold units from middling to about 3/4 of their range: small = all or nothing
    curve: float = 1.0  # > 1 stingy with top scores, < 1 generous with them
    taste: float = 0.2  # std of their lasting view of a text, gold units (people differ)
    noise: float = 0.2  # std of each look's noise, gold units (a person differs from themself)
    words_per_second: float = 3.5  # reading speed, for the simulated seconds
    seed: int = 0

    def _normal(self, *parts: str) -> float:
        digest = hashlib.sha256("\x00".join([str(self.seed), self.name, *parts]).encode("utf-8")).digest()
        return random.Random(int.from_bytes(digest[:8], "big")).gauss(0.0, 1.0)

    def perceive(self, text: str, look: str) -> float:
        return gold_score(text) + self.taste * self._normal("taste", text) + self.noise * self._normal(look, text)

    def score(self, text: str) -> int:
        u = 1.0 / (1.0 + math.exp(-(self.perceive(text, "score") - self.centre) / self.width))
        return int(round(self.low + (self.high - self.low) * u ** self.curve))

    def rank(self, texts: list[str]) -> list[int]:
        perceived = [self.perceive(t, "rank") for t in texts]
        return sorted(range(len(texts)), key=lambda i: -perceived[i])

    def seconds_to_score(self, text: str) -> float:
        """Reading the text, then 2 s or so to pick a number (a model, not a measurement)."""
        return len(text.split()) / self.words_per_second + 2.0 + abs(self._normal("s", text))

    def seconds_to_rank(self, texts: list[str]) -> float:
        """Reading the K texts (the shared prompt once), then about 1.5 s per card to order them."""
        words = sum(len(t.split()) for t in texts) - (len(texts) - 1) * len(os.path.commonprefix(texts).split())
        return words / self.words_per_second + 1.5 * len(texts) + abs(self._normal("s", *texts))


def simulated_class(n: int, seed: int = 0) -> list[SimulatedLearner]:
    """n learners with their own scale use (1-7, 2-6, 1-5, 3-7), harshness, steepness, curve, taste,
    noise and reading speed, drawn from a seeded generator."""
    rng = random.Random(seed)
    ranges = [(1, 7)] * 5 + [(2, 6)] * 3 + [(1, 5), (3, 7)]
    learners = []
    for i in range(n):
        low, high = rng.choice(ranges)
        learners.append(SimulatedLearner(
            f"learner {i + 1:02d}", low=low, high=high, centre=rng.uniform(-0.6, 0.6), width=rng.uniform(0.4, 1.2),
            curve=math.exp(rng.uniform(-0.5, 0.5)), taste=rng.uniform(0.1, 0.3), noise=rng.uniform(0.1, 0.3),
            words_per_second=rng.uniform(2.5, 5.0), seed=seed))
    return learners


def write_simulated_files(item_set: dict, learners: list[SimulatedLearner], folder: str | Path) -> list[Path]:
    """Each simulated learner's file, written as the widgets write a learner's (a LabelStore, both blocks,
    in the order first_task gives their name). The folder's .jsonl files are replaced: it must hold simulated
    files only (a marker file says so), never a real learner's."""
    from .scores import LabelStore

    folder = Path(folder)
    marker = folder / "SIMULATED"
    if any(folder.glob("*.jsonl")) and not marker.is_file():
        raise LabError(f"{short_path(folder)} holds .jsonl files that this function did not write (a class's files?); "
                       "simulated learners go into a folder of their own. Choose another folder.")
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text("Files of simulated learners (rlhf_lab.classroom.write_simulated_files), replaced on each run.\n")
    for old in folder.glob("*.jsonl"):
        old.unlink()
    paths = []
    for learner in learners:
        store = LabelStore(learner_file(folder, learner.name))
        scale = tuple(item_set["scale"])  # the class's scale; each learner uses their own part of it
        for task in (first_task(learner.name), "rank" if first_task(learner.name) == "score" else "score"):
            if task == "score":
                for t in texts_to_score(item_set):
                    text = t["prompt"] + t["completion"]
                    score = min(scale[1], max(scale[0], learner.score(text)))
                    store.add_score(t["prompt"], t["completion"], score, scale, annotator=learner.name,
                                    seconds=learner.seconds_to_score(text))
            else:
                for item in item_set["items"]:
                    texts = [item["prompt"] + c for c in item["completions"]]
                    store.add(item["prompt"], item["completions"], learner.rank(texts), annotator=learner.name,
                              seconds=learner.seconds_to_rank(texts))
        paths.append(store.path)
    return paths


# -----------------------------------------------------------------------------
# two reward models from the same class: Bradley-Terry on its rankings, regression on its scores


def class_pairs(labels: ClassLabels):
    """Every learner's rankings as (prompt, chosen, rejected) pairs, pooled: a pair the class split on is
    there both ways, as often as it was given each way (what the Bradley-Terry loss should see)."""
    from .rankings import rankings_to_pairs

    return rankings_to_pairs([{"prompt": r["prompt"], "completions": r["completions"], "ranking": r["ranking"],
                               "annotator": r["learner"]} for r in labels.rankings])


def score_targets(labels: ClassLabels, standardise: str = "pooled") -> list[dict]:
    """{"prompt", "completion", "target"} per text: the mean over learners of the standardised score.
    "pooled": (score - mean) / std over all the class's scores (one shared scale, as a labelling team's raw
    scores would be used); "learner": each learner's scores standardised on their own first, which takes out
    each person's offset and spread (not their curve)."""
    if standardise not in ("pooled", "learner"):
        raise LabError(f"standardise must be 'pooled' or 'learner', got {standardise!r}.")
    groups = {}
    for s in labels.scores:
        groups.setdefault(s["learner"] if standardise == "learner" else "", []).append(s["score"])
    stats = {g: (statistics.fmean(v), statistics.pstdev(v)) for g, v in groups.items()}
    per_text: dict[tuple[str, str], list[float]] = {}
    for s in labels.scores:
        mean, std = stats[s["learner"] if standardise == "learner" else ""]
        if std > 0:  # a learner who gave every text the same score says nothing about any of them
            per_text.setdefault((s["prompt"], s["completion"]), []).append((s["score"] - mean) / std)
    return [{"prompt": p, "completion": c, "target": statistics.fmean(z)} for (p, c), z in per_text.items()]


def score_regression_loss(predicted, target):
    """Mean squared error between the reward model's scores and the standardised class scores:
    predicted # (B,), target # (B,) -> a scalar. The regression counterpart of ppo_math.pairwise_loss."""
    return ((predicted.float() - target.float()) ** 2).mean()


def train_score_model(cfg, examples: list[dict], trunk, tokenizer, eval_pairs=None, progress: bool = False):
    """A reward model regressed on scores: the same trunk, "reward" LoRA adapter and head as
    reward_model.train_reward_model, the same optimiser and schedule, batches of whole prompts (as the
    Bradley-Terry model's), loss score_regression_loss. Returns a reward_model.RewardResult."""
    import time

    import torch
    from tqdm.auto import tqdm

    from .reward_model import (ADAPTER_NAME, RewardModel, RewardResult, add_reward_adapter, encode, evaluate_pairs,
                               new_reward_head, pad_batch)
    from .utils import pick_device, set_seed

    start_time = time.time()
    if not examples:
        raise LabError("no scores to learn from: the class's files hold no score (or every learner gave one value).")
    set_seed(cfg.seed)
    device = pick_device(cfg.device)
    trunk = copy.deepcopy(trunk).to(device)
    reward_model = RewardModel(add_reward_adapter(trunk, cfg), ADAPTER_NAME,
                               new_reward_head(trunk.config.n_embd).to(device), tokenizer=tokenizer,
                               max_length=cfg.max_length)
    ids = [encode(tokenizer, e["prompt"], e["completion"], cfg.max_length) for e in examples]
    targets = torch.tensor([e["target"] for e in examples], dtype=torch.float32)  # (N,)
    by_prompt: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_prompt.setdefault(e["prompt"], []).append(i)
    groups = list(by_prompt.values())

    params = [p for p in reward_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(cfg.seed)
    total_steps = cfg.epochs * len(groups)  # one prompt per step, as the Bradley-Terry model's batches here

    def lr_at(step: int) -> float:  # the reward model's schedule: linear warmup, then linear decay to 0
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        return cfg.lr * max(0.0, (total_steps - step) / max(1, total_steps - cfg.warmup_steps))

    reward_model.train(cfg.train_dropout)
    history, step = [], 0
    bar = tqdm(total=total_steps, desc="score model", disable=not progress)
    for _ in range(cfg.epochs):
        for g in torch.randperm(len(groups), generator=generator).tolist():
            rows = groups[g]
            input_ids, attention_mask = pad_batch([ids[i] for i in rows], tokenizer.pad_token_id)
            predicted = reward_model(input_ids.to(device), attention_mask.to(device))  # (B,)
            loss = score_regression_loss(predicted, targets[rows].to(device))
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            step += 1
            history.append({"step": step, "loss": loss.item()})
            bar.update(1)
    bar.close()
    reward_model.eval()
    metrics = evaluate_pairs(reward_model, eval_pairs) if eval_pairs is not None and len(eval_pairs) else {}
    seconds = time.time() - start_time
    metrics |= {"train_texts": len(examples), "steps": step, "seconds": seconds}
    return RewardResult(reward_model=reward_model, tokenizer=tokenizer, config=cfg, train_pairs=None,
                        eval_pairs=eval_pairs, history=history, metrics=metrics, seconds=seconds)


def gold_pairs(model, tokenizer, n_prompts: int, k: int = K, seed: int = 1000, max_new_tokens: int = 48):
    """Every pair of k samples for n held-out prompts (the validation split: no prompt of the item set),
    for measuring reward models against gold (evaluate_pairs counts only the pairs gold does not tie)."""
    from .loading import load_prompts
    from .pipeline import sample_items
    from .rankings import rankings_to_pairs

    prompts = list(dict.fromkeys(load_prompts("tiny", "validation")["prompt"]))[:n_prompts]
    items = sample_items(model, tokenizer, prompts, K=k, seed=seed, max_new_tokens=max_new_tokens)
    return rankings_to_pairs([item | {"ranking": list(range(k))} for item in items])


def compare_reward_models(labels: ClassLabels, trunk, tokenizer, eval_pairs, cfg, seeds=(0,)) -> dict:
    """Reward models from the class's pooled rankings (Bradley-Terry), pooled scores (regression) and
    scores standardised per learner, each trained with every seed, measured against gold on eval_pairs."""
    import dataclasses

    from .reward_model import train_reward_model

    pairs = class_pairs(labels)
    out: dict[str, list[float]] = {"rankings": [], "scores": [], "scores_per_learner": []}
    for seed in seeds:
        seed_cfg = dataclasses.replace(cfg, seed=seed)
        out["rankings"].append(train_reward_model(seed_cfg, pairs, trunk=trunk, tokenizer=tokenizer,
                                                  eval_pairs=eval_pairs, progress=False).metrics["gold_accuracy"])
        for name, standardise in (("scores", "pooled"), ("scores_per_learner", "learner")):
            result = train_score_model(seed_cfg, score_targets(labels, standardise), trunk, tokenizer, eval_pairs)
            out[name].append(result.metrics["gold_accuracy"])
    return {"per_seed": out, "mean": {name: statistics.fmean(v) for name, v in out.items()},
            "train_pairs": len(pairs), "train_texts": len(score_targets(labels)), "seeds": list(seeds)}


# -----------------------------------------------------------------------------
# figures


def plot_agreement(result: dict, labels: ClassLabels):
    """Left: alpha on scores and on rankings. Middle: pairs ordered alike, by rankings and as implied by
    scores. Right: how each learner used the scale (the share of their scores at each value)."""
    import matplotlib.pyplot as plt

    fig, (ax_alpha, ax_pairs, ax_scale) = plt.subplots(1, 3, figsize=(14, 3.8), gridspec_kw={"width_ratios": [1, 1, 1.4]})
    colors = ["#c9a", "#7a9"]
    ax_alpha.bar(["scores\n(interval)", "rankings\n(ordinal)"], [result["alpha_scores"], result["alpha_rankings"]],
                 color=colors)
    ax_alpha.set(ylim=(min(0, result["alpha_scores"], result["alpha_rankings"]), 1), ylabel="Krippendorff's alpha",
                 title="Agreement beyond chance")
    ax_pairs.bar(["implied by\nscores", "rankings"], [result["pair_agreement_scores"], result["pair_agreement_rankings"]],
                 color=colors)
    ax_pairs.axhline(0.5, color="#999", ls=":", label="coin flips")
    ax_pairs.set(ylim=(0, 1), ylabel="share of (2 learners, 1 pair of samples)", title="Pairs ordered alike")
    ax_pairs.legend(fontsize=8, loc="lower right")
    low, high = labels.scale
    values = list(range(low, high + 1))
    share = np.zeros((len(labels.learners), len(values)))
    for s in labels.scores:
        share[labels.learners.index(s["learner"]), s["score"] - low] += 1
    share /= np.maximum(share.sum(axis=1, keepdims=True), 1)
    ax_scale.imshow(share, aspect="auto", cmap="Purples", vmin=0,
                    extent=(low - 0.5, high + 0.5, len(labels.learners) - 0.5, -0.5))
    ax_scale.set(xticks=values, yticks=range(len(labels.learners)), xlabel="score",
                 title="How each learner used the scale (darker: more often)")
    ax_scale.set_yticklabels(labels.learners, fontsize=7)
    fig.tight_layout()
    return fig


def plot_versus_gold(per_learner: dict[str, dict]):
    """Each learner's pairs ordered as gold orders them: by their rankings and by their scores."""
    import matplotlib.pyplot as plt

    names = list(per_learner)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names) + 2), 3.4))
    ax.bar(x - 0.2, [per_learner[n]["scores"] for n in names], 0.4, color="#c9a", label="scores (ties count 1/2)")
    ax.bar(x + 0.2, [per_learner[n]["rankings"] for n in names], 0.4, color="#7a9", label="rankings")
    ax.axhline(0.5, color="#999", ls=":", label="coin flips")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set(ylim=(0, 1), ylabel="pairs ordered as gold orders them", title="Each learner against the gold labeler")
    ax.legend(fontsize=8, loc="lower right", ncol=3)
    fig.tight_layout()
    return fig


def plot_reward_models_and_cost(rm: dict, cost: dict):
    """Left: the reward models' accuracy against gold (a dot per seed). Right: seconds per prompt."""
    import matplotlib.pyplot as plt

    fig, (ax_rm, ax_cost) = plt.subplots(1, 2, figsize=(11, 3.6))
    names = [("rankings", "rankings\n(Bradley-Terry)", "#7a9"), ("scores", "scores, pooled\n(regression)", "#c9a"),
             ("scores_per_learner", "scores, per learner\n(regression)", "#dbc")]
    for x, (key, label, color) in enumerate(names):
        ax_rm.bar(x, rm["mean"][key], color=color)
        ax_rm.plot([x] * len(rm["per_seed"][key]), rm["per_seed"][key], "k.", ms=5)
    ax_rm.axhline(0.5, color="#999", ls=":")
    ax_rm.set_xticks(range(len(names)))
    ax_rm.set_xticklabels([label for _, label, _ in names], fontsize=8)
    ax_rm.set(ylim=(0.4, 1), ylabel="held-out pairs ordered as gold orders them",
              title=f"Reward models from the class's labels ({len(rm['seeds'])} seed(s))")
    k = cost["k"]
    ax_cost.bar([f"{k} scores", "1 ranking"], [cost["seconds_per_prompt_scored"], cost["seconds_per_prompt_ranked"]],
                color=["#c9a", "#7a9"])
    ax_cost.set(ylabel="median seconds", title=f"Cost of one prompt's {cost['pairs_per_prompt']} pairs (K = {k})")
    fig.tight_layout()
    return fig


# -----------------------------------------------------------------------------
# the command line: rlhf-lab class items | merge


def add_class_parser(subparsers) -> None:
    """`rlhf-lab class items` (the teacher's item set) and `rlhf-lab class merge FILE...` (the result)."""
    p = subparsers.add_parser("class", help="a class as annotators: hand out an item set, merge the learners' files",
                              description="A class as annotators (notebooks/08_classroom.ipynb): `items` makes the "
                              "item set every learner labels; `merge` pools the learners' files and prints the class's "
                              "agreement on scores and on rankings.")
    sub = p.add_subparsers(dest="class_command", required=True, metavar="{items,merge}")
    items = sub.add_parser("items", help="make the item set to hand out (N prompts x K samples of the tiny model)")
    items.add_argument("--out", default="class_items.json", help="the file to write (default: class_items.json)")
    items.add_argument("--prompts", type=int, default=N_PROMPTS, help=f"prompts (default: {N_PROMPTS})")
    items.add_argument("--k", type=int, default=K, help=f"samples per prompt, 2 to 9 (default: {K})")
    items.add_argument("--seed", type=int, default=0, help="prompt order and sampling (default: 0)")
    items.add_argument("--debug", action="store_true", help="show the traceback of an error")
    merge = sub.add_parser("merge", help="pool the learners' files; print the agreement on scores and rankings",
                           description="Read every learner's file (a folder: its *.jsonl), report bad lines by file "
                           "and line, and print the class's agreement; writes agreement.json into --out.")
    merge.add_argument("files", nargs="+", metavar="FILE", help="learners' .jsonl files, or folders of them")
    merge.add_argument("--out", default="runs/class", help="where agreement.json goes (default: runs/class)")
    merge.add_argument("--debug", action="store_true", help="show the traceback of an error")


def _json_ready(value):
    """NaN (an undefined statistic) as null, so that the file is valid JSON; tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def run_class(args) -> None:
    """Run `rlhf-lab class items|merge`; a user's mistake is a LabError (one line, exit code 2)."""
    import sys

    if args.class_command == "items":
        from .loading import load_model

        if not 1 <= args.prompts <= 100:
            raise LabError(f"--prompts {args.prompts}: give 1 to 100 (a class labels 8 in about 8 minutes).")
        model, tokenizer = load_model("tiny", device="cpu")
        item_set = make_item_set(model, tokenizer, n_prompts=args.prompts, k=args.k, seed=args.seed)
        path = save_item_set(item_set, args.out)
        print(f"{short_path(path)}: {len(item_set['items'])} prompts x {item_set['k']} samples, item set "
              f"{item_set['id']}; hand it out (learners set ITEMS_FILE to it in notebooks/08_classroom.ipynb)")
        return
    labels = read_class_files(args.files)
    for problem in labels.problems:
        print(f"rlhf-lab: warning: {problem}", file=sys.stderr)
    if len(labels.learners) < 2:
        raise LabError(f"agreement needs at least two learners' labels; the files hold {len(labels.learners)} "
                       f"({', '.join(labels.learners) or 'none'}). Pass every learner's file, or their folder.")
    result, cost = agreement(labels), label_cost(labels)
    firsts = Counter(labels.first[n] for n in labels.learners)
    print(f"{len(labels.learners)} learners ({firsts['score']} scored first, {firsts['rank']} ranked first): "
          f"{result['texts_scored']} texts scored, {result['prompts_ranked']} prompts ranked\n")
    print(agreement_table(result, cost))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"agreement": result, "label_cost": cost, "versus_gold": versus_gold(labels),
              "by_first_task": {t: agreement(labels, first=t) for t in TASKS}, "files": labels.files,
              "problems": labels.problems}
    (out / "agreement.json").write_text(json.dumps(_json_ready(record), indent=2) + "\n")
    print(f"\n{short_path(out / 'agreement.json')}")
