"""Tests for rlhf_lab/widget.py, driving the RankingWidget and the ScoreWidget from Python as the buttons
and keys would."""

import ipywidgets as widgets
import pytest

from rlhf_lab.rankings import RankingStore
from rlhf_lab.utils import LabError
from rlhf_lab.widget import RankingWidget, ordinal

ITEMS = [
    {"prompt": "The film was", "completions": [" great.", " awful.", " fine.", " long."]},
    {"prompt": "I think", "completions": [" so.", " not."]},
    {"prompt": "Once upon", "completions": [" a time", " a hill", " the sea"]},
]


def all_html(widget):
    """The HTML of every HTML widget in the tree: what the learner's browser renders."""
    found = []
    if isinstance(widget, widgets.HTML):
        found.append(widget.value)
    for child in getattr(widget, "children", ()):
        found += all_html(child)
    return found


def test_clicks_save_the_right_ranking(tmp_path):
    ranker = RankingWidget(ITEMS, tmp_path / "r.jsonl", annotator="ada", keyboard=False)
    assert ranker.current_item == ITEMS[0]
    ranker.click(2)
    ranker.click(0)
    assert ranker.current_ranking == [2, 0]
    assert ranker._card_buttons[2].description == "1st" and ranker._card_buttons[0].description == "2nd"
    assert ranker._submit_button.disabled  # two cards still without a place
    with pytest.raises(LabError, match="rank all 4"):
        ranker.submit()
    ranker.click(3)  # K-1 clicks: the last card takes the last place
    assert ranker.current_ranking == [2, 0, 3, 1]
    assert not ranker._submit_button.disabled

    record = ranker.submit()
    assert record["ranking"] == [2, 0, 3, 1] and record["annotator"] == "ada"
    (saved,) = RankingStore(tmp_path / "r.jsonl").records()
    assert saved["prompt"] == "The film was" and saved["ranking"] == [2, 0, 3, 1]
    assert ranker.current_item == ITEMS[1] and ranker.current_ranking == []
    assert ranker.progress_text == "1 of 3 ranked, 0 skipped"


def test_buttons_call_the_same_methods(tmp_path):
    ranker = RankingWidget(ITEMS, tmp_path / "r.jsonl", keyboard=False)
    ranker._card_buttons[1].click()  # ipywidgets' Button.click() runs the on_click handlers
    ranker._card_buttons[3].click()
    ranker._card_buttons[0].click()
    ranker._submit_button.click()
    assert RankingStore(tmp_path / "r.jsonl").records()[0]["ranking"] == [1, 3, 0, 2]


def test_undo(tmp_path):
    ranker = RankingWidget(ITEMS, tmp_path / "r.jsonl", keyboard=False)
    ranker.click(1)
    ranker.click(0)
    ranker.undo()
    assert ranker.current_ranking == [1]
    assert ranker._card_buttons[0].description == "Pick [1]" and not ranker._card_buttons[0].disabled
    ranker.click(3)
    ranker.click(2)  # auto-completes card 0
    assert ranker.current_ranking == [1, 3, 2, 0]
    ranker.undo()  # takes back the click on card 2 and the automatic last place
    assert ranker.current_ranking == [1, 3]
    ranker.undo()
    ranker.undo()
    ranker.undo()  # nothing left: says so, does not fail
    assert ranker.current_ranking == []
    assert "Nothing to undo" in ranker._status.value


def test_clicking_a_ranked_card_again_changes_nothing(tmp_path):
    ranker = RankingWidget(ITEMS, tmp_path / "r.jsonl", keyboard=False)
    ranker.click(1)
    ranker.click(1)
    assert ranker.current_ranking == [1]
    assert "already 1st" in ranker._status.value
    with pytest.raises(LabError, match="no card 7"):
        ranker.click(7)


def test_skip_writes_a_skip_record(tmp_path):
    ranker = RankingWidget(ITEMS, tmp_path / "r.jsonl", keyboard=False)
    ranker.click(0)  # a half-done ranking is dropped by a skip
    ranker.skip()
    (record,) = RankingStore(tmp_path / "r.jsonl").records()
    assert record["prompt"] == "The film was" and record["ranking"] is None and record["skipped"] is True
    assert ranker.current_item == ITEMS[1] and ranker.current_ranking == []
    assert ranker.progress_text == "0 of 3 ranked, 1 skipped"


def test_resume_after_recreating_the_widget(tmp_path):
    ranker = RankingWidget(ITEMS, tmp_path / "r.jsonl", keyboard=False)
    ranker.click(0)
    ranker.click(1)
    ranker.click(2)
    ranker.submit()
    ranker.skip()
    del ranker  # the kernel restarts...

    ranker = RankingWidget(ITEMS, tmp_path / "r.jsonl", keyboard=False)
    assert ranker.current_item == ITEMS[2]
    assert ranker.progress_text == "1 of 3 ranked, 1 skipped"
    assert ranker._progress.value == "1 of 3 ranked, 1 skipped"
    ranker.click(2)
    ranker.click(1)
    ranker.submit()
    assert ranker.current_item is None
    assert ranker.progress_text == "All 3 done: 2 ranked, 1 skipped."
    assert ranker._submit_button.disabled and ranker._skip_button.disabled
    assert any("All done" in value for value in all_html(ranker.widget))
    with pytest.raises(LabError, match="all 3 items are done"):
        ranker.skip()
    assert [r["ranking"] for r in RankingStore(tmp_path / "r.jsonl").records()] == [[0, 1, 2, 3], None, [2, 1, 0]]


def test_model_text_is_escaped(tmp_path):
    items = [{"prompt": "Say <b>hi</b>:", "completions": ["<script>alert(1)</script>", "fine & dandy"]}]
    ranker = RankingWidget(items, tmp_path / "r.jsonl", keyboard=False)
    shown = "\n".join(all_html(ranker.widget))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown
    assert "<script>" not in shown
    assert "<b>Say &lt;b&gt;hi&lt;/b&gt;:</b>" in shown  # the prompt in bold, its own tags as text
    assert "fine &amp; dandy" in shown
    ranker.click(0)  # after a click the card is redrawn, still escaped
    shown = "\n".join(all_html(ranker.widget))
    assert "<script>" not in shown and "1st" in shown


def click_text(ranker, i):
    """A click on card i's text, as ipyevents sends it from the browser (the message its front end sends)."""
    ranker._card_clicks[i]._handle_mouse_msg(None, {"type": "click", "button": 0}, [])


def test_clicking_a_cards_text_picks_it(tmp_path):
    pytest.importorskip("ipyevents")
    ranker = RankingWidget(ITEMS, tmp_path / "r.jsonl", keyboard=False)  # the text listens even without keys
    assert [e.source for e in ranker._card_clicks] == ranker._card_bodies
    assert all(e.watched_events == ["click"] for e in ranker._card_clicks)
    click_text(ranker, 2)
    ranker._card_buttons[0].click()  # text and button mix
    click_text(ranker, 2)  # already placed: said, not counted twice
    assert ranker.current_ranking == [2, 0] and "already 1st" in ranker._status.value
    click_text(ranker, 3)
    first_cards = ranker._card_clicks
    ranker._submit_button.click()
    assert RankingStore(tmp_path / "r.jsonl").records()[0]["ranking"] == [2, 0, 3, 1]
    assert all(e.comm is None for e in first_cards)  # closed with their cards: no models piling up
    assert len(ranker._card_clicks) == 2
    click_text(ranker, 1)  # the next item's cards (K = 2) listen too
    assert ranker.current_ranking == [1, 0]


def test_done_message_shows_no_absolute_path(tmp_path, monkeypatch):
    import rlhf_lab.widget
    from rlhf_lab.widget import ScoreWidget, saved_in

    def done_line(widget):
        return next(v for v in all_html(widget.widget) if "All done" in v)

    monkeypatch.chdir(tmp_path)
    ranker = RankingWidget(ITEMS[1:2], tmp_path / "runs" / "r.jsonl", keyboard=False)
    ranker.skip()
    assert "saved in <code>runs/r.jsonl</code>." in done_line(ranker) and str(tmp_path) not in done_line(ranker)
    scorer = ScoreWidget(TEXTS[:1], "s.jsonl", keyboard=False)
    scorer.skip()
    assert "saved in <code>s.jsonl</code>." in done_line(scorer)

    elsewhere = tmp_path / "elsewhere"
    monkeypatch.chdir(tmp_path / "runs")  # the file is neither under the working directory...
    monkeypatch.setattr(rlhf_lab.widget, "REPO_DIR", elsewhere)  # ...nor in the lab's folder
    assert saved_in(tmp_path / "s.jsonl") == ("<code>s.jsonl</code> (outside this folder and the lab's; "
                                              "<code>widget.store.path</code> gives its full path)")
    monkeypatch.setattr(rlhf_lab.widget, "REPO_DIR", tmp_path)  # a notebook in notebooks/, its file in runs/
    monkeypatch.chdir(elsewhere.mkdir() or elsewhere)
    ranker = RankingWidget(ITEMS[1:2], tmp_path / "runs" / "r2.jsonl", keyboard=False)
    ranker.skip()
    assert "saved in <code>runs/r2.jsonl</code> (in the lab's folder)." in done_line(ranker)
    assert str(tmp_path) not in done_line(ranker)


def test_committed_notebook_02_saves_the_widget_state():
    """A committed notebook shows the widget itself (not "VBox(children=...)") only if its metadata holds the
    widget models; scripts/run_notebooks.py keeps them (store_widget_state)."""
    import json
    from pathlib import Path

    nb = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / "02_rankings.ipynb").read_text())
    state = nb["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    views = [o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] for c in nb["cells"]
             for o in c.get("outputs", []) if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert views and all(state[v]["model_name"] == "VBoxModel" for v in views)
    root = str(Path(__file__).resolve().parents[1])
    assert not any(root in json.dumps(m) or "/home/" in json.dumps(m) for m in state.values())


def test_keys_map_to_the_same_actions(tmp_path):
    ranker = RankingWidget(ITEMS, tmp_path / "r.jsonl", keyboard=False)
    for key in ["3", "9", "1", "Backspace", "2", "4"]:  # "9": no such card, ignored
        ranker._on_key({"type": "keydown", "key": key})
    assert ranker.current_ranking == [2, 1, 3, 0]
    ranker._on_key({"type": "keydown", "key": "Enter"})
    assert RankingStore(tmp_path / "r.jsonl").records()[0]["ranking"] == [2, 1, 3, 0]


def test_keyboard_is_attached_when_ipyevents_is_there(tmp_path):
    pytest.importorskip("ipyevents")
    ranker = RankingWidget(ITEMS, tmp_path / "r.jsonl")
    assert ranker._keyboard is not None and ranker._keyboard.source is ranker.widget
    assert ranker._keyboard.watched_events == ["keydown"]


def test_bad_items_are_refused(tmp_path):
    with pytest.raises(LabError, match="K = 2 to 9"):
        RankingWidget([{"prompt": "p", "completions": ["only one"]}], tmp_path / "r.jsonl")
    with pytest.raises(LabError, match="item 0 must be a dict"):
        RankingWidget([{"prompt": "p"}], tmp_path / "r.jsonl")


def test_ordinal():
    assert [ordinal(n) for n in range(1, 10)] == ["1st", "2nd", "3rd", "4th", "5th", "6th", "7th", "8th", "9th"]


# -----------------------------------------------------------------------------
# score mode (ScoreWidget) and the seconds each label took

TEXTS = [{"prompt": "The film was", "completion": " great."}, {"prompt": "The film was", "completion": " awful."},
         {"prompt": "I think", "completion": " so."}]


class FakeClock:
    """time.monotonic for a test: each call returns the next time, so every label's seconds are known."""

    def __init__(self, *times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


def test_score_clicks_and_keys_are_saved_exactly(tmp_path):
    from rlhf_lab.scores import LabelStore
    from rlhf_lab.widget import ScoreWidget

    path = tmp_path / "ada.jsonl"
    # shown at 100 (created) and 100 (first text), submitted at 106.5; next shown 106.5, ... one call each
    scorer = ScoreWidget(TEXTS, path, annotator="ada", keyboard=False, clock=FakeClock(100, 100, 106.5, 106.5,
                                                                                       110.25, 110.25, 112, 112))
    assert scorer.current_item == TEXTS[0] and scorer._submit_button.disabled
    scorer._score_buttons[2].click()  # the button "3", as the learner clicks it
    scorer._score_buttons[5].click()  # changed their mind: 6
    assert scorer.current_score == 6 and scorer._score_buttons[5].button_style == "success"
    assert "<b>The film was</b> great." in scorer._card.value and ">6</span>" in scorer._card.value
    scorer._submit_button.click()
    for key in ["9", "0", "2", "Backspace", "4", "Enter"]:  # 9 and 0 are off the 1-7 scale: ignored
        scorer._on_key({"type": "keydown", "key": key})
    scorer._skip_button.click()
    assert scorer.current_item is None and scorer.progress_text == "All 3 done: 2 scored, 1 skipped."
    assert all(b.disabled for b in scorer._score_buttons) and scorer._submit_button.disabled

    records = LabelStore(path).records()
    assert [{k: v for k, v in r.items() if k != "time"} for r in records] == [
        {"prompt": "The film was", "completion": " great.", "score": 6, "scale": [1, 7], "annotator": "ada",
         "seconds": 6.5},
        {"prompt": "The film was", "completion": " awful.", "score": 4, "scale": [1, 7], "annotator": "ada",
         "seconds": 3.75},
        {"prompt": "I think", "completion": " so.", "score": None, "scale": [1, 7], "skipped": True,
         "annotator": "ada", "seconds": 1.75},
    ]
    assert path.read_bytes().count(b"\n") == 3  # one line per submission


def test_score_widget_checks_and_resumes(tmp_path):
    from rlhf_lab.widget import ScoreWidget

    scorer = ScoreWidget(TEXTS, tmp_path / "a.jsonl", annotator="ada", keyboard=False, scale=(2, 6))
    with pytest.raises(LabError, match="choose a score from 2 to 6"):
        scorer.submit()
    with pytest.raises(LabError, match="no score 7 on this scale: 2 .worst. to 6"):
        scorer.choose(7)
    scorer.clear()
    assert "Nothing to clear" in scorer._status.value
    scorer.choose(5)
    scorer.submit()
    again = ScoreWidget(TEXTS, tmp_path / "a.jsonl", annotator="ada", keyboard=False, scale=(2, 6))
    assert again.current_item == TEXTS[1] and again.progress_text == "1 of 3 scored, 0 skipped"
    other = ScoreWidget(TEXTS, tmp_path / "a.jsonl", annotator="bo", keyboard=False, scale=(2, 6))
    assert other.current_item == TEXTS[0]  # one file, two learners: each scores every text
    shown = ScoreWidget([{"prompt": "<b>", "completion": "<script>x</script>"}], tmp_path / "b.jsonl", keyboard=False)
    assert "&lt;script&gt;" in shown._card.value and "<script>" not in shown._card.value
    with pytest.raises(LabError, match="does not fit the keys 1-9"):
        ScoreWidget(TEXTS, tmp_path / "c.jsonl", scale=(0, 10))
    with pytest.raises(LabError, match="item 0 must be a dict"):
        ScoreWidget([{"prompt": "p", "completions": ["a", "b"]}], tmp_path / "c.jsonl")


def test_ranking_widget_records_seconds_and_shares_a_class_file(tmp_path):
    from rlhf_lab.scores import LabelStore
    from rlhf_lab.widget import ScoreWidget

    store = LabelStore(tmp_path / "class.jsonl")
    ScoreWidget(TEXTS, store, annotator="ada", keyboard=False).skip()  # a score record in the same file
    ranker = RankingWidget(ITEMS, store, annotator="ada", keyboard=False, clock=FakeClock(0, 0, 12.5, 12.5))
    for i in (3, 1, 0):
        ranker.click(i)
    ranker.submit()
    ranking = store.rankings("ada")[0]
    assert ranking["ranking"] == [3, 1, 0, 2] and ranking["seconds"] == 12.5
    bo = RankingWidget(ITEMS, store, annotator="bo", keyboard=False)
    assert bo.current_item == ITEMS[0]  # ada's ranking is hers: bo ranks the item too
    bo.click(0)
    bo.click(1)
    bo.click(2)
    assert bo.submit()["annotator"] == "bo" and len(store.rankings()) == 2 and len(store.scores()) == 1
