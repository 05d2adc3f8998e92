"""Tests for rlhf_lab/preferences.py: three formats, the HH prompt split, errors that name file and line."""

import json

import pytest

from rlhf_lab.preferences import PreferenceFileError, load_preferences, split_hh_pair
from rlhf_lab.rankings import RankingStore
from rlhf_lab.utils import LabError


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def rows(dataset):
    return [dataset[i] for i in range(dataset.num_rows)]


# -----------------------------------------------------------------------------
# the three formats


def test_ranking_file_expands_to_pairs(tmp_path):
    store = RankingStore(tmp_path / "rankings.jsonl")
    store.add("P", ["a", "b", "c"], [1, 0, 2])
    store.skip("Q", ["x", "y"])
    store.add("R", ["x", "y"], [0, 1])
    data = load_preferences(store.path)
    assert data.column_names == ["prompt", "chosen", "rejected"]
    assert rows(data) == [
        {"prompt": "P", "chosen": "b", "rejected": "a"},
        {"prompt": "P", "chosen": "b", "rejected": "c"},
        {"prompt": "P", "chosen": "a", "rejected": "c"},
        {"prompt": "R", "chosen": "x", "rejected": "y"},
    ]


def test_trl_file_with_and_without_prompt(tmp_path):
    path = write_jsonl(tmp_path / "trl.jsonl", [
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "score": 3},  # extra keys are fine
        {"chosen": "Paris is in France.", "rejected": "Paris is in Peru."},
    ])
    assert rows(load_preferences(path)) == [
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
        {"prompt": "", "chosen": "Paris is in France.", "rejected": "Paris is in Peru."},
    ]


def test_trl_json_list(tmp_path):
    path = tmp_path / "trl.json"
    path.write_text(json.dumps([{"prompt": "p", "chosen": "good", "rejected": "bad"}]))
    assert rows(load_preferences(path)) == [{"prompt": "p", "chosen": "good", "rejected": "bad"}]


HH_CHOSEN = ("\n\nHuman: Hi\n\nAssistant: Hello! How can I help?"
             "\n\nHuman: Name a colour.\n\nAssistant: Blue.")
HH_REJECTED = ("\n\nHuman: Hi\n\nAssistant: Hello! How can I help?"
               "\n\nHuman: Name a colour.\n\nAssistant: No.")


def test_hh_split_on_a_hand_made_dialogue():
    pair = split_hh_pair(HH_CHOSEN, HH_REJECTED)
    assert pair == {
        "prompt": "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: Name a colour.\n\nAssistant:",
        "chosen": " Blue.",
        "rejected": " No.",
    }
    assert pair["prompt"] + pair["chosen"] == HH_CHOSEN  # nothing lost or added


def test_hh_split_when_the_responses_share_a_start():
    # the shared prefix runs into the last answer ("I"), but the prompt stops at its "Assistant:"
    pair = split_hh_pair("\n\nHuman: Why?\n\nAssistant: I see.", "\n\nHuman: Why?\n\nAssistant: I do not know.")
    assert pair == {"prompt": "\n\nHuman: Why?\n\nAssistant:", "chosen": " I see.", "rejected": " I do not know."}


def test_hh_file_is_detected_and_split(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])
    data = load_preferences(path)
    assert data.num_rows == 1
    assert data[0]["prompt"].endswith("Name a colour.\n\nAssistant:")
    assert (data[0]["chosen"], data[0]["rejected"]) == (" Blue.", " No.")


def test_loading_never_changes_the_file(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    load_preferences(path)
    load_preferences(path, format="hh")
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime


def test_cut_off_last_line_is_ignored(tmp_path):
    path = tmp_path / "trl.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "cho')
    before = path.read_bytes()
    with pytest.warns(UserWarning, match="line 2"):
        assert load_preferences(path).num_rows == 1
    assert path.read_bytes() == before


# -----------------------------------------------------------------------------
# bad records: each error names the file and the line

GOOD_TRL = {"prompt": "p", "chosen": "good", "rejected": "bad"}
GOOD_RANKING = {"prompt": "p", "completions": ["a", "b", "c"], "ranking": [0, 1, 2]}


@pytest.mark.parametrize("bad, message", [
    ({"prompt": "p", "rejected": "bad"}, "missing field 'chosen'"),
    ({"prompt": "p", "chosen": 3, "rejected": "bad"}, "must be a string"),
    ({"prompt": "p", "chosen": [{"role": "user", "content": "hi"}], "rejected": "bad"}, "is a list"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "same text"),
    ({"prompt": "p", "chosen": "  ", "rejected": "bad"}, "chosen text is empty"),
    ({"prompt": "p", "chosen": "good", "rejected": ""}, "rejected text is empty"),
])
def test_bad_trl_record(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "prefs.jsonl", [GOOD_TRL, GOOD_TRL, bad])
    with pytest.raises(PreferenceFileError, match=message) as error:
        load_preferences(path)
    assert "prefs.jsonl" in str(error.value) and "line 3" in str(error.value)


@pytest.mark.parametrize("bad, message", [
    ({**GOOD_RANKING, "ranking": [0, 0, 2]}, "not a permutation"),
    ({**GOOD_RANKING, "ranking": [1, 2, 3]}, "not a permutation"),
    ({**GOOD_RANKING, "ranking": [0, 1]}, "not a permutation"),
    ({**GOOD_RANKING, "completions": ["a"], "ranking": [0]}, "at least K = 2"),
    ({**GOOD_RANKING, "completions": "abc"}, "list of strings"),
    ({"prompt": "p", "completions": ["a", "b"]}, "missing field 'ranking'"),
])
def test_bad_ranking_record(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "rankings.jsonl", [GOOD_RANKING, bad])
    with pytest.raises(PreferenceFileError, match=message) as error:
        load_preferences(path)
    assert "rankings.jsonl" in str(error.value) and "line 2" in str(error.value)


def test_hh_pair_without_shared_assistant_turn(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": HH_CHOSEN, "rejected": HH_REJECTED},
        {"chosen": "\n\nHuman: A\n\nAssistant: yes", "rejected": "\n\nHuman: B\n\nAssistant: no"},
    ])
    with pytest.raises(PreferenceFileError, match="share no") as error:
        load_preferences(path)
    assert "hh.jsonl" in str(error.value) and "line 2" in str(error.value)


def test_invalid_json(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(GOOD_TRL) + "\n\n" + '{"prompt": "p", "chosen": "a" "rejected": "b"}\n')
    with pytest.raises(PreferenceFileError, match="not valid JSON") as error:
        load_preferences(path)
    assert "prefs.jsonl" in str(error.value) and "line 3" in str(error.value)  # blank lines still count


def test_empty_file_and_missing_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(PreferenceFileError, match="empty.jsonl: the file has no records"):
        load_preferences(tmp_path / "empty.jsonl")
    with pytest.raises(PreferenceFileError, match="no such file"):
        load_preferences(tmp_path / "nowhere.jsonl")


def test_only_skips_is_an_error(tmp_path):
    store = RankingStore(tmp_path / "rankings.jsonl")
    store.skip("p", ["a", "b"])
    with pytest.raises(PreferenceFileError, match="no comparisons"):
        load_preferences(store.path)


def test_unknown_keys_and_unknown_format(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"text": "hello"}])
    with pytest.raises(PreferenceFileError, match="odd.jsonl, line 1: cannot tell the format"):
        load_preferences(path)
    with pytest.raises(LabError, match="format='csv' is not known"):
        load_preferences(path, format="csv")


def test_skip_bad_drops_bad_records_with_a_warning(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [GOOD_TRL, {"prompt": "p", "chosen": "x", "rejected": "x"}])
    with pytest.warns(UserWarning, match="dropped 1 of 2 records.*line 2"):
        data = load_preferences(path, skip_bad=True)
    assert rows(data) == [GOOD_TRL]
