"""Scores of single texts on a fixed scale (1-7), kept beside rankings in one learner's file.

Rankings are what the lab trains on (rankings.py says why); scores are what people are usually asked
for, and a class that gives both to the same texts can measure for itself how much more its rankings
agree (classroom.py). A score record, one JSON object per line:

  {"prompt": str, "completion": str, "score": 5, "scale": [1, 7], "annotator": str, "seconds": 6.2,
   "time": ISO-8601 UTC}

A skip is {"score": null, "skipped": true, ...}. A LabelStore holds score records and ranking records
in one file, written the RankingStore way (one fsynced line per submission, under the file's lock),
so a learner hands in one file and a kernel that dies loses nothing already submitted.
"""

from __future__ import annotations

from typing import Any

from rlhf_lab.rankings import RankingStore, _seconds_field, _utc_now, check_ranking_record, item_key
from rlhf_lab.utils import LabError

SCALE = (1, 7)  # a 7-point Likert scale, as InstructGPT's labelers rated each output (Ouyang et al. 2022)


def check_scale(scale: Any) -> tuple[int, int]:
    """(low, high) of a rating scale: whole numbers, 1 <= low < high <= 9, so that each value is one key."""
    if not (isinstance(scale, (list, tuple)) and len(scale) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in scale)):
        raise LabError(f"scale must be two whole numbers (low, high), e.g. (1, 7), got {scale!r}.")
    low, high = scale
    if not 1 <= low < high <= 9:
        raise LabError(f"scale {low}-{high} does not fit the keys 1-9: use 1 <= low < high <= 9, e.g. (1, 7).")
    return low, high


def check_score_record(record: Any) -> None:
    """Raise LabError (what is wrong, what to do) unless record is a valid score or skip record."""
    if not isinstance(record, dict):
        raise LabError(f"a score record must be a JSON object {{...}}, not a {type(record).__name__}.")
    for name in ("prompt", "completion", "score", "scale"):
        if name not in record:
            raise LabError(f"missing field {name!r} (the record has {sorted(record)}); a score record has "
                           "prompt, completion, score (null for a skip) and scale.")
    for name in ("prompt", "completion"):
        if not isinstance(record[name], str):
            raise LabError(f"field {name!r} must be a string, got {type(record[name]).__name__}.")
    low, high = check_scale(record["scale"])
    score = record["score"]
    if score is None:
        if record.get("skipped") is not True:
            raise LabError("score is null but 'skipped' is not true; give a score, or mark the record as "
                           "skipped with \"skipped\": true.")
    elif not (isinstance(score, int) and not isinstance(score, bool) and low <= score <= high):
        raise LabError(f"score {score!r} is not a whole number on the record's scale {low}-{high}.")
    seconds = record.get("seconds")
    if seconds is not None:
        _seconds_field(seconds)  # a number >= 0, or a LabError that says so


def is_score_record(record: Any) -> bool:
    return isinstance(record, dict) and "score" in record


def check_label_record(record: Any) -> None:
    """A score record or a ranking record (told apart by a "score" field), or a LabError."""
    if is_score_record(record):
        check_score_record(record)
    else:
        check_ranking_record(record)
        if record.get("seconds") is not None:
            _seconds_field(record["seconds"])


def label_key(record: dict) -> tuple:
    """What identifies one label in a class file: its kind, its annotator and its text(s)."""
    if is_score_record(record):
        return "score", record.get("annotator"), record["prompt"], record["completion"]
    return "ranking", record.get("annotator"), *item_key(record)


class LabelStore(RankingStore):
    """One learner's file (or a class's shared file): score records and ranking records, each written
    the RankingStore way. Each annotator's labels are their own: a learner resumes from theirs, and
    add(if_new=True) refuses only a second label of the same text by the same annotator."""

    check_record = staticmethod(check_label_record)
    key = staticmethod(label_key)
    per_annotator = True

    def __repr__(self) -> str:
        return f"LabelStore({str(self.path)!r})"

    def add_score(self, prompt: str, completion: str, score: int | None, scale: tuple[int, int] = SCALE,
                  annotator: str = "learner", if_new: bool = False, seconds: float | None = None) -> dict | None:
        """Write one score (None: a skip) and return the record; None if if_new and this annotator
        scored (or skipped) this text already."""
        record = {"prompt": prompt, "completion": completion, "score": score, "scale": list(check_scale(scale))}
        if score is None:
            record["skipped"] = True
        record |= {"annotator": annotator, "time": _utc_now()} | _seconds_field(seconds)
        return record if self._append(record, if_new) else None

    def scores(self, annotator: str | None = None) -> list[dict]:
        """The score records (skips included), oldest first; only `annotator`'s if given."""
        return [r for r in self.records() if is_score_record(r) and annotator in (None, r.get("annotator"))]

    def rankings(self, annotator: str | None = None) -> list[dict]:
        """The ranking records (skips included), oldest first; only `annotator`'s if given."""
        return [r for r in self.records() if not is_score_record(r) and annotator in (None, r.get("annotator"))]
