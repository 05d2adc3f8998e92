"""Garbled copies of a text, one kind of damage at a time: what a policy pushed far from its
starting point tends to write, and what the gold labeler (gold.py) must not be fooled by.

    garble("The acting is superb, but the plot is thin.", "swap", seed=0)
    -> "The acting is superb, but the is plot thin."

Each kind changes the text in one place, the way an over-optimised language model breaks it:
"the the screenplay" (a repeated word), "Overall, four out of times." (a broken verdict), a review
cut off mid-sentence. tests/test_gold.py checks that gold prefers the original over each garbled
copy of held-out reviews; notebook 05 shows the same table.
"""

from __future__ import annotations

import random
import re

KINDS = ("repeated word", "repeated phrase", "swapped words", "dropped word", "cut off",
         "broken verdict", "markup", "punctuation run")

# Function words whose loss breaks a sentence without changing what it says. Negators ("not"),
# contrast words ("but") and intensifiers ("very") are left out on purpose: dropping them gives a
# fluent sentence that means something else ("The acting is good."), which no reader can call garbled.
DROPPABLE = frozenset("""
    a an the is are was were be been of to in on at by for with from as it this that my i we
    and who has have had
""".split())
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_VERDICT = re.compile(r"\b(out of )(" + "|".join(NUMBER_WORDS) + r"|\d+)\b", re.IGNORECASE)
MIN_KEPT = 4  # words a cut-off copy keeps at least (gold calls shorter texts degenerate anyway)
TAGS = ("<b>", "</b>", "<i>", "<script>", "</script>", "<div>", "<p>", "<span class=\"x\">", "</a>")
PUNCTUATION_RUNS = ("!!!", "!!", "..!", ",,", ". .", "?!?", ";;", "!?!!", ".,.")

_CHUNK = re.compile(r"\S+")
_CORE = re.compile(r"^([\"'(]*)(.*?)([.,!?;:\"')]*)$")  # leading marks, the word, trailing marks


def _chunks(text: str) -> list[tuple[str, str, str]]:
    """Whitespace-separated chunks as (leading marks, word, trailing marks)."""
    return [_CORE.match(c).groups() for c in _CHUNK.findall(text)]


def _join(chunks: list[tuple[str, str, str]]) -> str:
    return " ".join(a + w + b for a, w, b in chunks if a + w + b)


def _sentence_ends(chunks) -> list[bool]:
    return [any(m in b for m in ".!?") for _, _, b in chunks]


def garble(text: str, kind: str, seed: int = 0) -> str | None:
    """A copy of `text` with one damage of `kind` (one of KINDS), or None if the text offers no place
    for it (a text without a verdict line cannot have a broken one). Same seed, same copy."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; the kinds are {', '.join(KINDS)}")
    rng = random.Random(f"{seed}\x00{kind}\x00{text}")
    chunks = _chunks(text)
    words = [i for i, (_, w, _) in enumerate(chunks) if w]
    if len(words) < 2:
        return None
    ends = _sentence_ends(chunks)

    if kind == "repeated word":
        i = rng.choice(words)
        a, w, b = chunks[i]
        return _join(chunks[:i] + [(a, w, ""), ("", w.lower() if i else w, b)] + chunks[i + 1:])
    if kind == "repeated phrase":
        # 2 to 4 words of one sentence, said twice in a row ("the plot is the plot is thin")
        n = rng.choice((2, 3, 4))
        starts = [i for i in range(len(chunks) - n + 1)
                  if all(chunks[j][1] for j in range(i, i + n)) and not any(ends[j] for j in range(i, i + n - 1))]
        if not starts:
            return None
        i = rng.choice(starts)
        span = chunks[i:i + n]
        first = span[:-1] + [(span[-1][0], span[-1][1], "")]
        return _join(chunks[:i] + first + span + chunks[i + n:])
    if kind == "swapped words":
        # two neighbouring words of one sentence trade places; the punctuation stays where it was
        pairs = [i for i in range(len(chunks) - 1) if chunks[i][1] and chunks[i + 1][1] and not ends[i]
                 and chunks[i][1].lower() != chunks[i + 1][1].lower()]
        if not pairs:
            return None
        i = rng.choice(pairs)
        (a1, w1, b1), (a2, w2, b2) = chunks[i], chunks[i + 1]
        if w1[:1].isupper() and (i == 0 or ends[i - 1]) and not w1.isupper():  # keep the sentence's capital
            w1, w2 = w1[0].lower() + w1[1:], w2[0].upper() + w2[1:]
        return _join(chunks[:i] + [(a1, w2, b1), (a2, w1, b2)] + chunks[i + 2:])
    if kind == "dropped word":
        candidates = [i for i in words if chunks[i][1].lower() in DROPPABLE]
        if not candidates:
            return None
        i = rng.choice(candidates)
        a, _, b = chunks[i]
        rest = chunks[i + 1:]
        if rest and (i == 0 or ends[i - 1]) and rest[0][1]:  # the next word now opens the sentence
            a2, w2, b2 = rest[0]
            rest = [(a + a2, w2[0].upper() + w2[1:], b2)] + rest[1:]
        elif b and chunks[:i]:  # keep the dropped word's trailing punctuation on the word before
            a0, w0, b0 = chunks[i - 1]
            return _join(chunks[:i - 1] + [(a0, w0, b0 + b)] + rest)
        return _join(chunks[:i] + rest)
    if kind == "cut off":
        # stop after a word that does not end its sentence: the review breaks off mid-sentence, with
        # at least MIN_KEPT words left (shorter is "too short", another fault)
        cuts = [i for i in words[MIN_KEPT - 1:] if not ends[i] and i < len(chunks) - 1]
        if not cuts:
            return None
        i = rng.choice(cuts)
        a, w, _ = chunks[i]
        return _join(chunks[:i] + [(a, w, "")])
    if kind == "broken verdict":
        matches = list(_VERDICT.finditer(text))
        if not matches:
            return None
        m = rng.choice(matches)
        wrong = rng.choice(("times", "the", "film", "four four", "it", "of", "out", "", "fourty"))
        return (text[:m.start(2)] + wrong + text[m.end(2):]).replace("  ", " ").replace(" .", ".")
    if kind == "markup":
        i = rng.randrange(len(chunks) + 1)
        tag = rng.choice(TAGS)
        return " ".join([a + w + b for a, w, b in chunks[:i]] + [tag] + [a + w + b for a, w, b in chunks[i:]])
    if kind == "punctuation run":
        marked = [i for i, (_, _, b) in enumerate(chunks) if b]
        i = rng.choice(marked) if marked and rng.random() < 0.7 else rng.choice(words)
        a, w, b = chunks[i]
        return _join(chunks[:i] + [(a, w, rng.choice(PUNCTUATION_RUNS))] + chunks[i + 1:])
    raise AssertionError(kind)  # pragma: no cover


def garbled_pairs(texts: list[str], kinds=KINDS, seed: int = 0) -> list[dict]:
    """{"kind", "original", "garbled"} for every text and kind that has a place for the damage."""
    rows = []
    for i, text in enumerate(texts):
        for kind in kinds:
            g = garble(text, kind, seed=seed + i)
            if g is not None and g != text:
                rows.append({"kind": kind, "original": text, "garbled": g})
    return rows
