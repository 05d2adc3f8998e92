"""Rankings of K samples per prompt, kept on disk, and the pairwise comparisons they give.

Stage 2 of RLHF (Ouyang et al. 2022, InstructGPT): people rank K completions of one prompt, best
first; each ranking becomes all K(K-1)/2 (chosen, rejected) pairs for the reward model's
Bradley-Terry loss -log sigmoid(r_chosen - r_rejected). Rankings, not scores, because annotators
agree far more on which text is better than on how good it is.

A ranking record, one JSON object per line of the store:
  {"prompt": str, "completions": [str, ...], "ranking": [2, 0, 3, 1], "annotator": str, "time": ISO-8601 UTC}
ranking lists indices into completions, best first. A skip is {"ranking": null, "skipped": true, ...}.
"""

from __future__ import annotations

import json
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import datasets

from rlhf_lab.preferences import PAIR_FEATURES, PreferenceFileError, read_records
from rlhf_lab.utils import LabError

Key = tuple[str, tuple[str, ...]]  # (prompt, completions): what identifies one item to rank


def item_key(item: dict) -> Key:
    return item["prompt"], tuple(item["completions"])


# -----------------------------------------------------------------------------
# rankings -> pairs (InstructGPT, Ouyang et al. 2022, section 3.5)


def check_ranking(ranking: Any, K: int) -> None:
    """Raise LabError unless ranking is a permutation of range(K): each completion once, best first."""
    if not isinstance(ranking, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ranking):
        raise LabError(f"ranking must be a list of completion indices, best first, got {ranking!r}.")
    if sorted(ranking) != list(range(K)):
        raise LabError(f"ranking {ranking} is not a permutation of 0..{K - 1}: each of the {K} completions "
                       "must appear exactly once, best first.")


def pairs_from_ranking(prompt: str, completions: list[str], ranking: list[int]) -> list[dict]:
    """All K(K-1)/2 (chosen, rejected) pairs of one ranking: each completion beats every one ranked below it.

    A pair of two identical completions (the model sampled the same text twice) is left out: it says
    nothing about which text is better, and only dilutes the loss and the accuracy.
    """
    K = len(completions)
    check_ranking(ranking, K)
    pairs = []
    for i in range(K):
        for j in range(i + 1, K):
            chosen, rejected = completions[ranking[i]], completions[ranking[j]]
            if chosen != rejected:
                pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def rankings_to_pairs(records: Iterable[dict] | RankingStore) -> datasets.Dataset:
    """A Dataset (prompt, chosen, rejected) with every pair of every ranking; skipped records give none.

    The pairs of one prompt stay next to each other, in ranking order. InstructGPT fed all K(K-1)/2
    pairs of a prompt as one batch element, because shuffled apart they are strongly correlated and
    the reward model overfits within one epoch.
    """
    if isinstance(records, RankingStore):
        records = records.records()
    columns = {"prompt": [], "chosen": [], "rejected": []}
    for record in records:
        check_ranking_record(record)
        if record.get("ranking") is None:
            continue  # skipped
        for pair in pairs_from_ranking(record["prompt"], record["completions"], record["ranking"]):
            for name in columns:
                columns[name].append(pair[name])
    return datasets.Dataset.from_dict(columns, features=PAIR_FEATURES)


def check_ranking_record(record: Any) -> None:
    """Raise LabError (what is wrong, what to do) unless record is a valid ranking or skip record."""
    if not isinstance(record, dict):
        raise LabError(f"a ranking record must be a JSON object {{...}}, not a {type(record).__name__}.")
    for name in ("prompt", "completions", "ranking"):
        if name not in record:
            raise LabError(f"missing field {name!r} (the record has {sorted(record)}); a ranking record "
                           "has prompt, completions and ranking (null for a skip).")
    if not isinstance(record["prompt"], str):
        raise LabError(f"field 'prompt' must be a string, got {type(record['prompt']).__name__}.")
    completions = record["completions"]
    if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
        raise LabError(f"field 'completions' must be a list of strings, got {completions!r:.80}.")
    if len(completions) < 2:
        raise LabError(f"a ranking needs at least K = 2 completions to compare; this record has "
                       f"{len(completions)}. Sample K >= 2 completions per prompt.")
    if record["ranking"] is None:
        if record.get("skipped") is not True:
            raise LabError("ranking is null but 'skipped' is not true; give a ranking, or mark the "
                           "record as skipped with \"skipped\": true.")
        return
    check_ranking(record["ranking"], len(completions))


# -----------------------------------------------------------------------------
# the store: append-only JSONL, each record on disk before the call returns


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")  # e.g. 2025-01-31T12:00:00+00:00


class RankingStore:
    """Append-only JSONL file of ranking records; each one is on disk (flushed and fsynced) at once,
    so a kernel that dies loses nothing already submitted."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RankingStore({str(self.path)!r})"

    def add(self, prompt: str, completions: list[str], ranking: list[int], annotator: str = "learner") -> dict:
        """Write one ranking (indices into completions, best first) and return the record."""
        record = {"prompt": prompt, "completions": list(completions), "ranking": list(ranking),
                  "annotator": annotator, "time": _utc_now()}
        self._append(record)
        return record

    def skip(self, prompt: str, completions: list[str], annotator: str = "learner") -> dict:
        """Write a skip, so that a resumed session does not ask for this item again."""
        record = {"prompt": prompt, "completions": list(completions), "ranking": None, "skipped": True,
                  "annotator": annotator, "time": _utc_now()}
        self._append(record)
        return record

    def records(self) -> list[dict]:
        """Every record in the file, oldest first ([] if there is no file yet). Never changes the file."""
        if not self.path.exists():
            return []
        records = []
        for where, record in read_records(self.path):  # skips a cut-off last line, with a warning
            try:
                check_ranking_record(record)
            except LabError as e:
                raise PreferenceFileError(f"{self.path}, {where}: {e} This file should hold only records "
                                          "written by RankingStore; fix or delete that line.") from None
            records.append(record)
        return records

    def done_keys(self) -> set[Key]:
        """(prompt, tuple(completions)) of every item already ranked or skipped."""
        return {item_key(record) for record in self.records()}

    def _append(self, record: dict) -> None:
        check_ranking_record(record)  # a bad ranking never reaches the file
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as f:  # a+: every write goes to the end; reading the tail is allowed
            self._end_cut_off_line(f)
            f.write(line)
            f.flush()
            os.fsync(f.fileno())  # past Python's and the OS's buffers: on disk even if the machine dies next

    def _end_cut_off_line(self, f) -> None:
        """If the file does not end with a newline, make it, so that our line does not glue onto the last.

        A last line that is not valid JSON was cut off by a crash: it is moved to <name>.cut (kept, not
        lost) and cut from the store, so that the store stays valid JSON lines.
        """
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        start = data.rfind(b"\n") + 1
        try:
            json.loads(data[start:])
            f.write(b"\n")  # a whole record that only lacks its newline (an editor removed it)
        except ValueError:
            cut_path = self.path.with_name(self.path.name + ".cut")
            with open(cut_path, "ab") as cut_file:
                cut_file.write(data[start:] + b"\n")
            f.truncate(start)
            warnings.warn(f"{self.path}: the last line was cut off (a kernel that died while writing it?); "
                          f"moved it to {cut_path} and went on.", stacklevel=4)


# -----------------------------------------------------------------------------
# ranking without a person


def rank_with(annotator_rank_fn: Callable[[list[str]], list[int]] | Any, items: Iterable[dict],
              store: RankingStore | str | Path, annotator_name: str = "simulated") -> list[dict]:
    """Rank items ({"prompt", "completions"}) with a function instead of a person; returns the new records.

    annotator_rank_fn(texts) -> indices, best first, where texts[i] = prompt + completions[i]; an object
    with a .rank(texts) method (a simulated annotator) works too. Items already ranked or skipped in the
    store are left alone, so a run that stopped can be repeated.
    """
    rank_fn = getattr(annotator_rank_fn, "rank", annotator_rank_fn)
    store = store if isinstance(store, RankingStore) else RankingStore(store)
    done = store.done_keys()
    new_records = []
    for n, item in enumerate(items):
        if not isinstance(item, dict) or "prompt" not in item or "completions" not in item:
            raise LabError(f"item {n} must be a dict with 'prompt' and 'completions', got {item!r:.80}.")
        key = item_key(item)
        if key in done:
            continue
        texts = [item["prompt"] + completion for completion in item["completions"]]
        ranking = [int(i) for i in rank_fn(texts)]  # int(): numpy/torch indices from argsort are welcome
        try:
            check_ranking(ranking, len(texts))
        except LabError as e:
            raise LabError(f"the annotator's ranking of item {n}: {e}") from None
        new_records.append(store.add(item["prompt"], item["completions"], ranking, annotator=annotator_name))
        done.add(key)
    return new_records
