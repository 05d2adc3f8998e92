"""Issue 12, class 5: no ranking is lost. Two writers on one RankingStore (subprocesses, killed with
kill -9 over and over) keep every acknowledged record; the widget reads the file again before it
submits; a full or read-only disk at Submit is shown to the learner and the ranking stays to retry."""

import contextlib
import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults import fill_disk, small_tmpfs

from rlhf_lab.rankings import RankingNotSaved, RankingStore
from rlhf_lab.widget import RankingWidget

# Writers as kernels would be: each adds rankings as fast as it can, and after each add() returns
# (the record is acknowledged) notes the prompt in its own fsynced file. They are forked from one
# "zygote" process that imported rlhf_lab once, so a writer killed with kill -9 is replaced in
# milliseconds, not in the seconds an import of torch and datasets takes.
ZYGOTE = r"""
import os, signal, sys
from rlhf_lab.rankings import RankingStore
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the OS reaps the writers

def write(store, name, acks, size, limit):
    store, pad = RankingStore(store), "x" * int(size)  # long lines take long to write
    with open(acks, "a") as ack:
        for i in range(int(limit)):
            prompt = f"{name}-{os.getpid()}-{i}"
            store.add(prompt, [pad + " a", pad + " b", " c"], [2, 0, 1], annotator=name)
            ack.write(prompt + "\n"); ack.flush(); os.fsync(ack.fileno())

for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        try:
            write(*line.split())
        finally:
            os._exit(0)
    print(pid, flush=True)
"""
WRITER_ENV: dict[str, str] = {}  # e.g. {"PYTHONPATH": an older rlhf_lab}, to see these tests fail on it


class Writers:
    """Start writer processes (forked by the zygote) and kill them with kill -9."""

    def __enter__(self):
        self.zygote = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True, env=os.environ | WRITER_ENV)
        return self

    def start(self, store: Path, name: str, acks: Path, size: int, limit: int) -> int:
        self.zygote.stdin.write(f"{store} {name} {acks} {size} {limit}\n")
        self.zygote.stdin.flush()
        return int(self.zygote.stdout.readline())

    @staticmethod
    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    @staticmethod
    def kill(pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while Writers.alive(pid):
            time.sleep(0.001)

    def wait(self, pid: int, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while self.alive(pid):
            assert time.time() < deadline, "a writer did not finish"
            time.sleep(0.01)

    def __exit__(self, *exc):
        self.zygote.stdin.close()
        self.zygote.wait(timeout=60)


def acknowledged(acks: Path) -> list[str]:
    """The prompts whose add() returned: whole lines only (a kill can cut the last one)."""
    if not acks.exists():
        return []
    text = acks.read_text()
    return [line for line in text.split("\n")[:-1] if line]


def check_store(store: Path, acked: list[str]) -> list[dict]:
    """Every acknowledged record is in the store exactly once, whole; the store reads without error
    (a cut-off line in the middle, glued to another, would be a PreferenceFileError)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a last line cut by the final kill is allowed (never acknowledged)
        records = RankingStore(store).records()
    prompts = [r["prompt"] for r in records]
    assert len(prompts) == len(set(prompts)), "a record was written twice"
    missing = set(acked) - set(prompts)
    assert not missing, f"{len(missing)} acknowledged records were lost: {sorted(missing)[:3]}"
    assert all(r["ranking"] == [2, 0, 1] and r["completions"][2] == " c" for r in records)
    return records


def test_two_writers_lose_nothing(tmp_path):
    store = tmp_path / "rankings.jsonl"
    with Writers() as writers:
        pids = [writers.start(store, name, tmp_path / f"{name}.acks", 300_000, 25) for name in ("widget", "top-up")]
        for pid in pids:
            writers.wait(pid)
    acked = acknowledged(tmp_path / "widget.acks") + acknowledged(tmp_path / "top-up.acks")
    assert len(acked) == 50
    assert len(check_store(store, acked)) == 50


def kill_loop(store: Path, folder: Path, rounds: int, size: int, limit: int, seed: int = 12) -> list[str]:
    """Two writers on one store; each round waits until both have acknowledged a record since they
    (re)started, lets them write a moment longer, then kill -9s one or both, at random, and starts
    them again (a writer that reached `limit` is started again too). Returns the acknowledged prompts.

    The lines are long (two completions of `size` characters): a kill can then land inside a write,
    which the OS may leave half-done, and the other writer meets that half line."""
    rng = random.Random(seed)
    names = ("notebook-02", "notebook-03")
    acks = {name: folder / f"{name}.acks" for name in names}
    with Writers() as writers:
        pids = {name: writers.start(store, name, acks[name], size, limit) for name in names}
        for _ in range(rounds):
            seen = {name: len(acknowledged(acks[name])) for name in names}
            deadline = time.time() + 60
            while time.time() < deadline and not all(
                    len(acknowledged(acks[n])) > seen[n] or not writers.alive(pids[n]) for n in names):
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.05))
            doomed = rng.sample(names, rng.choice([1, 2]))
            for name in names:
                if name in doomed or not writers.alive(pids[name]):
                    writers.kill(pids[name])
                    pids[name] = writers.start(store, name, acks[name], size, limit)
        for pid in pids.values():
            writers.kill(pid)
    return [prompt for name in names for prompt in acknowledged(acks[name])]


def test_two_writers_killed_again_and_again_lose_no_acknowledged_record(tmp_path):
    """kill -9 at random moments, both writers or one, then start them again: forty rounds."""
    store = tmp_path / "rankings.jsonl"
    acked = kill_loop(store, tmp_path, rounds=40, size=100_000, limit=8)
    assert len(acked) >= 40  # they wrote in every round
    check_store(store, acked)
    # and a new writer carries on where they left off, the store still valid
    RankingStore(store).add("after", ["a", "b"], [1, 0])
    assert RankingStore(store).records()[-1]["prompt"] == "after"


def test_a_single_writer_killed_mid_run_loses_nothing(tmp_path):
    store, acks = tmp_path / "rankings.jsonl", tmp_path / "solo.acks"
    with Writers() as writers:
        for _ in range(10):
            before = len(acknowledged(acks))
            pid = writers.start(store, "solo", acks, 100_000, 1000)
            deadline = time.time() + 60
            while time.time() < deadline and len(acknowledged(acks)) < before + 2:
                time.sleep(0.002)
            writers.kill(pid)
    check_store(store, acknowledged(acks))


HOLDER = r"""
import fcntl, sys, time
f = open(sys.argv[1], "a+b")
fcntl.flock(f.fileno(), fcntl.LOCK_EX)
f.write(b'{"prompt": "half a li'); f.flush()  # a writer in the middle of its line
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
f.write(b'ne", "completions": ["a", "b"], "ranking": [0, 1]}\n'); f.flush()
"""


def test_a_writer_waits_for_the_other_writers_line(tmp_path):
    """While one writer holds the lock mid-line, another waits, then neither line is cut."""
    pytest.importorskip("fcntl")
    store = tmp_path / "rankings.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store), "1.0"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    start = time.monotonic()
    RankingStore(store).add("mine", ["x", "y"], [1, 0])
    assert time.monotonic() - start > 0.3  # it waited for the lock
    assert holder.wait(timeout=30) == 0
    assert [r["prompt"] for r in RankingStore(store).records()] == ["half a line", "mine"]
    assert not (tmp_path / "rankings.jsonl.cut").exists()  # nothing was taken for a cut-off line


def test_a_writer_killed_holding_the_lock_blocks_no_one(tmp_path):
    pytest.importorskip("fcntl")
    store = tmp_path / "rankings.jsonl"
    RankingStore(store).add("first", ["x", "y"], [0, 1])
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store), "60"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    holder.send_signal(signal.SIGKILL)  # dies with the lock and half a line
    holder.wait()
    start = time.monotonic()
    with pytest.warns(UserWarning, match="the last line was cut off"):
        RankingStore(store).add("second", ["x", "y"], [1, 0])
    assert time.monotonic() - start < 5  # the OS dropped the dead writer's lock
    assert [r["prompt"] for r in RankingStore(store).records()] == ["first", "second"]
    assert (tmp_path / "rankings.jsonl.cut").read_text() == '{"prompt": "half a li\n'  # kept, not lost


# -----------------------------------------------------------------------------
# the widget: reads the file again before it submits; a refused write stays on screen

ITEMS = [{"prompt": "The film was", "completions": [" great.", " awful.", " fine."]},
         {"prompt": "I think", "completions": [" so.", " not."]}]


def test_the_widget_reads_the_file_again_before_it_submits(tmp_path):
    store = tmp_path / "rankings.jsonl"
    first = RankingWidget(ITEMS, store, annotator="learner", keyboard=False)   # kernel 1
    second = RankingWidget(ITEMS, store, annotator="learner", keyboard=False)  # kernel 2, same file
    for widget in (first, second):
        widget.click(0)
        widget.click(1)
    assert first.submit()["ranking"] == [0, 1, 2]
    second._ranking = [2, 1, 0]  # the other kernel's learner ranked the same item the other way
    assert second.submit() is None  # not written: the file held the item already
    assert "ranked (or skipped) already, in another kernel or notebook" in second._status.value
    assert second.current_item == ITEMS[1] and second.progress_text == "1 of 2 ranked, 0 skipped"
    records = RankingStore(store).records()
    assert [(r["prompt"], r["ranking"]) for r in records] == [("The film was", [0, 1, 2])]


def test_the_widget_skips_an_item_another_kernel_ranked_meanwhile(tmp_path):
    store = tmp_path / "rankings.jsonl"
    widget = RankingWidget(ITEMS, store, keyboard=False)
    RankingStore(store).add("I think", [" so.", " not."], [1, 0], annotator="learner")  # kernel 2, item 2
    widget.click(2)
    widget.click(0)
    widget.submit()
    assert widget.current_item is None  # item 2 is not asked again: it is in the file
    assert widget.progress_text == "All 2 done: 2 ranked, 0 skipped."
    assert len(RankingStore(store).records()) == 2


def test_a_full_disk_at_submit_is_shown_and_the_ranking_kept(tmp_path):
    with small_tmpfs(tmp_path, size="256K") as disk:
        store = disk / "rankings.jsonl"
        widget = RankingWidget(ITEMS, store, keyboard=False)
        widget.click(1)
        widget.click(0)
        filler = fill_disk(disk)
        widget._submit_button.click()  # as the learner clicks it: the error shows in the widget
        status = widget._status.value
        assert "color:#c62828" in status and "could not save to" in status and "the disk is full" in status
        assert "Nothing was written" in status and "submit it again" in status
        assert widget.current_item == ITEMS[0] and widget.current_ranking == [1, 0, 2]  # kept, to retry
        assert not store.exists() or store.read_bytes() == b""  # no part-written line
        filler.unlink()
        widget._submit_button.click()
        assert widget.current_item == ITEMS[1] and "Saved: 2 &gt; 1 &gt; 3." in widget._status.value
        assert [r["ranking"] for r in RankingStore(store).records()] == [[1, 0, 2]]


def test_a_full_disk_takes_back_the_part_written_line(tmp_path):
    with small_tmpfs(tmp_path, size="256K") as disk:
        store = RankingStore(disk / "rankings.jsonl")
        store.add("kept", ["a", "b"], [0, 1])
        before = store.path.read_bytes()
        fill_disk(disk, leave=1000)  # room for part of the next line only
        with pytest.raises(RankingNotSaved, match="the disk is full. Nothing was written"):
            store.add("too big", ["x" * 50_000, "y"], [0, 1])
        assert store.path.read_bytes() == before


def test_a_refused_write_is_a_lab_error_wherever_it_happens(tmp_path, monkeypatch):
    """Without root (no tmpfs): the same path, with the OS's answer simulated at fsync."""
    store = RankingStore(tmp_path / "rankings.jsonl")
    store.add("kept", ["a", "b"], [0, 1])
    before = store.path.read_bytes()

    def refuse(fd):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "fsync", refuse)
    with pytest.raises(RankingNotSaved) as error:
        store.add("refused", ["a", "b"], [1, 0])
    assert str(error.value) == (f"could not save to {store.path}: the disk is read-only. Nothing was written; the "
                                "ranking is not saved yet. Free some space (or fix the folder's permissions), then "
                                "submit it again.")
    assert store.path.read_bytes() == before
    widget = RankingWidget(ITEMS, store.path, keyboard=False)
    widget.click(0)
    widget.click(1)
    widget._submit_button.click()
    assert "the disk is read-only" in widget._status.value and widget.current_ranking == [0, 1, 2]
