"""Tests for rlhf_lab/rankings.py: pair expansion, the append-only store, ranking without a person."""

import itertools
import json
import os

import pytest

from rlhf_lab.preferences import PreferenceFileError
from rlhf_lab.rankings import (RankingStore, check_ranking_record, pairs_from_ranking, rank_with,
                               rankings_to_pairs)
from rlhf_lab.utils import LabError

# -----------------------------------------------------------------------------
# rankings -> pairs


def test_known_ranking_gives_exact_pairs():
    # completion 2 is best, then 0, then 1
    pairs = pairs_from_ranking("Q:", ["a", "b", "c"], [2, 0, 1])
    assert pairs == [
        {"prompt": "Q:", "chosen": "c", "rejected": "a"},
        {"prompt": "Q:", "chosen": "c", "rejected": "b"},
        {"prompt": "Q:", "chosen": "a", "rejected": "b"},
    ]


@pytest.mark.parametrize("K", [2, 3, 4])
def test_every_pair_once_for_every_permutation(K):
    completions = [f"text {i}" for i in range(K)]
    for ranking in itertools.permutations(range(K)):
        pairs = pairs_from_ranking("p", completions, list(ranking))
        assert len(pairs) == K * (K - 1) // 2
        place = {completions[c]: n for n, c in enumerate(ranking)}  # 0 = best
        # each chosen text is ranked above its rejected one, and each unordered pair occurs once
        assert all(place[p["chosen"]] < place[p["rejected"]] for p in pairs)
        assert {frozenset((p["chosen"], p["rejected"])) for p in pairs} == \
            {frozenset(pair) for pair in itertools.combinations(completions, 2)}


def test_identical_completions_give_no_pair():
    pairs = pairs_from_ranking("p", ["same", "other", "same"], [0, 1, 2])
    assert pairs == [{"prompt": "p", "chosen": "same", "rejected": "other"},
                     {"prompt": "p", "chosen": "other", "rejected": "same"}]


@pytest.mark.parametrize("ranking", [[0, 0, 1], [0, 1], [0, 1, 3], [1, 2, 3], [True, False, 2], "012"])
def test_not_a_permutation_is_refused(ranking):
    with pytest.raises(LabError, match="permutation|list of completion indices"):
        pairs_from_ranking("p", ["a", "b", "c"], ranking)


def test_rankings_to_pairs_ignores_skips():
    records = [
        {"prompt": "p1", "completions": ["a", "b", "c", "d"], "ranking": [3, 2, 1, 0]},
        {"prompt": "p2", "completions": ["x", "y"], "ranking": None, "skipped": True},
        {"prompt": "p3", "completions": ["x", "y"], "ranking": [1, 0]},
    ]
    pairs = rankings_to_pairs(records)
    assert pairs.column_names == ["prompt", "chosen", "rejected"]
    assert pairs.num_rows == 6 + 0 + 1
    assert pairs[0] == {"prompt": "p1", "chosen": "d", "rejected": "c"}
    assert pairs[-1] == {"prompt": "p3", "chosen": "y", "rejected": "x"}
    assert "p2" not in pairs["prompt"]


def test_rankings_to_pairs_of_nothing_is_an_empty_string_table():
    pairs = rankings_to_pairs([])
    assert pairs.num_rows == 0
    assert {name: feature.dtype for name, feature in pairs.features.items()} == \
        {"prompt": "string", "chosen": "string", "rejected": "string"}


def test_check_ranking_record_errors():
    with pytest.raises(LabError, match="at least K = 2"):
        check_ranking_record({"prompt": "p", "completions": ["a"], "ranking": [0]})
    with pytest.raises(LabError, match="'skipped' is not true"):
        check_ranking_record({"prompt": "p", "completions": ["a", "b"], "ranking": None})
    with pytest.raises(LabError, match="missing field 'ranking'"):
        check_ranking_record({"prompt": "p", "completions": ["a", "b"]})


# -----------------------------------------------------------------------------
# the store


def test_store_writes_and_fsyncs_one_line_per_submission(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    store = RankingStore(tmp_path / "sub" / "rankings.jsonl")  # the folder does not exist yet

    store.add("p1", ["a", "b", "c"], [1, 2, 0], annotator="ann")
    lines = store.path.read_text().splitlines()
    assert len(lines) == 1 and len(synced) == 1  # on disk before add() returned
    store.skip("p2", ["x", "y"], annotator="ann")
    assert len(store.path.read_text().splitlines()) == 2 and len(synced) == 2

    first, second = (json.loads(line) for line in store.path.read_text().splitlines())
    assert first["prompt"] == "p1" and first["completions"] == ["a", "b", "c"]
    assert first["ranking"] == [1, 2, 0] and first["annotator"] == "ann"
    assert first["time"].endswith("+00:00")  # ISO-8601 UTC
    assert second["ranking"] is None and second["skipped"] is True
    assert store.done_keys() == {("p1", ("a", "b", "c")), ("p2", ("x", "y"))}
    assert [r["prompt"] for r in store.records()] == ["p1", "p2"]


def test_store_refuses_a_bad_ranking_before_writing(tmp_path):
    store = RankingStore(tmp_path / "r.jsonl")
    with pytest.raises(LabError, match="permutation"):
        store.add("p", ["a", "b", "c"], [0, 1, 1])
    assert not store.path.exists()


def test_cut_off_last_line_is_ignored_and_file_untouched(tmp_path):
    store = RankingStore(tmp_path / "r.jsonl")
    store.add("p1", ["a", "b"], [0, 1])
    store.add("p2", ["a", "b"], [1, 0])
    with open(store.path, "ab") as f:
        f.write(b'{"prompt": "p3", "completions": ["a", "b"], "rank')  # the kernel died here
    before, mtime = store.path.read_bytes(), store.path.stat().st_mtime_ns

    with pytest.warns(UserWarning, match="line 3.*cut off"):
        records = store.records()
    assert [r["prompt"] for r in records] == ["p1", "p2"]
    assert store.path.read_bytes() == before and store.path.stat().st_mtime_ns == mtime


def test_writing_after_a_cut_off_line_keeps_the_store_valid(tmp_path):
    store = RankingStore(tmp_path / "r.jsonl")
    store.add("p1", ["a", "b"], [0, 1])
    with open(store.path, "ab") as f:
        f.write(b'{"prompt": "p2", "compl')
    with pytest.warns(UserWarning, match="cut off"):
        store.add("p3", ["a", "b"], [1, 0])
    assert [json.loads(line)["prompt"] for line in store.path.read_text().splitlines()] == ["p1", "p3"]
    assert (tmp_path / "r.jsonl.cut").read_bytes() == b'{"prompt": "p2", "compl\n'  # kept, not lost


def test_bad_line_in_the_middle_names_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    good = json.dumps({"prompt": "p", "completions": ["a", "b"], "ranking": [0, 1]})
    path.write_text(good + "\n" + json.dumps({"prompt": "q", "completions": ["a", "b"], "ranking": [1, 1]})
                    + "\n" + good + "\n")
    with pytest.raises(PreferenceFileError, match=r"r\.jsonl, line 2: .*permutation"):
        RankingStore(path).records()


# -----------------------------------------------------------------------------
# ranking without a person


class ShortestFirst:
    """A simulated annotator that likes short texts."""

    def __init__(self):
        self.calls = []

    def rank(self, texts):
        self.calls.append(texts)
        return sorted(range(len(texts)), key=lambda i: len(texts[i]))


def test_rank_with_ranks_prompt_plus_completion_and_skips_done_items(tmp_path):
    items = [{"prompt": "A:", "completions": [" long one", " s", " mid"]},
             {"prompt": "B:", "completions": [" xx", " x"]}]
    store = RankingStore(tmp_path / "r.jsonl")
    store.skip("B:", [" xx", " x"])  # already done: must not be asked again
    annotator = ShortestFirst()

    new = rank_with(annotator, items, store, "shortest")
    assert annotator.calls == [["A: long one", "A: s", "A: mid"]]
    assert [r["ranking"] for r in new] == [[1, 2, 0]]
    assert new[0]["annotator"] == "shortest"
    assert len(store.records()) == 2

    # a second run finds everything done, and a plain function works as well
    assert rank_with(lambda texts: list(range(len(texts))), items, store.path, "again") == []
    assert len(store.records()) == 2


def test_rank_with_refuses_a_bad_ranking(tmp_path):
    items = [{"prompt": "A:", "completions": ["a", "b", "c"]}]
    with pytest.raises(LabError, match="item 0.*permutation"):
        rank_with(lambda texts: [0, 0, 1], items, tmp_path / "r.jsonl")
    assert not (tmp_path / "r.jsonl").exists()
