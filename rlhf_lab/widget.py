"""Jupyter widgets to label samples, saving each label at once: rank K completions of a prompt, best
first (RankingWidget), or score one text at a time on a fixed scale, 1-7 by default (ScoreWidget).

Click the cards from best to worst (each shows its place, "1st", "2nd", ...), then Submit; Undo takes
back the last click, Skip moves on without a ranking. A click anywhere on a card counts, on its text
as on its button (the text hears the click through ipyevents). Everything goes through a RankingStore,
so re-creating the widget on the same file carries on where the learner stopped. With ipyevents
installed, keys work while the mouse is over the widget: 1-9 pick a card, Enter submits, Backspace undoes.

The widget can be driven from Python (click, undo, skip, submit), which is how the tests use it;
the buttons call the same methods. Each ranking records the seconds it took (from the item's showing
to Submit), so that a class can count what its labels cost.

ScoreWidget shows one text at a time with a button per value of the scale: click one (or press its
digit), then Submit (or Enter); Backspace clears the choice. Scores and rankings of a class go to one
scores.LabelStore file per learner (classroom.py); the same lock, fsync and resume as above.

Submit reads the file again before it writes (under the store's lock): if another kernel or notebook
ranked this item meanwhile, the widget says so and moves on instead of adding a second ranking. If the
disk refuses the write (full, read-only), the widget says so in red and keeps the ranking on screen,
so the learner can submit it again.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Callable, Iterable

import ipywidgets as widgets

from rlhf_lab.rankings import Key, RankingStore, item_key
from rlhf_lab.scores import SCALE, LabelStore, check_scale, is_score_record
from rlhf_lab.utils import REPO_DIR, LabError

MAX_K = 9  # one digit key per card; InstructGPT ranked K = 4..9
GREEN = "#2e7d32"


def ordinal(n: int) -> str:
    """1 -> "1st", 2 -> "2nd", 3 -> "3rd", 4 -> "4th" (enough for K <= 9)."""
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def card_html(prompt: str, completion: str, number: int, place: int | None) -> str:
    """One card's text as HTML: its key number or its place, the prompt in bold, then the completion.

    Model text is escaped: a completion holding "<script>" is shown as those characters, never run.
    """
    if place is None:
        badge = f'<span style="color:#888">[{number}]</span>'
    else:
        badge = (f'<span style="background:{GREEN};color:white;border-radius:4px;padding:1px 6px">'
                 f'{ordinal(place)}</span>')
    return (f'<div style="white-space:pre-wrap;overflow-wrap:anywhere;line-height:1.4;padding:8px 8px 4px;'
            f'cursor:pointer">{badge} <b>{html.escape(prompt)}</b>{html.escape(completion)}</div>')


def saved_in(path: str | Path) -> str:
    """Where a label file is, as HTML for the "All done" line, never as this machine's absolute path (it
    would end up in the committed notebook and its saved widget state): relative to the working
    directory when the file is under it, else relative to the lab's folder (runs/02_rankings/...), else
    only its name, and where to find the rest."""
    path = Path(path).resolve()
    for base, where in ((Path.cwd().resolve(), ""), (REPO_DIR.resolve(), " (in the lab's folder)")):
        try:
            return f"<code>{html.escape(str(path.relative_to(base)))}</code>{where}"
        except ValueError:
            pass
    return (f"<code>{html.escape(path.name)}</code> (outside this folder and the lab's; "
            f"<code>widget.store.path</code> gives its full path)")


def _check_items(items: Iterable[dict]) -> list[dict]:
    """Items as a list of {"prompt", "completions"}, each once, with 2 <= K <= 9 completions."""
    checked, seen = [], set()
    for n, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) \
                or not isinstance(item.get("completions"), (list, tuple)) \
                or not all(isinstance(c, str) for c in item["completions"]):
            raise LabError(f"item {n} must be a dict {{'prompt': str, 'completions': [str, ...]}}, "
                           f"got {item!r:.100}.")
        if not 2 <= len(item["completions"]) <= MAX_K:
            raise LabError(f"item {n} has {len(item['completions'])} completions; the widget ranks "
                           f"K = 2 to {MAX_K} per prompt (one key per card). Sample fewer, or more.")
        item = {"prompt": item["prompt"], "completions": list(item["completions"])}
        if item_key(item) not in seen:  # the same item twice would be asked twice
            seen.add(item_key(item))
            checked.append(item)
    if not checked:
        raise LabError("there are no items to rank; pass a list of {'prompt', 'completions'} dicts.")
    return checked


class _LabelWidget:
    """What both widgets share: the queue of items (those already in the file left out), the progress line,
    the status line, errors shown in red, the keyboard, the display."""

    widget: widgets.VBox
    _status: widgets.HTML
    items: list[dict]
    _queue: list[dict]
    _position: int  # index into _queue of the item on show
    _skipped: set
    NOUN, VERB, DONE = "items", "rank", "ranked"  # what the messages call an item, labelling it, and labelled

    def _key(self, item: dict):
        raise NotImplementedError

    def _labelled(self) -> set:
        """The keys of the items this annotator has labelled (not skipped), as the file has them."""
        raise NotImplementedError

    def _sync_with_file(self) -> None:
        raise NotImplementedError

    def _clear_choice(self) -> None:
        """Forget the clicks (or the value) chosen for the item on show."""
        raise NotImplementedError

    def _show_item(self) -> None:
        raise NotImplementedError

    @property
    def current_item(self) -> dict | None:
        """The item on show, or None when all are done."""
        return self._queue[self._position] if self._position < len(self._queue) else None

    @property
    def progress_text(self) -> str:
        labelled, skipped, total = len(self._labelled()), len(self._skipped), len(self.items)
        if self.current_item is None:
            return f"All {total} done: {labelled} {self.DONE}, {skipped} skipped."
        return f"{labelled} of {total} {self.DONE}, {skipped} skipped"

    def _next_item(self, message: str) -> None:
        self._position += 1
        self._sync_with_file()  # another kernel may have labelled some of the items meanwhile
        done = self._labelled() | self._skipped
        while self.current_item is not None and self._key(self.current_item) in done:
            self._position += 1  # done in another kernel meanwhile: not asked again
        self._clear_choice()
        self._show_item()
        self._say(message)

    def _require_item(self) -> dict:
        item = self.current_item
        if item is None:
            raise LabError(f"all {len(self.items)} {self.NOUN} are done; nothing is left to {self.VERB} here.")
        return item

    def _say(self, message: str, error: bool = False) -> None:
        text = html.escape(message)
        self._status.value = f'<b style="color:#c62828">{text}</b>' if error else text

    def _safely(self, action, *args) -> None:
        """Run an action from a button or key; a LabError (a full disk included) is shown in the widget,
        in red, not as a traceback in a log the learner never sees; the state stays as it was."""
        try:
            action(*args)
        except LabError as e:
            self._say(str(e), error=True)

    def _on_key(self, event: dict) -> None:
        raise NotImplementedError

    @staticmethod
    def _ipyevents_available() -> bool:
        try:
            import ipyevents  # noqa: F401  (optional: without it the buttons still work)
        except ImportError:
            return False
        return True

    def _attach_keyboard(self):
        from ipyevents import Event

        # ipyevents listens while the mouse is over the widget, and keeps those keys from Jupyter's own
        # shortcuts (Enter would otherwise edit the cell, Backspace...).
        event = Event(source=self.widget, watched_events=["keydown"])
        event.on_dom_event(self._on_key)
        return event

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


class RankingWidget(_LabelWidget):
    """Rank the completions of each item, best first; each ranking or skip goes to store_path at once.

    store_path: a file (a RankingStore), or a store; a class's scores.LabelStore, which other learners
    may share, counts this annotator's rankings only. clock: seconds (time.monotonic; tests pass a fake).
    """

    def __init__(self, items: Iterable[dict], store_path: str | Path | RankingStore, annotator: str = "learner",
                 keyboard: bool = True, clock: Callable[[], float] = time.monotonic):
        self.items = _check_items(items)
        self.store = store_path if isinstance(store_path, RankingStore) else RankingStore(store_path)
        self.annotator = annotator
        self._clock = clock
        self._shown_at = clock()  # when the item on show appeared: its ranking's "seconds" count from here

        self._sync_with_file()  # resume: what this file already holds for these items
        self._queue = [item for item in self.items if item_key(item) not in self._ranked | self._skipped]
        self._position = 0
        self._ranking: list[int] = []  # the clicks so far, best first
        self._auto_filled = False  # the last place was filled for the learner (after K-1 clicks)

        self._use_keyboard = keyboard and self._ipyevents_available()
        self._build()
        self._keyboard = self._attach_keyboard() if self._use_keyboard else None  # kept: it must stay alive
        self._show_item()

    # -------------------------------------------------------------------------
    # state, readable from Python

    @property
    def current_ranking(self) -> list[int]:
        """The cards clicked so far for the current item ({"prompt", "completions"}), best first."""
        return list(self._ranking)

    _key = staticmethod(item_key)

    def _labelled(self) -> set[Key]:
        return self._ranked

    def _clear_choice(self) -> None:
        self._ranking, self._auto_filled = [], False

    # -------------------------------------------------------------------------
    # actions: the buttons and keys call these

    def click(self, i: int) -> None:
        """Give card i (0-based) the next place. After K-1 clicks the last card is placed too."""
        item = self._require_item()
        K = len(item["completions"])
        if not 0 <= i < K:
            raise LabError(f"there is no card {i}: this prompt has {K} completions, 0 to {K - 1}.")
        if i in self._ranking:
            self._say(f"Card {i + 1} is already {ordinal(self._ranking.index(i) + 1)}; Undo to change it.")
            return
        self._ranking.append(i)
        if len(self._ranking) == K - 1:  # only one card left, and only one place: no need to click it
            self._ranking.append(next(j for j in range(K) if j not in self._ranking))
            self._auto_filled = True
        self._say("")
        self._refresh()

    def undo(self) -> None:
        """Take back the last click (and the last place, if it was filled in automatically)."""
        self._require_item()
        if not self._ranking:
            self._say("Nothing to undo.")
            return
        if self._auto_filled:  # otherwise undo would take back the automatic place, which comes straight back
            self._ranking.pop()
            self._auto_filled = False
        self._ranking.pop()
        self._say("")
        self._refresh()

    def skip(self) -> dict | None:
        """Record a skip for the current item and move on (None: the file held the item already)."""
        item = self._require_item()
        record = self.store.skip(item["prompt"], item["completions"], annotator=self.annotator, if_new=True,
                                 seconds=self._clock() - self._shown_at)
        if record is None:
            return self._done_elsewhere(item)
        self._skipped.add(item_key(item))
        self._next_item("Skipped.")
        return record

    def submit(self) -> dict | None:
        """Save the current ranking (once every card has a place) and move on.

        Returns the record, or None if the file already held this item (ranked in another kernel). If
        the disk refuses the write, a LabError says so and the ranking stays, to submit again.
        """
        item = self._require_item()
        K = len(item["completions"])
        if len(self._ranking) < K:
            raise LabError(f"rank all {K} completions before submitting ({len(self._ranking)} of {K} so far).")
        record = self.store.add(item["prompt"], item["completions"], self._ranking, annotator=self.annotator,
                                if_new=True, seconds=self._clock() - self._shown_at)
        if record is None:
            return self._done_elsewhere(item)
        self._ranked.add(item_key(item))
        self._next_item("Saved: " + " > ".join(str(i + 1) for i in record["ranking"]) + ".")
        return record

    def _done_elsewhere(self, item: dict) -> None:
        """The file held this item already (another kernel or notebook wrote it): count it, move on."""
        self._sync_with_file()
        self._next_item("This prompt was ranked (or skipped) already, in another kernel or notebook writing "
                        "to the same file; yours was not added, so it is not counted twice. Next one.")
        return None

    def _own_records(self) -> list[dict]:
        """The ranking records that count as done here: all of a RankingStore's; in a store shared by
        several annotators (per_annotator: a class's LabelStore), this annotator's rankings only."""
        return [r for r in self.store.records() if not is_score_record(r)
                and (not self.store.per_annotator or r.get("annotator") == self.annotator)]

    def _sync_with_file(self) -> None:
        """Ranked and skipped as the file has them now (another writer may have added some)."""
        keys = {item_key(item) for item in self.items}
        records = self._own_records()
        self._ranked = {item_key(r) for r in records if r["ranking"] is not None} & keys
        self._skipped = ({item_key(r) for r in records if r["ranking"] is None} & keys) - self._ranked

    # -------------------------------------------------------------------------
    # display

    def _build(self) -> None:
        keys = " Keys (mouse over the widget): 1-9 pick, Enter submits, Backspace undoes." \
            if self._use_keyboard else ""
        self._header = widgets.HTML(f"<b>Rank the completions, best first:</b> click the cards in order "
                                    f"of preference, then Submit.{keys}")
        self._progress = widgets.Label()
        self._cards = widgets.GridBox(layout=widgets.Layout(
            grid_template_columns="repeat(auto-fit, minmax(260px, 1fr))",  # side by side while they fit
            grid_gap="8px", width="100%"))
        self._undo_button = widgets.Button(description="Undo", icon="undo", tooltip="Backspace")
        self._skip_button = widgets.Button(description="Skip", icon="forward", tooltip="records a skip")
        self._submit_button = widgets.Button(description="Submit", icon="check", button_style="primary",
                                             tooltip="Enter")
        self._undo_button.on_click(lambda _: self._safely(self.undo))
        self._skip_button.on_click(lambda _: self._safely(self.skip))
        self._submit_button.on_click(lambda _: self._safely(self.submit))
        self._status = widgets.HTML()
        self._card_bodies: list[widgets.HTML] = []
        self._card_buttons: list[widgets.Button] = []
        self._card_boxes: list[widgets.VBox] = []
        self._card_clicks: list = []  # an ipyevents Event per card text (empty without ipyevents)
        self.widget = widgets.VBox([
            self._header, self._progress, self._cards,
            widgets.HBox([self._undo_button, self._skip_button, self._submit_button]), self._status])

    def _show_item(self) -> None:
        """Build the cards of the current item (K may differ from item to item)."""
        for old in self._card_clicks + self._card_bodies + self._card_buttons + self._card_boxes:
            old.close()  # drop the old cards' front-end models, or they pile up item after item
        self._card_bodies, self._card_buttons, self._card_boxes, self._card_clicks = [], [], [], []
        self._shown_at = self._clock()
        item = self.current_item
        if item is None:
            self._cards.children = [widgets.HTML(
                f"<b>All done.</b> {len(self._ranked)} rankings and {len(self._skipped)} skips are saved in "
                f"{saved_in(self.store.path)}.")]
        else:
            clickable_text = self._ipyevents_available()
            for i in range(len(item["completions"])):
                # the text grows to the card's full height, so that a click anywhere above the button picks it
                body = widgets.HTML(layout=widgets.Layout(flex="1 1 auto"))
                button = widgets.Button(layout=widgets.Layout(width="auto", margin="0 8px 8px 8px"))
                button.on_click(lambda _, i=i: self._safely(self.click, i))
                if clickable_text:
                    # An HTML widget has no click of its own: ipyevents sends the browser's click on it to
                    # Python. The button is a sibling, not a child, so one click never counts twice.
                    from ipyevents import Event

                    text_click = Event(source=body, watched_events=["click"])
                    text_click.on_dom_event(lambda _, i=i: self._safely(self.click, i))
                    self._card_clicks.append(text_click)
                box = widgets.VBox([body, button])
                self._card_bodies.append(body)
                self._card_buttons.append(button)
                self._card_boxes.append(box)
            self._cards.children = self._card_boxes
        self._refresh()

    def _refresh(self) -> None:
        """Bring the cards, buttons and progress in line with the state."""
        item = self.current_item
        self._progress.value = self.progress_text
        if item is not None:
            for i, completion in enumerate(item["completions"]):
                place = self._ranking.index(i) + 1 if i in self._ranking else None
                self._card_bodies[i].value = card_html(item["prompt"], completion, i + 1, place)
                button = self._card_buttons[i]
                button.description = ordinal(place) if place else f"Pick [{i + 1}]"
                button.button_style = "success" if place else ""
                button.disabled = place is not None
                self._card_boxes[i].layout.border = f"2px solid {GREEN}" if place else "1px solid #bbb"
        done = item is None
        self._undo_button.disabled = done or not self._ranking
        self._skip_button.disabled = done
        self._submit_button.disabled = done or len(self._ranking) < len(item["completions"])

    # -------------------------------------------------------------------------
    # keyboard, if ipyevents is installed

    def _on_key(self, event: dict) -> None:
        key = event.get("key", "")
        item = self.current_item
        if item is None:
            return
        if len(key) == 1 and key in "123456789":
            if int(key) <= len(item["completions"]):
                self._safely(self.click, int(key) - 1)
        elif key == "Enter":
            self._safely(self.submit)
        elif key == "Backspace":
            self._safely(self.undo)


# -----------------------------------------------------------------------------
# score mode: one text at a time, one value of a fixed scale


def score_card_html(prompt: str, completion: str, score: int | None) -> str:
    """The text to score as HTML: the prompt in bold, then the completion, and the chosen score if any.
    Model text is escaped, as on the ranking cards."""
    badge = "" if score is None else (
        f' <span style="background:{GREEN};color:white;border-radius:4px;padding:1px 6px">{score}</span>')
    return (f'<div style="white-space:pre-wrap;overflow-wrap:anywhere;line-height:1.4;padding:8px;'
            f'border:1px solid #bbb">{badge} <b>{html.escape(prompt)}</b>{html.escape(completion)}</div>')


def _check_texts(items: Iterable[dict]) -> list[dict]:
    """Items to score as a list of {"prompt", "completion"}, each once."""
    checked, seen = [], set()
    for n, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) \
                or not isinstance(item.get("completion"), str):
            raise LabError(f"item {n} must be a dict {{'prompt': str, 'completion': str}} (one text to score), "
                           f"got {item!r:.100}.")
        key = item["prompt"], item["completion"]
        if key not in seen:
            seen.add(key)
            checked.append({"prompt": item["prompt"], "completion": item["completion"]})
    if not checked:
        raise LabError("there are no texts to score; pass a list of {'prompt', 'completion'} dicts.")
    return checked


class ScoreWidget(_LabelWidget):
    """Score each text on a fixed scale (1-7 by default), one at a time; each score or skip goes to the
    store (a scores.LabelStore) at once, with the seconds it took.

    The texts come one by one, never side by side: a score is an absolute judgement, which is what a
    class compares with its rankings (classroom.py).
    """

    def __init__(self, items: Iterable[dict], store_path: str | Path | LabelStore, annotator: str = "learner",
                 scale: tuple[int, int] = SCALE, keyboard: bool = True, clock: Callable[[], float] = time.monotonic):
        self.items = _check_texts(items)
        self.store = store_path if isinstance(store_path, LabelStore) else LabelStore(store_path)
        self.annotator = annotator
        self.scale = check_scale(tuple(scale))
        self._clock = clock
        self._shown_at = clock()
        self._sync_with_file()
        self._queue = [item for item in self.items if self._key(item) not in self._scored | self._skipped]
        self._position = 0
        self._choice: int | None = None

        self._use_keyboard = keyboard and self._ipyevents_available()
        self._build()
        self._keyboard = self._attach_keyboard() if self._use_keyboard else None
        self._show_item()

    NOUN, VERB, DONE = "texts", "score", "scored"

    @staticmethod
    def _key(item: dict) -> tuple[str, str]:
        return item["prompt"], item["completion"]

    def _labelled(self) -> set[tuple[str, str]]:
        return self._scored

    def _clear_choice(self) -> None:
        self._choice = None

    # -------------------------------------------------------------------------
    # state, readable from Python (current_item, a {"prompt", "completion"}, and progress_text: _LabelWidget)

    @property
    def current_score(self) -> int | None:
        """The value chosen for the text on show, not submitted yet (None: none chosen)."""
        return self._choice

    # -------------------------------------------------------------------------
    # actions: the buttons and keys call these

    def choose(self, score: int) -> None:
        """Pick a value of the scale for the text on show (another pick replaces it)."""
        self._require_item()
        low, high = self.scale
        if not (isinstance(score, int) and low <= score <= high):
            raise LabError(f"there is no score {score!r} on this scale: {low} (worst) to {high} (best).")
        self._choice = score
        self._say("")
        self._refresh()

    def clear(self) -> None:
        """Take back the chosen value."""
        self._require_item()
        if self._choice is None:
            self._say("Nothing to clear.")
            return
        self._choice = None
        self._say("")
        self._refresh()

    def submit(self) -> dict | None:
        """Save the chosen score and move on; None if the file already held this annotator's score of
        the text (another kernel). A disk that refuses the write: a LabError, and the choice stays."""
        item = self._require_item()
        if self._choice is None:
            low, high = self.scale
            raise LabError(f"choose a score from {low} to {high} before submitting.")
        record = self.store.add_score(item["prompt"], item["completion"], self._choice, self.scale,
                                      annotator=self.annotator, if_new=True, seconds=self._clock() - self._shown_at)
        if record is None:
            return self._done_elsewhere()
        self._scored.add(self._key(item))
        self._next_item(f"Saved: {record['score']}.")
        return record

    def skip(self) -> dict | None:
        """Record a skip for the text on show and move on."""
        item = self._require_item()
        record = self.store.add_score(item["prompt"], item["completion"], None, self.scale, annotator=self.annotator,
                                      if_new=True, seconds=self._clock() - self._shown_at)
        if record is None:
            return self._done_elsewhere()
        self._skipped.add(self._key(item))
        self._next_item("Skipped.")
        return record

    def _done_elsewhere(self) -> None:
        self._next_item("You scored (or skipped) this text already, in another kernel or notebook writing to the "
                        "same file; this one was not added, so it is not counted twice. Next one.")
        return None

    def _sync_with_file(self) -> None:
        """Scored and skipped as the file has them now, for this annotator and these texts."""
        keys = {self._key(item) for item in self.items}
        records = self.store.scores(self.annotator)
        self._scored = {self._key(r) for r in records if r["score"] is not None} & keys
        self._skipped = ({self._key(r) for r in records if r["score"] is None} & keys) - self._scored

    # -------------------------------------------------------------------------
    # display

    def _build(self) -> None:
        low, high = self.scale
        keys = f" Keys (mouse over the widget): {low}-{high} choose, Enter submits, Backspace clears." \
            if self._use_keyboard else ""
        self._header = widgets.HTML(f"<b>Score the text</b> from {low} (worst) to {high} (best), on its own: "
                                    f"how good is it, for the task? Then Submit.{keys}")
        self._progress = widgets.Label()
        self._card = widgets.HTML()
        self._score_buttons = []
        for value in range(low, high + 1):
            button = widgets.Button(description=str(value), layout=widgets.Layout(width="48px"),
                                    tooltip={low: "worst", high: "best"}.get(value, ""))
            button.on_click(lambda _, v=value: self._safely(self.choose, v))
            self._score_buttons.append(button)
        self._skip_button = widgets.Button(description="Skip", icon="forward", tooltip="records a skip")
        self._submit_button = widgets.Button(description="Submit", icon="check", button_style="primary",
                                             tooltip="Enter")
        self._skip_button.on_click(lambda _: self._safely(self.skip))
        self._submit_button.on_click(lambda _: self._safely(self.submit))
        self._status = widgets.HTML()
        scale_row = widgets.HBox([widgets.Label(f"{low} worst"), *self._score_buttons, widgets.Label(f"{high} best")])
        self.widget = widgets.VBox([self._header, self._progress, self._card, scale_row,
                                    widgets.HBox([self._skip_button, self._submit_button]), self._status])

    def _show_item(self) -> None:
        self._shown_at = self._clock()
        self._refresh()

    def _refresh(self) -> None:
        item = self.current_item
        self._progress.value = self.progress_text
        done = item is None
        if done:
            self._card.value = (f"<b>All done.</b> {len(self._scored)} scores and {len(self._skipped)} skips are saved "
                                f"in {saved_in(self.store.path)}.")
        else:
            self._card.value = score_card_html(item["prompt"], item["completion"], self._choice)
        for value, button in zip(range(self.scale[0], self.scale[1] + 1), self._score_buttons):
            button.button_style = "success" if value == self._choice else ""
            button.disabled = done
        self._skip_button.disabled = done
        self._submit_button.disabled = done or self._choice is None

    # -------------------------------------------------------------------------
    # keyboard, if ipyevents is installed

    def _on_key(self, event: dict) -> None:
        key = event.get("key", "")
        if self.current_item is None:
            return
        low, high = self.scale
        if len(key) == 1 and key.isdigit():
            if low <= int(key) <= high:
                self._safely(self.choose, int(key))
        elif key == "Enter":
            self._safely(self.submit)
        elif key == "Backspace":
            self._safely(self.clear)
