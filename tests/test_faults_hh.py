"""Issue 12, class 7: HH-RLHF as Anthropic ships it. The .jsonl.gz is read as it is (it was "not
UTF-8"); single-space replies (four in the harmless-base test split) are dropped with a count by
default, not a refusal of the whole file; the README documents the loader. No hub, no download:
small files in the real format ("chosen" and "rejected" whole dialogues of Human/Assistant turns)."""

import gzip
import json
from pathlib import Path

import pytest

from rlhf_lab.preferences import PreferenceFileError, load_preferences


def dialogue(*turns: str) -> str:
    """ "\\n\\nHuman: ...\\n\\nAssistant: ..." from alternating turns, as HH-RLHF writes them."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def hh_records(n: int, single_space_at=(), same_at=()) -> list[dict]:
    records = []
    for i in range(n):
        history = (f"What is {i} plus {i}?", f"It is {2 * i}.", "And doubled?")
        chosen, rejected = dialogue(*history, f"{4 * i}."), dialogue(*history, "I won't answer that.")
        if i in single_space_at:  # as in the official split: "\n\nAssistant:" then one space
            rejected = dialogue(*history) + "\n\nAssistant: "
        if i in same_at:
            rejected = chosen
        records.append({"chosen": chosen, "rejected": rejected})
    return records


def write_gz(path: Path, records: list[dict]) -> Path:
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode("utf-8")))
    return path


def test_the_gzipped_file_loads_as_the_plain_one(tmp_path):
    records = hh_records(5)
    plain = tmp_path / "test.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in records))
    zipped = write_gz(tmp_path / "test.jsonl.gz", records)
    a, b = load_preferences(plain), load_preferences(zipped)
    assert a.to_list() == b.to_list() and len(b) == 5
    assert b[3] == {"prompt": dialogue("What is 3 plus 3?", "It is 6.", "And doubled?") + "\n\nAssistant:",
                    "chosen": " 12.", "rejected": " I won't answer that."}


def test_single_space_replies_are_dropped_with_a_count_by_default(tmp_path):
    path = write_gz(tmp_path / "harmless-base-test.jsonl.gz", hh_records(20, single_space_at=(3, 7, 11, 15)))
    with pytest.warns(UserWarning) as caught:
        pairs = load_preferences(path)
    assert len(pairs) == 16
    message = str(caught[0].message)
    assert message.startswith(f"{path}: dropped 4 of 20 records whose two replies are empty or the same (HH-RLHF "
                              "as shipped holds a few; pass skip_bad=False to stop at them instead)")
    assert "the first, at line 4: the rejected text is empty" in message


def test_skip_bad_false_stops_at_the_first_with_its_line(tmp_path):
    path = write_gz(tmp_path / "test.jsonl.gz", hh_records(20, single_space_at=(3, 7)))
    with pytest.raises(PreferenceFileError) as error:
        load_preferences(path, skip_bad=False)
    assert str(error.value).startswith(f"{path}, line 4 (hh format): the rejected text is empty")


def test_identical_dialogues_are_dropped_too(tmp_path):
    path = write_gz(tmp_path / "test.jsonl.gz", hh_records(6, same_at=(2,)))
    with pytest.warns(UserWarning, match="dropped 1 of 6 records .* line 3: chosen and rejected are the same text"):
        assert len(load_preferences(path)) == 5


def test_a_broken_record_still_stops_the_load_by_default(tmp_path):
    records = hh_records(4)
    records[2] = {"chosen": records[2]["chosen"]}  # no "rejected": not a quirk of the data set, a broken file
    path = write_gz(tmp_path / "test.jsonl.gz", records)
    with pytest.raises(PreferenceFileError, match=r"test\.jsonl\.gz, line 3 \(hh format\): missing field 'rejected'"):
        load_preferences(path)


def test_a_cut_off_gz_says_so(tmp_path):
    path = write_gz(tmp_path / "test.jsonl.gz", hh_records(50))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(PreferenceFileError, match=r"the gzip-compressed file is cut off or damaged .*download or copy"):
        load_preferences(path)


def test_loading_never_changes_the_gz(tmp_path):
    path = write_gz(tmp_path / "test.jsonl.gz", hh_records(8, single_space_at=(1,)))
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    with pytest.warns(UserWarning):
        load_preferences(path)
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime


def test_gz_data_files_load_for_the_stages_too(tmp_path):
    from rlhf_lab.loading import load_texts

    path = tmp_path / "reviews.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "A fine film."}\n{"text": "A dull one."}\n'))
    assert load_texts(path)["text"] == ["A fine film.", "A dull one."]


def test_the_readme_documents_the_hh_loader():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for phrase in ("HH-RLHF", ".jsonl.gz", "load_preferences", "four single-space replies", "skip_bad=False"):
        assert phrase in readme, phrase
