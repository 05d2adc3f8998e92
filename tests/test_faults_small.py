"""Issue 12, class 9, the smaller ones: an error after a progress bar starts a line of its own; a
one-line non-JSON file is not "no records"; a cut-off .json list is called cut off; invalid UTF-8
names its line; a folder is called a folder; --data on a folder with only a .md file says so; a
resumed summary.json has no sft.history; the lab's warnings print as one line."""

import json

import pytest
from faults import PPO, RANK, RUN, cli, copy_run, one_line_error

from rlhf_lab.preferences import PreferenceFileError, load_preferences


def test_an_error_after_a_progress_bar_starts_its_own_line(capsys, tiny_run, tmp_path, monkeypatch):
    from rlhf_lab.ppo import TrunkRewardModel

    run = copy_run(tiny_run, tmp_path)
    (run / "04_ppo" / "ppo_result.json").unlink()
    real, calls = TrunkRewardModel.score, {"n": 0}

    def nan_at_step_two(self, prompts, completions, rollout):
        calls["n"] += 1
        scores = real(self, prompts, completions, rollout)
        return scores * float("nan") if calls["n"] == 2 else scores

    monkeypatch.setattr(TrunkRewardModel, "score", nan_at_step_two)
    code, _, err = cli(capsys, "ppo", "--fast", *PPO, "--out", run)
    assert code == 2
    bar, error = err.rstrip("\n").rsplit("\n", 1)
    assert "PPO:  50%" in bar  # the bar had drawn its first update...
    assert error.startswith("rlhf-lab: error: PPO stopped at step 2 of 2: the reward (reward model)")  # ...own line


def test_a_one_line_file_that_is_not_json_is_not_called_empty(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text("chosen,rejected")  # a CSV header, no newline at the end
    with pytest.raises(PreferenceFileError) as error:
        load_preferences(path)
    assert str(error.value).startswith(f"{path}, line 1: not valid JSON (Expecting value at column 1)")


def test_a_cut_off_json_list_is_called_cut_off(tmp_path):
    path = tmp_path / "prefs.json"
    path.write_text('[{"prompt": "p", "chosen": "a", "rejected": "b"},\n {"prompt": "q", "chosen": "c", "rej')
    with pytest.raises(PreferenceFileError) as error:
        load_preferences(path)
    assert str(error.value) == (f"{path}: the JSON list is cut off: it ends at line 2 before its closing ']' (was "
                                "the file written to the end?). Write it again, or close the list by hand.")
    path.write_text('[{"prompt": "p", "chosen": "a" "rejected": "b"}]')  # a real mistake inside: named as one
    with pytest.raises(PreferenceFileError, match=r"prefs\.json, line 1, column 32: not valid JSON \(Expecting "
                                                  r".,. delimiter\)"):
        load_preferences(path)


def test_invalid_utf8_names_its_line_and_column(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "caf\xe9", "chosen": "a", '
                     b'"rejected": "b"}\n')
    with pytest.raises(PreferenceFileError) as error:
        load_preferences(path)
    assert str(error.value) == (f"{path}, line 2, column 16: not UTF-8 text (byte 0xe9). Save the file as UTF-8, "
                                "or fix that line.")


def test_a_folder_is_called_a_folder(tmp_path):
    (tmp_path / "prefs").mkdir()
    (tmp_path / "prefs" / "train.jsonl").write_text("")
    with pytest.raises(PreferenceFileError) as error:
        load_preferences(tmp_path / "prefs")
    assert str(error.value) == (f"{tmp_path / 'prefs'} is a folder, not a file (it holds train.jsonl); name the "
                                "data file inside it.")


def test_data_on_a_folder_with_only_a_readme_says_so(capsys, tmp_path):
    folder = tmp_path / "my-data"
    folder.mkdir()
    (folder / "README.md").write_text("# my reviews\n")
    line = one_line_error(capsys, "sft", "--fast", "--data", folder, "--out", tmp_path / "run")
    assert f"{folder} holds no data files (it has: README.md); the lab reads .jsonl, .json, .csv, .txt" in line
    assert "task.toml" not in line and "save_pretrained" not in line


def test_a_resumed_summary_has_no_sft_history(capsys, tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    assert cli(capsys, "run", *RUN, "--resume", "--out", run)[0] == 0
    resumed, fresh = (json.loads((r / "summary.json").read_text()) for r in (run, tiny_run))
    assert sorted(resumed["sft"]) == sorted(fresh["sft"]) and "history" not in resumed["sft"]


def test_the_labs_warnings_are_one_line_on_the_command_line(capsys, tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    with open(run / "02_rankings" / "rankings.jsonl", "ab") as f:
        f.write(b'{"prompt": "a kernel died her')
    code, _, err = cli(capsys, "rank", "--fast", *RANK[:-1], "17", "--out", run)  # one more ranking
    assert code == 0, err[-2000:]
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert warnings and all(line.startswith("rlhf-lab: warning: ") for line in warnings)
    assert any("the last line was cut off" in line and "rankings.jsonl.cut" in line for line in warnings)
    assert len((run / "02_rankings" / "rankings.jsonl").read_text().splitlines()) == 17
