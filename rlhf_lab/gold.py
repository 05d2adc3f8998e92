"""The gold labeler: our simulated human's true taste for "a positive, well-written, non-repetitive review".

It plays the part of the gold reward model in Gao et al. 2022 ("Scaling laws for reward model
overoptimization"): the annotators (annotators.py) perceive it with noise, the learned reward model
only ever sees their rankings, and the lab measures PPO against it. It is transparent on purpose:
`explain(text)` shows each word's contribution and each fluency error, so a learner can see *why* a
text scored as it did.

    total = sentiment - repetition_penalty - fluency_penalty - degenerate_penalty     clipped to [-2, 1.5]

- sentiment = 1.5 * tanh(S / sqrt(n_words)), S the sum of lexicon weights with negation
  ("not good" -> -0.8 * 2, "not bad" -> +0.5 * 2: softened as in VADER, Hutto & Gilbert 2014),
  intensifiers ("very" x1.5, "slightly" x0.5) and contrast ("..., but X": X counts x1.5, what came
  before x0.5). The tanh saturates, so piling up "great" buys almost nothing.
- repetition_penalty from repeated bigrams and repeated content words (distinct-n, Li et al. 2016).
- fluency_penalty: a careful reader's eye for broken English, FLUENCY_WEIGHT x (errors per word).
  The errors, each listed by explain() with the words it is about:
    * rules that hold for any English: a word or phrase said twice in a row ("the the"); an article
      before a word that cannot follow one ("the was", "a of", "the ."); a sentence that ends on an
      article, "and" or "of"; a rating with no number after "out of" ("four out of times"); markup
      tags (`<script>`; IMDB's `<br />` line breaks are read as line breaks, as a reader sees them);
      runs of punctuation ("!!!", ",,"; an ellipsis "..." is fine);
    * against the tiny world's reference (the default): every word pair the tiny corpus never has
      ("acting superb", "the is") and every word it does not know.
- degenerate_penalty for empty, very short, garbled or unterminated text. Length alone costs
  nothing: a long review is judged by what it says and how, not by its word count.

Why a word n-gram reference for fluency, and not a check against the corpus grammar: the grammar
(corpus.py, demonstrations.py) is the tiny world's English by construction: every fluent text of the
world is a path through it, and what a policy writes when it breaks (two words swapped, "four out of
times", "the the the screenplay") leaves it at once. The set of word pairs and triples of 22,000
texts of that grammar asks the same question ("could the grammar have written this?") as a parser
would, but in a table anyone can look into: each error names the words that were never seen together,
and set lookups keep gold at tens of thousands of texts per second. A parser for the template grammar
would be as long as the generator; an n-gram model with back-off from triples to pairs is the
classic, transparent answer (Katz 1987; Jurafsky & Martin, ch. 3).

Ordinary English is not a path through the tiny grammar (about 30% of the word pairs of a hand-written
IMDB-style review never occur in the tiny corpus), so the reference is a setting: "tiny" (the default)
for the tiny world, "english" for anything else, where only the rules that hold for any English apply.
`set_reference` / `reference()` choose it; the command line picks "english" when the prompts are not
the tiny world's, and summary.json records which reference judged the run.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import re
from functools import lru_cache

from rlhf_lab import lexicon

SENTIMENT_SCALE = 1.5  # sentiment term lies in (-1.5, 1.5); the best total is 1.5
NEGATION_WINDOW = 3  # a negator flips sentiment words among the next 3 words ("not a good film")
FLIP_POSITIVE = -0.8  # "not good" is nearly as negative as "bad" ...
FLIP_NEGATIVE = -0.5  # ... but "not bad" is only mildly positive
CONTRAST_AFTER, CONTRAST_BEFORE = 1.5, 0.5  # "the plot is thin, but the acting is superb"
MIN_WORDS = 4  # shorter texts are degenerate
UNTERMINATED = 1.25  # a review that breaks off mid-sentence is not a finished review: more than the
# sentiment a cut can gain by dropping the rest (98% of cut copies of held-out reviews score below the
# whole review; 1.0: 94%, the old 0.3: under 80%)
FLUENCY_WEIGHT = 3.0  # penalty per error per word: one error in a 20-word review costs 0.15
FLUENCY_MIN_WORDS = 10  # errors of shorter texts count as if the text had 10 words
FLUENCY_MAX = 1.5  # text that is nothing but errors loses this much
TOTAL_RANGE = (-2.0, 1.5)
REFERENCES = ("tiny", "english")

# Function words do not count as repetition: "the ... the" is English, "great ... great" is not.
STOPWORDS = frozenset("""
    a an the and or but so of to in on at by for with from as is are was were be been being it its
    it's this that these those i me my we our you your he she his her they them their who which
    what there here have has had do does did not no very just than then too also all one some
    about into out up over
""".split())

# The closed classes the English rules read. Articles and the possessives that are never pronouns
# ("his" and "her" can end a sentence: "the choice was his"), and the words no English puts after them.
ARTICLES = frozenset("a an the my your its our their".split())
AUXILIARIES = frozenset("""
    is are was were am be been being has have had does did isn't aren't wasn't weren't hasn't haven't
    hadn't doesn't didn't
""".split())  # not "can", "will", "must": nouns too ("a must see")
PREPOSITIONS = frozenset("of to in on at by for with from into about than".split())
CONJUNCTIONS = frozenset("and or but nor".split())
PRONOUNS = frozenset("i he she we they me him them it".split())
NOT_AFTER_ARTICLE = ARTICLES | AUXILIARIES | PREPOSITIONS | CONJUNCTIONS | PRONOUNS
NOT_BEFORE_END = ARTICLES | frozenset("and or of".split())  # "the acting is the." "... four out of."
REPEAT_SPAN = 6  # tokens: a phrase of 4 words with a comma or two in it
DOUBLES_OK = frozenset({("had",), ("that",)})  # "she had had enough", "I know that that is true"
NUMBERS = frozenset("one two three four five six seven eight nine ten".split())

_SENTENCE_END = frozenset(".!?;")
_CLAUSE_END = frozenset(",:")
_PUNCT = _SENTENCE_END | _CLAUSE_END
_ODD_CHAR = re.compile(r"[^A-Za-z0-9\s.,!?;:'\"’()\-]")
_LINE_BREAK = re.compile(r"<\s*br\s*/?\s*>", re.IGNORECASE)
_TAG = re.compile(r"<\s*/?\s*[A-Za-z][^<>]{0,200}>")
_PUNCT_RUN = re.compile(r"[.,!?;:](?:\s*[.,!?;:])+")


_NO_VOWEL = re.compile(r"[aeiouy]")
_TRIPLE_LETTER = re.compile(r"(.)\1\1")
_DIGIT, _LETTER = re.compile(r"\d"), re.compile(r"[a-z]")


@lru_cache(maxsize=1 << 16)  # the same few thousand words come back in every text
def _is_garbage(word: str) -> bool:
    """A token no English review would hold: no vowel, a letter thrice in a row, letters mixed with
    digits, or absurdly long."""
    if word.isdigit():
        return False
    letters = word.replace("'", "")
    return (
        (len(letters) > 1 and not _NO_VOWEL.search(letters))
        or _TRIPLE_LETTER.search(letters) is not None
        or (_DIGIT.search(letters) is not None and _LETTER.search(letters) is not None)
        or len(letters) > 20
    )


# -----------------------------------------------------------------------------
# reading the text as a reader does


def read(text: str) -> tuple[str, list[str], list[str]]:
    """(plain text, tags, punctuation runs): line-break tags become line breaks, HTML entities
    characters, other tags are taken out (and returned: each is a fluency error), runs of
    punctuation are returned as found."""
    text = html.unescape(_LINE_BREAK.sub("\n", text))
    tags = _TAG.findall(text)
    plain = _TAG.sub(" ", text)
    runs = [r for r in _PUNCT_RUN.findall(plain) if r != "..."]
    return plain, tags, runs


def tokens_of(plain: str) -> list[str]:
    """lexicon.tokenize, with each run of punctuation read as its first mark ("great!!!" -> great !)."""
    out: list[str] = []
    for tok in lexicon.tokenize(plain):
        if tok in _PUNCT and out and out[-1] in _PUNCT:
            continue
        out.append(tok)
    return out


# -----------------------------------------------------------------------------
# the components


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


def said_once(tokens: list[str]) -> tuple[list[str], list[str]]:
    """(tokens, repeats): every word or phrase said twice in a row (up to 4 words, commas inside
    allowed: "the acting is fine, the acting is fine,") is kept once, as a reader does not take
    "great great" for twice the praise; repeats lists what was said twice."""
    out: list[str] = []
    repeats: list[str] = []
    for tok in tokens:
        out.append(tok)
        for k in range(1, REPEAT_SPAN + 1):
            if len(out) >= 2 * k and out[-k - 1] == tok and out[-k:] == out[-2 * k:-k] \
                    and out[-k][0].isalnum() and not any(t in _SENTENCE_END for t in out[-k:]) \
                    and tuple(out[-k:]) not in DOUBLES_OK:
                repeats.append(" ".join(out[-2 * k:]).replace(" ,", ","))
                del out[-k:]
                break
    return out, repeats


def sentiment_term(tokens: list[str]) -> tuple[float, float, list[tuple[str, float]]]:
    """(sentiment, raw sum, contributions) of a token list read once (said_once)."""
    contributions = sentiment_contributions(tokens)
    raw = sum(v for _, v in contributions)
    n_words = sum(t[0].isalnum() for t in tokens)
    return SENTIMENT_SCALE * math.tanh(raw / math.sqrt(max(n_words, MIN_WORDS))), raw, contributions


def sentiment(text: str) -> float:
    """The sentiment term alone, in (-1.5, 1.5): what the review says, however it is written."""
    return sentiment_term(said_once(tokens_of(read(text)[0]))[0])[0]


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


def english_errors(tokens: list[str], repeats: list[str], tags: list[str],
                   runs: list[str]) -> list[tuple[str, str]]:
    """(kind, where) for each break of a rule that holds for any English; `repeats` from said_once."""
    errors = [("markup", tag) for tag in tags] + [("punctuation run", run.replace(" ", "")) for run in runs]
    errors += [("said twice", r) for r in repeats]
    n = len(tokens)
    for i, tok in enumerate(tokens):
        if tok not in ARTICLES and tok not in NOT_BEFORE_END and tok != "out":
            continue
        nxt = tokens[i + 1] if i + 1 < n else None
        if tok in ARTICLES and (nxt is None or nxt in NOT_AFTER_ARTICLE or nxt in _PUNCT):
            errors.append(("word after an article", f"{tok} {nxt or '<end>'}"))
        elif tok in NOT_BEFORE_END and nxt in _SENTENCE_END:
            errors.append(("sentence ends on", f"{tok} {nxt}"))
        if tok == "out" and i > 0 and (tokens[i - 1] in NUMBERS or tokens[i - 1].isdigit()) \
                and nxt == "of":
            after = tokens[i + 2] if i + 2 < n else None
            if after is None or not (after in NUMBERS or after.isdigit()):
                errors.append(("rating without a number", f"{tokens[i - 1]} out of {after or '<end>'}"))
    return errors


# -----------------------------------------------------------------------------
# the tiny world's reference: every word pair and triple of its corpus


_reference = {"value": "tiny"}


def set_reference(value: str) -> None:
    """How fluency is judged: "tiny" (the default: the English rules and the tiny corpus's word pairs
    and triples) or "english" (the English rules alone: for hub data, whose English the tiny corpus
    does not hold)."""
    if value not in REFERENCES:
        raise ValueError(f"the gold labeler's reference is one of {', '.join(REFERENCES)}, got {value!r}")
    _reference["value"] = value


def get_reference() -> str:
    return _reference["value"]


@contextlib.contextmanager
def reference(value: str):
    """set_reference(value) inside the block, the setting before it restored after."""
    before = _reference["value"]
    set_reference(value)
    try:
        yield
    finally:
        _reference["value"] = before


def reference_for(data: str | None) -> str:
    """The reference for a run on `data` (a prompt or dataset name): "tiny" for the tiny world."""
    return "tiny" if data in (None, "tiny") else "english"


def word_classes() -> dict[str, str]:
    """The corpus grammar's open slots, as word classes: a word the grammar draws from a pool (a first
    name, a surname, a person, an adjective, a degree word, an aspect noun) stands for its pool.

    The grammar fills each slot freely, so "Tessa Keller" or "a penniless beekeeper" are as fluent
    as the combinations its 22,000 texts happen to hold; a pair of classes seen once ("a first name,
    then a surname") vouches for every pair of their words. A pair of words in the wrong order stays
    an error: the grammar never puts a surname before a first name, or an adjective before "is".
    """
    from rlhf_lab import corpus

    def last_words(pool):  # "lead actress" fills the slot; "actress" is the word that varies
        return {entry.split()[-1].lower() for entry in pool}

    adjectives = set()
    for aspect in corpus.ASPECTS.values():
        adjectives |= last_words(aspect.positive) | last_words(aspect.negative)
    adjectives |= last_words(corpus.POSITIVE_OVERALL) | last_words(corpus.NEGATIVE_OVERALL)
    pools = [  # the first pool a word is in decides its class
        ("<first name>", last_words(corpus.FIRST_NAMES)),
        ("<surname>", last_words(corpus.LAST_NAMES)),
        ("<person>", last_words([noun for noun, _ in corpus.PEOPLE])),
        ("<person adjective>", last_words(corpus.PERSON_ADJ) | last_words(corpus.AGELESS_ADJ)),
        ("<aspect>", set().union(*(last_words(a.nouns) for a in corpus.ASPECTS.values()))),
        ("<degree>", last_words(corpus.INTENSIFIERS) | last_words(corpus.EXTREME_INTENSIFIERS)
         | last_words(corpus.DIMINISHERS) | last_words(corpus.ATTRIBUTIVE_INTENSIFIERS)),
        ("<adjective>", adjectives),
    ]
    classes: dict[str, str] = {}
    for name, words in pools:
        for word in words:
            classes.setdefault(word, name)
    for word, name in list(classes.items()):
        if name in ("<first name>", "<surname>"):
            classes.setdefault(word + "'s", name + "'s")  # "Tessa Keller's score"
    return classes


@lru_cache(maxsize=1)
def tiny_ngrams() -> tuple[frozenset, frozenset, dict[str, str]]:
    """(words, pairs, classes) of the tiny corpus: its training reviews and demonstrations, each text
    framed by <s> and </s>; `pairs` holds the word pairs and the class pairs (word_classes) it has.
    Built once per process from data/ (about half a second)."""
    from rlhf_lab.utils import DATA_DIR, LabError

    classes = word_classes()
    words, pairs = set(), set()
    files = [DATA_DIR / "reviews" / "train.jsonl", DATA_DIR / "demonstrations" / "train.jsonl"]
    for path in files:
        if not path.is_file():
            raise LabError(f"the gold labeler reads the tiny corpus from {path}, which is missing; remake it "
                           "with `python -m rlhf_lab.corpus --seed 0 --out data` (and rlhf_lab.demonstrations), "
                           "or judge with gold.set_reference('english').")
        with path.open(encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                text = row["text"] if "text" in row else row["prompt"] + row["completion"]
                seq = ["<s>", *tokens_of(read(text)[0]), "</s>"]
                words.update(seq)
                pairs.update(zip(seq, seq[1:]))
                cls = [classes.get(w, w) for w in seq]
                pairs.update(zip(cls, cls[1:]))
    return frozenset(words), frozenset(pairs), classes


def tiny_errors(tokens: list[str]) -> list[tuple[str, str]]:
    """(kind, where) for each word the tiny corpus does not know and each pair it never has, as words
    or as classes (^ marks the start of the text, $ its end)."""
    words, pairs, classes = tiny_ngrams()
    errors = []
    previous = "<s>"
    for tok in [*tokens, "</s>"]:
        if tok not in words:
            errors.append(("unknown word", tok))
        elif previous in words and (previous, tok) not in pairs \
                and (classes.get(previous, previous), classes.get(tok, tok)) not in pairs:
            errors.append(("pair never seen", f"{'^' if previous == '<s>' else previous} {'$' if tok == '</s>' else tok}"))
        previous = tok
    return errors


def fluency(tokens: list[str], repeats: list[str], tags: list[str], runs: list[str],
            n_words: int) -> tuple[float, list[tuple]]:
    """(penalty, errors): FLUENCY_WEIGHT x errors per word, at most FLUENCY_MAX."""
    errors = english_errors(tokens, repeats, tags, runs)
    if _reference["value"] == "tiny":
        errors += tiny_errors(tokens)
    penalty = min(FLUENCY_MAX, FLUENCY_WEIGHT * len(errors) / max(n_words, FLUENCY_MIN_WORDS))
    return penalty, errors


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
        penalty += UNTERMINATED
        reasons.append("does not end a sentence")
    return penalty, reasons


# -----------------------------------------------------------------------------
# public API


def explain(text: str) -> dict:
    """Every component of the gold score, so a notebook can show why a text scored as it did."""
    plain, tags, runs = read(text)
    tokens = tokens_of(plain)
    words = [t for t in tokens if t[0].isalnum()]
    once, repeats = said_once(tokens)
    sentiment_value, raw, contributions = sentiment_term(once)
    repetition = repetition_penalty(words)
    fluency_term, errors = fluency(tokens, repeats, tags, runs, len(words))
    degenerate, reasons = degenerate_penalty(plain, words)
    total = min(TOTAL_RANGE[1], max(TOTAL_RANGE[0], sentiment_value - repetition - fluency_term - degenerate))
    return {
        "sentiment": sentiment_value,
        "repetition_penalty": repetition,
        "fluency_penalty": fluency_term,
        "degenerate_penalty": degenerate,
        "total": total,
        "raw_sentiment": raw,  # before length normalisation and tanh
        "n_words": len(words),
        "contributions": contributions,  # [(word, weighted polarity), ...]
        "fluency_errors": errors,  # [(kind, the words), ...]
        "fluency_reference": _reference["value"],
        "degenerate_reasons": reasons,
    }


def gold_score(text: str) -> float:
    """The gold labeler's score of one text, roughly in [-2, 1.5]; higher is better."""
    return explain(text)["total"]


def gold_scores(texts: list[str]) -> list[float]:
    return [gold_score(t) for t in texts]
