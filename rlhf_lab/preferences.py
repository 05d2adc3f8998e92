"""Load preference data from a file as (prompt, chosen, rejected) pairs for the reward model.

Three formats, told apart by the keys of the first record:
  ranking  our own RankingStore JSONL: {"prompt", "completions", "ranking", ...}, expanded to all
           K(K-1)/2 pairs of each ranking (Ouyang et al. 2022, InstructGPT)
  trl      {"prompt", "chosen", "rejected"} strings, as TRL's RewardTrainer takes them; prompt may be absent
  hh       Anthropic HH-RLHF (Bai et al. 2022, arXiv 2204.05862): "chosen" and "rejected" are whole
           dialogues "\\n\\nHuman: ...\\n\\nAssistant: ..."; the prompt is what they share

Files are opened read-only and never changed. A record we cannot use raises PreferenceFileError
naming the file, the line and the fix.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import datasets

from rlhf_lab.utils import LabError

FORMATS = ("ranking", "trl", "hh")
HH_ASSISTANT = "\n\nAssistant:"  # the turn marker of HH-RLHF; the prompt ends with the last shared one
PAIR_FEATURES = datasets.Features({name: datasets.Value("string") for name in ("prompt", "chosen", "rejected")})


class PreferenceFileError(LabError):
    """A preference file has a record we cannot use; the message names the file, the line and the fix."""


# -----------------------------------------------------------------------------
# reading records (shared with RankingStore.records)


def read_records(path: str | Path) -> list[tuple[str, Any]]:
    """(where, record) for each record of a JSONL file (or a .json list); where is "line 7" or "record 7".

    The file is opened read-only. A cut-off last line (no newline at the end and not valid JSON, what a
    kernel that died mid-write leaves) is skipped with a warning; the file itself is left as it is.
    """
    path = Path(path)
    if not path.is_file():
        raise PreferenceFileError(f"{path}: no such file. Check the path (notebooks run in notebooks/, "
                                  "so a relative path starts there).")
    try:
        with open(path, "r", encoding="utf-8-sig") as f:  # -sig: tolerate a byte-order mark from Windows editors
            text = f.read()
    except UnicodeDecodeError as e:
        raise PreferenceFileError(f"{path}: not UTF-8 text ({e}). Save the file as UTF-8 JSON lines.") from None

    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # a .json file that holds JSON lines after all: read it line by line below
        if isinstance(data, list):
            return [(f"record {i + 1}", record) for i, record in enumerate(data)]
        if data is not None:
            raise PreferenceFileError(f"{path}: a .json preference file must hold a list of records "
                                      f"[{{...}}, {{...}}], not a {type(data).__name__}.")

    records = []
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as e:
            if number == len(lines):  # only the last line can lack its "\n": it was cut off while being written
                warnings.warn(f"{path}, line {number}: the last line is cut off (a kernel that died while "
                              "writing it?); it is ignored. The file is left as it is.", stacklevel=3)
                continue
            raise PreferenceFileError(f"{path}, line {number}: not valid JSON ({e.msg} at column {e.colno}). "
                                      "Each line must be one JSON object; fix or delete that line.") from None
    return records


# -----------------------------------------------------------------------------
# the three formats: each turns one record into a list of {"prompt", "chosen", "rejected"}


def detect_format(record: Any) -> str:
    """Which of FORMATS a record is in, from its keys."""
    if not isinstance(record, dict):
        raise LabError(f"a record must be a JSON object {{...}}, not a {type(record).__name__}.")
    if "completions" in record or "ranking" in record:
        return "ranking"
    if "chosen" in record and "rejected" in record:
        # HH-RLHF has no prompt field: the prompt is inside both dialogues
        if "prompt" not in record and isinstance(record["chosen"], str) and HH_ASSISTANT in record["chosen"]:
            return "hh"
        return "trl"
    raise LabError(f"cannot tell the format from the keys {sorted(record)}: expected "
                   "prompt/completions/ranking (our rankings), prompt/chosen/rejected (TRL) or "
                   "chosen/rejected dialogues (HH-RLHF). Pass format='ranking', 'trl' or 'hh' if you know it.")


def _text_field(record: dict, name: str, default: str | None = None) -> str:
    if name not in record:
        if default is not None:
            return default
        raise LabError(f"missing field {name!r} (the record has {sorted(record)}).")
    value = record[name]
    if isinstance(value, list):
        raise LabError(f"field {name!r} is a list (TRL's conversational format?); only plain text is "
                       "supported: join the messages into one string.")
    if not isinstance(value, str):
        raise LabError(f"field {name!r} must be a string, got {type(value).__name__} {value!r}.")
    return value


def _check_pair(chosen: str, rejected: str) -> None:
    if not chosen.strip() or not rejected.strip():
        which = "chosen" if not chosen.strip() else "rejected"
        raise LabError(f"the {which} text is empty; a comparison needs two real responses, "
                       "so delete this record.")
    if chosen == rejected:
        raise LabError("chosen and rejected are the same text, so there is nothing to prefer; "
                       "delete this record.")


def pair_from_trl(record: dict) -> dict:
    """A TRL-style record {"prompt"?, "chosen", "rejected"} as one pair; a missing prompt becomes ""."""
    prompt = _text_field(record, "prompt", default="")
    chosen, rejected = _text_field(record, "chosen"), _text_field(record, "rejected")
    _check_pair(chosen, rejected)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def split_hh_pair(chosen: str, rejected: str) -> dict:
    """Split two HH-RLHF dialogues into the prompt they share and the two responses that follow.

    The prompt runs up to and including the last "\\n\\nAssistant:" that both share, so that
    prompt + chosen and prompt + rejected give back the original dialogues exactly.
    """
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(HH_ASSISTANT)
    if cut < 0:
        raise LabError("chosen and rejected share no '\\n\\nAssistant:' turn, so the prompt cannot be found. "
                       "HH-RLHF dialogues look like '\\n\\nHuman: question\\n\\nAssistant: answer'; "
                       "for other data give a separate 'prompt' field (TRL format).")
    cut += len(HH_ASSISTANT)
    pair = {"prompt": chosen[:cut], "chosen": chosen[cut:], "rejected": rejected[cut:]}
    _check_pair(pair["chosen"], pair["rejected"])
    return pair


def pair_from_hh(record: dict) -> dict:
    """An HH-RLHF record {"chosen", "rejected"} (whole dialogues) as one pair."""
    chosen, rejected = _text_field(record, "chosen"), _text_field(record, "rejected")
    if chosen == rejected:
        _check_pair(chosen, rejected)  # the clearer message: same text, not "no shared prefix"
    return split_hh_pair(chosen, rejected)


def pairs_from_ranking_record(record: dict) -> list[dict]:
    """A RankingStore record as its K(K-1)/2 pairs; a skipped record gives none."""
    # imported here, not at the top: rankings.py reads its store with read_records above
    from rlhf_lab.rankings import check_ranking_record, pairs_from_ranking

    check_ranking_record(record)
    if record.get("ranking") is None:
        return []  # skipped
    return pairs_from_ranking(record["prompt"], record["completions"], record["ranking"])


# -----------------------------------------------------------------------------
# the loader


def load_preferences(path: str | Path, format: str = "auto", skip_bad: bool = False) -> datasets.Dataset:
    """Load a preference file as a Dataset with string columns prompt, chosen, rejected.

    format: "auto" (from the first record's keys), "ranking", "trl" or "hh".
    skip_bad: drop records we cannot use with one warning, instead of stopping at the first
    (useful for large downloaded sets such as HH-RLHF, which hold a few pairs with equal texts).
    """
    path = Path(path)
    if format not in ("auto", *FORMATS):
        raise LabError(f"format={format!r} is not known; use 'auto', 'ranking', 'trl' or 'hh'.")
    records = read_records(path)
    if not records:
        raise PreferenceFileError(f"{path}: the file has no records. Rank some samples first, "
                                  "or check that this is the right file.")
    if format == "auto":
        where, first = records[0]
        try:
            format = detect_format(first)
        except LabError as e:
            raise PreferenceFileError(f"{path}, {where}: {e}") from None

    to_pairs = {"ranking": pairs_from_ranking_record,
                "trl": lambda record: [pair_from_trl(record)],
                "hh": lambda record: [pair_from_hh(record)]}[format]
    columns = {"prompt": [], "chosen": [], "rejected": []}
    bad = []  # (where, message) of records we dropped under skip_bad
    for where, record in records:
        try:
            if not isinstance(record, dict):
                raise LabError(f"a record must be a JSON object {{...}}, not a {type(record).__name__}.")
            pairs = to_pairs(record)
        except LabError as e:
            if not skip_bad:
                raise PreferenceFileError(f"{path}, {where} ({format} format): {e} "
                                          "(Or pass skip_bad=True to drop such records.)") from None
            bad.append((where, str(e)))
            continue
        for pair in pairs:
            for name in columns:
                columns[name].append(pair[name])

    if bad:
        warnings.warn(f"{path}: dropped {len(bad)} of {len(records)} records; the first, at {bad[0][0]}: "
                      f"{bad[0][1]}", stacklevel=2)
    if not columns["prompt"]:
        raise PreferenceFileError(f"{path}: {len(records)} records but no comparisons in them "
                                  "(every ranking was skipped, or every record was bad). Rank some samples.")
    return datasets.Dataset.from_dict(columns, features=PAIR_FEATURES)
