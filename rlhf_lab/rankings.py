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

import contextlib
import errno
import json
import os
import time
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
    the reward model overfits within one epoch. An item that one annotator ranked twice counts once;
    ranked twice differently, it is refused (without_duplicate_rankings).
    """
    if isinstance(records, RankingStore):
        located, source = records.located_records(), str(records.path)
    else:
        located, source = [(f"record {i + 1}", r) for i, r in enumerate(records)], "the rankings"
    columns = {"prompt": [], "chosen": [], "rejected": []}
    for _, record in without_duplicate_rankings(located, source):
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


def without_duplicate_rankings(located: list[tuple[str, Any]], source: str,
                               drop_contradictions: bool = False) -> list[tuple[str, Any]]:
    """The (where, record) list with each (annotator, prompt, completions) ranked once.

    The same ranking twice (a notebook cell run again, two files joined) is kept once, with a warning.
    The same annotator ranking the same item two ways (two kernels on one file) is refused, naming
    both places, unless drop_contradictions, which drops both with a warning. Rankings of one item by
    different annotators are real disagreement and all stay. Skips, and records that are not valid
    rankings, pass through untouched (the caller's checks name their problems).
    """
    first: dict[tuple, tuple[str, Any]] = {}  # key -> (where, ranking) of its first ranking
    kept, repeated, contradicted = [], 0, set()  # contradicted: where the rankings to drop are
    for where, record in located:
        try:
            check_ranking_record(record)
        except LabError:
            kept.append((where, record))  # not a valid ranking: the caller's checks name its problem
            continue
        if record["ranking"] is None:
            kept.append((where, record))  # a skip
            continue
        key = (record.get("annotator"), record["prompt"], tuple(record["completions"]))
        if key not in first:
            first[key] = (where, record["ranking"])
            kept.append((where, record))
        elif first[key][1] == record["ranking"]:
            repeated += 1
        elif drop_contradictions:
            contradicted |= {first[key][0], where}
        else:
            raise PreferenceFileError(
                f"{source}: {first[key][0]} and {where} rank the same prompt and completions differently "
                f"({first[key][1]} and {record['ranking']}), both by annotator {key[0]!r}; which one is meant? "
                "Delete the other one. (Two kernels ranking the same items into one file would do this.)")
    if contradicted:
        kept = [(w, r) for w, r in kept if w not in contradicted]
        warnings.warn(f"{source}: dropped {len(contradicted)} rankings of items that one annotator ranked in "
                      "two different ways (every ranking of each such item).", stacklevel=3)
    if repeated:
        warnings.warn(f"{source}: {repeated} rankings appear twice (same annotator, prompt, completions and "
                      "ranking); each is counted once.", stacklevel=3)
    return kept


# -----------------------------------------------------------------------------
# the store: append-only JSONL, each record on disk before the call returns, one writer at a time

LOCK_TIMEOUT = 30.0  # seconds to wait for another writer; a Submit holds the lock for milliseconds

try:
    import fcntl
except ImportError:  # Windows: msvcrt below
    fcntl = None


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")  # e.g. 2025-01-31T12:00:00+00:00


def _seconds_field(seconds: float | None) -> dict:
    """{"seconds": 12.34} for a record (the time a label took, to a hundredth), or {} if not measured."""
    if seconds is None:
        return {}
    if not (isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and 0 <= seconds < float("inf")):
        raise LabError(f"seconds must be a number >= 0 (how long the label took), got {seconds!r}.")
    return {"seconds": round(float(seconds), 2)}


@contextlib.contextmanager
def _locked(f, exclusive: bool, path: Path):
    """Hold the OS's lock on the open store file f for the block: exclusive for a writer (one at a time,
    so one writer's repair of a cut-off line can never cut another's line in the middle), shared for a
    reader (never in the middle of a write). The OS drops the lock when its process dies, kill -9
    included, so a dead kernel never blocks the next one."""
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        try:
            if fcntl is not None:
                fcntl.flock(f.fileno(), (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            else:  # pragma: no cover (Windows: a lock on the first byte, exclusive only)
                import msvcrt
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            break
        except (BlockingIOError, PermissionError):
            if time.monotonic() > deadline:
                raise LabError(f"{path}: another kernel or process has held this file's lock for "
                               f"{LOCK_TIMEOUT:.0f} s; is one stuck (a paused debugger)? Restart it, then try "
                               "again.") from None
            time.sleep(0.005)
    try:
        yield
    finally:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        else:  # pragma: no cover
            import msvcrt
            f.seek(0)
            msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)


class RankingNotSaved(LabError):
    """The disk refused a record (full, read-only, no permission); nothing of it is in the file."""


_WRITE_PROBLEMS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "your disk quota is used up",
                   errno.EROFS: "the disk is read-only", errno.EACCES: "permission denied",
                   errno.EPERM: "permission denied"}


class RankingStore:
    """Append-only JSONL file of ranking records; each one is on disk (flushed and fsynced) at once,
    so a kernel that dies loses nothing already submitted. Writers take the file's OS lock in turn,
    so two kernels (or the widget and a top-up) can write into one store without losing a record.

    A subclass may hold other records on the same path to disk (scores.LabelStore: scores and
    rankings of a class): it sets what a line must be, what identifies it, and whose records count.
    """

    check_record = staticmethod(check_ranking_record)  # raises LabError unless a record may be a line
    key = staticmethod(item_key)  # what add(if_new=True) looks for: one record per key
    per_annotator = False  # False: an item is done once anyone ranked it (a top-up and the learner share
    # one file); True: each annotator's own records count for them (several learners in one file)

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RankingStore({str(self.path)!r})"

    def add(self, prompt: str, completions: list[str], ranking: list[int], annotator: str = "learner",
            if_new: bool = False, seconds: float | None = None) -> dict | None:
        """Write one ranking (indices into completions, best first) and return the record.

        if_new: read the file again first (under the lock) and write nothing, returning None, if it
        already holds this item (ranked or skipped, by anyone): the widget submits so.
        seconds: how long the ranking took (the widget measures it), kept as "seconds" in the record.
        """
        record = {"prompt": prompt, "completions": list(completions), "ranking": list(ranking),
                  "annotator": annotator, "time": _utc_now()} | _seconds_field(seconds)
        return record if self._append(record, if_new) else None

    def skip(self, prompt: str, completions: list[str], annotator: str = "learner",
             if_new: bool = False, seconds: float | None = None) -> dict | None:
        """Write a skip, so that a resumed session does not ask for this item again (if_new: see add)."""
        record = {"prompt": prompt, "completions": list(completions), "ranking": None, "skipped": True,
                  "annotator": annotator, "time": _utc_now()} | _seconds_field(seconds)
        return record if self._append(record, if_new) else None

    def records(self) -> list[dict]:
        """Every record in the file, oldest first ([] if there is no file yet). Never changes the file."""
        return [record for _, record in self.located_records()]

    def located_records(self) -> list[tuple[str, dict]]:
        """(where, record) for every record, where = "line 7": records() with the line each came from."""
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f, _locked(f, exclusive=False, path=self.path):
            return self._read_unlocked()

    def done_keys(self) -> set[Key]:
        """(prompt, tuple(completions)) of every item already ranked or skipped."""
        return {item_key(record) for record in self.records()}

    def _read_unlocked(self) -> list[tuple[str, dict]]:
        located = []
        for where, record in read_records(self.path):  # skips a cut-off last line, with a warning
            try:
                self.check_record(record)
            except LabError as e:
                raise PreferenceFileError(f"{self.path}, {where}: {e} This file should hold only records "
                                          f"written by {type(self).__name__}; fix or delete that line.") from None
            located.append((where, record))
        return located

    def _append(self, record: dict, if_new: bool = False) -> bool:
        """Write the record's line at the end, under the lock; False if if_new and the item is there."""
        self.check_record(record)  # a bad ranking never reaches the file
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # unbuffered: a write the disk refuses fails here, not later in a buffer's flush at close
            with open(self.path, "a+b", buffering=0) as f, _locked(f, exclusive=True, path=self.path):
                self._end_cut_off_line(f)
                if if_new and self.key(record) in {self.key(r) for _, r in self._read_unlocked()}:
                    return False
                size = f.seek(0, os.SEEK_END)
                try:
                    view = memoryview(line)
                    while view:  # a+: every write goes to the end
                        view = view[f.write(view):]
                    os.fsync(f.fileno())  # past the OS's buffers: on disk even if the machine dies next
                except OSError:
                    f.truncate(size)  # take back a part-written line: the file stays as it was
                    raise
        except OSError as err:
            problem = _WRITE_PROBLEMS.get(err.errno, err.strerror or str(err))
            what = "score" if "score" in record else "ranking"
            raise RankingNotSaved(f"could not save to {self.path}: {problem}. Nothing was written; the {what} "
                                  "is not saved yet. Free some space (or fix the folder's permissions), then "
                                  "submit it again.") from None
        return True

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
