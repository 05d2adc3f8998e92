"""Load preference data from a file as (prompt, chosen, rejected) pairs for the reward model.

Three formats, told apart by the keys of the first record:
  ranking  our own RankingStore JSONL: {"prompt", "completions", "ranking", ...}, expanded to all
           K(K-1)/2 pairs of each ranking (Ouyang et al. 2022, InstructGPT)
  trl      {"prompt", "chosen", "rejected"} strings, as TRL's RewardTrainer takes them; prompt may be absent
  hh       Anthropic HH-RLHF (Bai et al. 2022, arXiv 2204.05862): "chosen" and "rejected" are whole
           dialogues "\\n\\nHuman: ...\\n\\nAssistant: ..."; the prompt is what they share, up to the
           last "Assistant:" turn both have (turns separated by one newline work too)

Files are opened read-only and never changed; a gzip-compressed file (HH-RLHF ships as .jsonl.gz) is
read as it is. A record we cannot use raises PreferenceFileError naming the file, the line and the fix,
with one exception: HH-RLHF as shipped holds a few pairs whose reply is empty (a single space) or the
same on both sides; those are dropped by default, with a warning that counts them.
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
HH_TURN = "\nAssistant:"  # what the split looks for: HH's marker, and dialogues with one newline per turn
PAIR_FEATURES = datasets.Features({name: datasets.Value("string") for name in ("prompt", "chosen", "rejected")})


class PreferenceFileError(LabError):
    """A preference file has a record we cannot use; the message names the file, the line and the fix."""


class UnusablePair(LabError):
    """A well-formed record whose two responses cannot be compared: one is empty, or both are the same."""


# -----------------------------------------------------------------------------
# reading records (shared with RankingStore.records)


DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".txt", ".parquet")  # what the loaders read (each may end in .gz)


def _describe_folder(path: Path) -> str:
    names = sorted(p.name for p in path.iterdir())[:8]
    return ", ".join(names) if names else "nothing"


def read_bytes(path: str | Path) -> bytes:
    """A data file's bytes, gunzipped if it is gzip-compressed (Anthropic ships HH-RLHF as .jsonl.gz):
    told by its first two bytes, not its name. Errors name the file and say what to do."""
    import gzip

    path = Path(path)
    if path.is_dir():
        raise PreferenceFileError(f"{path} is a folder, not a file (it holds {_describe_folder(path)}); name "
                                  "the data file inside it.")
    if not path.is_file():
        raise PreferenceFileError(f"{path}: no such file. Check the path (notebooks run in notebooks/, "
                                  "so a relative path starts there).")
    with open(path, "rb") as f:  # read-only: a loader never changes a user's file
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise PreferenceFileError(f"{path}: the gzip-compressed file is cut off or damaged ({e}); "
                                      "download or copy it again.") from None
    return data[3:] if data[:3] == b"\xef\xbb\xbf" else data  # a byte-order mark from a Windows editor


def _decoded_lines(path: Path, data: bytes) -> list[str]:
    """The file's lines as text; a line that is not UTF-8 is named, with the column of its first bad byte."""
    lines = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise PreferenceFileError(f"{path}, line {number}, column {e.start + 1}: not UTF-8 text (byte "
                                      f"0x{raw[e.start]:02x}). Save the file as UTF-8, or fix that line.") from None
    return lines


def _looks_cut_off(text: str, err: json.JSONDecodeError, opening: str = "{") -> bool:
    """JSON that a writer was killed in the middle of: valid as far as it goes, then the text ends (in a
    string, or after a value). Anything else (a word, a stray comma in the middle) is a real mistake."""
    return text.strip().startswith(opening) and (err.msg.startswith("Unterminated string")
                                                 or err.pos >= len(text.rstrip()))


def _json_list(path: Path, text: str) -> list[tuple[str, Any]]:
    """The records of a .json file that holds one list [{...}, {...}]."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if _looks_cut_off(text, e, opening="["):
            raise PreferenceFileError(f"{path}: the JSON list is cut off: it ends at line {e.lineno} before its "
                                      "closing ']' (was the file written to the end?). Write it again, or close "
                                      "the list by hand.") from None
        raise PreferenceFileError(f"{path}, line {e.lineno}, column {e.colno}: not valid JSON ({e.msg}); fix "
                                  "that place in the list.") from None
    if not isinstance(data, list):
        raise PreferenceFileError(f"{path}: a .json preference file must hold a list of records "
                                  f"[{{...}}, {{...}}], not a {type(data).__name__}.")
    return [(f"record {i + 1}", record) for i, record in enumerate(data)]


def read_records(path: str | Path) -> list[tuple[str, Any]]:
    """(where, record) for each record of a JSONL file (or a .json list); where is "line 7" or "record 7".

    The file is opened read-only, gzip-compressed or not. A cut-off last line (no newline at the end,
    and valid JSON as far as it goes: what a kernel that died mid-write leaves) is skipped with a
    warning; the file itself is left as it is. Every other problem names the file and the line.
    """
    path = Path(path)
    lines = _decoded_lines(path, read_bytes(path))
    suffix = path.suffixes[-2] if path.suffix == ".gz" and len(path.suffixes) > 1 else path.suffix
    if suffix == ".json" and "\n".join(lines).lstrip().startswith("["):
        return _json_list(path, "\n".join(lines))
    if suffix == ".json":
        try:
            data = json.loads("\n".join(lines))
        except json.JSONDecodeError:
            data = None  # a .json file that holds JSON lines after all: read it line by line below
        if data is not None:
            raise PreferenceFileError(f"{path}: a .json preference file must hold a list of records "
                                      f"[{{...}}, {{...}}], not a {type(data).__name__}.")

    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as e:
            # only the last line can lack its "\n", and only a record cut short looks like one
            if number == len(lines) and _looks_cut_off(line, e):
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
        # HH-RLHF has no prompt field: the prompt is inside both dialogues (one newline per turn is
        # taken as HH too, not as TRL with an empty prompt, which would train on whole dialogues)
        if "prompt" not in record and isinstance(record["chosen"], str) and HH_TURN in record["chosen"]:
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
        raise UnusablePair(f"the {which} text is empty; a comparison needs two real responses, "
                           "so delete this record.")
    if chosen == rejected:
        raise UnusablePair("chosen and rejected are the same text, so there is nothing to prefer; "
                           "delete this record.")


def pair_from_trl(record: dict) -> dict:
    """A TRL-style record {"prompt"?, "chosen", "rejected"} as one pair; a missing prompt becomes ""."""
    prompt = _text_field(record, "prompt", default="")
    chosen, rejected = _text_field(record, "chosen"), _text_field(record, "rejected")
    _check_pair(chosen, rejected)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def split_hh_pair(chosen: str, rejected: str) -> dict:
    """Split two HH-RLHF dialogues into the prompt they share and the two responses that follow.

    The prompt runs up to and including the last "\\n\\nAssistant:" (or "\\nAssistant:") that both
    share, so that prompt + chosen and prompt + rejected give back the original dialogues exactly.
    """
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(HH_TURN)
    if cut < 0:
        raise LabError("chosen and rejected share no '\\n\\nAssistant:' turn, so the prompt cannot be found. "
                       "HH-RLHF dialogues look like '\\n\\nHuman: question\\n\\nAssistant: answer'; "
                       "for other data give a separate 'prompt' field (TRL format).")
    cut += len(HH_TURN)
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


def load_preferences(path: str | Path, format: str = "auto", skip_bad: bool | None = None) -> datasets.Dataset:
    """Load a preference file as a Dataset with string columns prompt, chosen, rejected.

    format: "auto" (from the first record's keys), "ranking", "trl" or "hh".
    skip_bad: True drops every record we cannot use, with one warning, instead of stopping at the
    first; False stops at the first. None (the default) stops too, except for HH-RLHF's pairs whose
    reply is empty or the same on both sides: Anthropic's files hold a few (four in the harmless-base
    test split have a single-space reply), so they are dropped with a warning that counts them.
    A ranking file in which the same annotator ranked the same item twice, differently, is refused:
    which of the two is meant? (Twice the same is counted once.)
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
    if format == "ranking":
        from rlhf_lab.rankings import without_duplicate_rankings

        records = without_duplicate_rankings(records, str(path), drop_contradictions=bool(skip_bad))

    to_pairs = {"ranking": pairs_from_ranking_record,
                "trl": lambda record: [pair_from_trl(record)],
                "hh": lambda record: [pair_from_hh(record)]}[format]
    columns = {"prompt": [], "chosen": [], "rejected": []}
    bad = []  # (where, message) of records we dropped
    for where, record in records:
        try:
            if not isinstance(record, dict):
                raise LabError(f"a record must be a JSON object {{...}}, not a {type(record).__name__}.")
            pairs = to_pairs(record)
        except LabError as e:
            known_quirk = skip_bad is None and format == "hh" and isinstance(e, UnusablePair)
            if not (skip_bad or known_quirk):
                raise PreferenceFileError(f"{path}, {where} ({format} format): {e} "
                                          "(Or pass skip_bad=True to drop such records.)") from None
            bad.append((where, str(e)))
            continue
        for pair in pairs:
            for name in columns:
                columns[name].append(pair[name])

    if bad:
        why = (" whose two replies are empty or the same (HH-RLHF as shipped holds a few; pass skip_bad=False "
               "to stop at them instead)") if skip_bad is None else ""
        warnings.warn(f"{path}: dropped {len(bad)} of {len(records)} records{why}; the first, at {bad[0][0]}: "
                      f"{bad[0][1]}", stacklevel=2)
    if not columns["prompt"]:
        raise PreferenceFileError(f"{path}: {len(records)} records but no comparisons in them "
                                  "(every ranking was skipped, or every record was bad). Rank some samples.")
    return datasets.Dataset.from_dict(columns, features=PAIR_FEATURES)
