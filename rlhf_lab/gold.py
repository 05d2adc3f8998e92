"""The gold labeler: our simulated human's true taste for "a positive, non-repetitive review".

It plays the part of the gold reward model in Gao et al. 2022 ("Scaling laws for reward model
overoptimization"): the annotators (annotators.py) perceive it with noise, the learned reward model
only ever sees their rankings, and the lab measures PPO against it. It is transparent on purpose:
`explain(text)` shows each word's contribution so a learner can see *why* a text scored as it did.

    total = sentiment - repetition_penalty - degenerate_penalty      clipped to [-2, 1.5]

- sentiment = 1.5 * tanh(S / sqrt(n_words)), S the sum of lexicon weights with negation
  ("not good" -> -0.8 * 2, "not bad" -> +0.5 * 2: softened as in VADER, Hutto & Gilbert 2014),
  intensifiers ("very" x1.5, "slightly" x0.5) and contrast ("..., but X": X counts x1.5, what came
  before x0.5). The tanh saturates, so piling up "great" buys almost nothing.
- repetition_penalty from repeated bigrams and repeated content words (distinct-n, Li et al. 2016).
- degenerate_penalty for empty, very short, garbled, unterminated or overlong text.
"""

from __future__ import annotations

import math
import re

from rlhf_lab import lexicon

SENTIMENT_SCALE = 1.5  # sentiment term lies in (-1.5, 1.5); the best total is 1.5
NEGATION_WINDOW = 3  # a negator flips sentiment words among the next 3 words ("not a good film")
FLIP_POSITIVE = -0.8  # "not good" is nearly as negative as "bad" ...
FLIP_NEGATIVE = -0.5  # ... but "not bad" is only mildly positive
CONTRAST_AFTER, CONTRAST_BEFORE = 1.5, 0.5  # "the plot is thin, but the acting is superb"
MIN_WORDS = 4  # shorter texts are degenerate
MAX_WORDS = 60  # longer than any corpus review (45 words) by a margin
TOTAL_RANGE = (-2.0, 1.5)

# Function words do not count as repetition: "the ... the" is English, "great ... great" is not.
STOPWORDS = frozenset("""
    a an the and or but so of to in on at by for with from as is are was were be been being it its
    it's this that these those i me my we our you your he she his her they them their who which
    what there here have has had do does did not no very just than then too also all one some
    about into out up over
""".split())

_SENTENCE_END = frozenset(".!?;")
_CLAUSE_END = frozenset(",:")
_ODD_CHAR = re.compile(r"[^A-Za-z0-9\s.,!?;:'\"’()\-]")


def _is_garbage(word: str) -> bool:
    """A token no English review would hold: no vowel, a letter thrice in a row, letters mixed with
    digits, or absurdly long."""
    if word.isdigit():
        return False
    letters = word.replace("'", "")
    return (
        (len(letters) > 1 and not re.search(r"[aeiouy]", letters))
        or re.search(r"(.)\1\1", letters) is not None
        or (re.search(r"\d", letters) is not None and re.search(r"[a-z]", letters) is not None)
        or len(letters) > 20
    )


# -----------------------------------------------------------------------------
# the three components


def sentiment_contributions(tokens: list[str]) -> list[tuple[str, float]]:
    """(word, weighted polarity) for every sentiment word, after negation, intensity and contrast."""
    out: list[tuple[str, float]] = []
    sentence_start = 0  # index in `out` where the current sentence's contributions begin
    weight, multiplier, negation_left = 1.0, 1.0, 0
    in_concession = False
    for tok in tokens:
        if tok in _SENTENCE_END:
            sentence_start = len(out)
            weight, multiplier, negation_left, in_concession = 1.0, 1.0, 0, False
            continue
        if tok in _CLAUSE_END:
            negation_left, multiplier = 0, 1.0
            if in_concession:  # "Although the plot is thin, | the acting is superb."
                in_concession, weight = False, CONTRAST_AFTER
            continue
        if tok in lexicon.CONTRAST_WORDS:
            # the clause after "but" is what the writer means; discount what came before it
            for i in range(sentence_start, len(out)):
                out[i] = (out[i][0], out[i][1] * CONTRAST_BEFORE)
            weight, negation_left, in_concession = CONTRAST_AFTER, 0, False
            continue
        if tok in lexicon.CONCESSIVE_WORDS:
            weight, in_concession = CONTRAST_BEFORE, True
            continue
        if lexicon.is_negator(tok):
            negation_left = NEGATION_WINDOW
            continue
        scale = lexicon.intensity(tok)
        if scale != 1.0:
            multiplier *= scale
            continue
        value = lexicon.polarity(tok)
        if value:
            value *= multiplier
            if negation_left > 0:
                value *= FLIP_POSITIVE if value > 0 else FLIP_NEGATIVE
            out.append((tok, value * weight))
            multiplier = 1.0
        negation_left = max(0, negation_left - 1)
    return out


def repetition_penalty(words: list[str]) -> float:
    """2 x (repeated-bigram share - 0.1) + 1 x (repeated-content-word share - 0.2), each floored at 0.

    The tolerances let ordinary reviews ("the film ... the film") through untouched.
    """
    if len(words) < 2:
        return 0.0
    bigrams = list(zip(words, words[1:]))
    rep2 = 1.0 - len(set(bigrams)) / len(bigrams)
    content = [w for w in words if w not in STOPWORDS]
    rep1 = 1.0 - len(set(content)) / len(content) if content else 0.0
    return 2.0 * max(0.0, rep2 - 0.1) + 1.0 * max(0.0, rep1 - 0.2)


def degenerate_penalty(text: str, words: list[str]) -> tuple[float, list[str]]:
    """(penalty, reasons) for text that is not a usable review at all."""
    stripped = text.strip()
    if not words:
        return 2.0, ["no words"]
    penalty, reasons = 0.0, []
    if len(words) < MIN_WORDS:  # large enough that "Great." loses to any real positive review
        penalty += 1.5
        reasons.append(f"only {len(words)} words (< {MIN_WORDS})")
    garbage = sum(_is_garbage(w) for w in words) / len(words)
    odd_chars = len(_ODD_CHAR.findall(stripped)) / max(1, len(stripped))
    garbled = max(garbage, odd_chars)
    if garbled > 0.05:
        penalty += min(1.5, 3.0 * garbled)
        reasons.append(f"{garbled:.0%} garbled words or characters")
    if stripped[-1] not in ".!?\"')":
        penalty += 0.3
        reasons.append("does not end a sentence")
    if len(words) > MAX_WORDS:
        penalty += min(1.0, 0.5 + 0.02 * (len(words) - MAX_WORDS))
        reasons.append(f"{len(words)} words (> {MAX_WORDS})")
    return penalty, reasons


# -----------------------------------------------------------------------------
# public API


def explain(text: str) -> dict:
    """Every component of the gold score, so a notebook can show why a text scored as it did."""
    tokens = lexicon.tokenize(text)
    words = [t for t in tokens if t[0].isalnum()]
    contributions = sentiment_contributions(tokens)
    raw = sum(v for _, v in contributions)
    sentiment = SENTIMENT_SCALE * math.tanh(raw / math.sqrt(max(len(words), MIN_WORDS)))
    repetition = repetition_penalty(words)
    degenerate, reasons = degenerate_penalty(text, words)
    total = min(TOTAL_RANGE[1], max(TOTAL_RANGE[0], sentiment - repetition - degenerate))
    return {
        "sentiment": sentiment,
        "repetition_penalty": repetition,
        "degenerate_penalty": degenerate,
        "total": total,
        "raw_sentiment": raw,  # before length normalisation and tanh
        "n_words": len(words),
        "contributions": contributions,  # [(word, weighted polarity), ...]
        "degenerate_reasons": reasons,
    }


def gold_score(text: str) -> float:
    """The gold labeler's score of one text, roughly in [-2, 1.5]; higher is better."""
    return explain(text)["total"]


def gold_scores(texts: list[str]) -> list[float]:
    return [gold_score(t) for t in texts]
