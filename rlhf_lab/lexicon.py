"""A small English sentiment lexicon: word -> polarity in [-3, 3], plus negators and intensifiers.

Plain data, no dependencies. The gold labeler (gold.py) scores text with it and the corpus
generator (corpus.py) draws its sentiment words from it, so the two cannot disagree on a word's sign.
Weights follow the spirit of VADER / AFINN (Hutto & Gilbert 2014; Nielsen 2011): 3 for words like
"masterpiece", 2 for "great", 1 for "decent"; tuned here for movie reviews ("slow" and "predictable"
are negative, "gripping" is positive).
"""

from __future__ import annotations

import re

# -----------------------------------------------------------------------------
# polarity weights, grouped by strength so a reader can scan them


def _group(weight: float, words: str) -> dict[str, float]:
    return {w: weight for w in words.split()}


LEXICON: dict[str, float] = {
    # --- positive -----------------------------------------------------------------
    **_group(3.0, """
        masterpiece masterful masterfully masterclass superb superbly brilliant brilliantly
        outstanding excellent excellently amazing amazingly wonderful wonderfully fantastic
        magnificent perfect perfectly perfection flawless stunning stunningly breathtaking
        extraordinary phenomenal exceptional incredible marvelous marvellous sublime unforgettable
        terrific loved love adore adored best gem triumph glorious dazzling astonishing exquisite
        awesome spectacular riveting
    """),
    **_group(2.5, """
        beautiful beautifully gorgeous delightful delight hilarious gripping compelling powerful
        enchanting magical treasure masterly superlative
    """),
    **_group(2.0, """
        great moving memorable impressive impressed enjoyable enjoyed enjoy enjoying engaging
        clever cleverly charming witty fun funny entertaining thrilling exciting touching haunting
        lovely remarkable remarkably fascinating satisfying stirring captivating absorbing
        intriguing inventive convincing nuanced believable likable likeable lovable sympathetic
        immersive evocative stylish elegant striking seamless exhilarating electrifying heartfelt
        heartwarming inspired inspiring skilful skillful treat joy recommended recommend liked good
        favorite favourite classic pleasure beauty charm praise refreshing standout winner
        uplifting poignant epic delicious charismatic magnetic radiant effortless expertly
        hooked rousing vivid splendid admirable gripped laughed
    """),
    **_group(1.5, """
        atmospheric original fresh smart sharp strong solid nice pleasant sweet worth worthwhile
        catchy authentic rich assured confident crisp tender warm wise bold sincere
        genuine playful suspenseful effective better wit layered subtle smile impressively
        thoughtful graceful polished lively endearing
    """),
    **_group(1.0, """
        like fine decent tight brisk swift smooth natural intense complex careful detailed surprising
        committed tense thankfully luckily happily interesting enjoyably competent
    """),
    **_group(0.5, """
        okay ok watchable passable
    """),
    # --- negative -----------------------------------------------------------------
    **_group(-3.0, """
        awful terrible horrible dreadful atrocious abysmal worst waste garbage trash unwatchable
        disaster disastrous hated hate pathetic appalling unbearable insufferable horrendous
        abomination rubbish travesty excruciating
    """),
    **_group(-2.5, """
        painful incompetent cringeworthy hateful
    """),
    **_group(-2.0, """
        bad boring bored bore dull poor poorly weak lame stupid dumb annoying irritating tedious
        tiresome mess disappointing disappointment disappointed letdown wooden lifeless unconvincing
        unfunny ugly shoddy sloppy lazy pretentious uninspired obnoxious incoherent ridiculous
        amateurish fails failed failure flop chore avoid worse nonsense overrated regret unpleasant
        tasteless cringe wasted nonsensical laughable pointless unsatisfying embarrassing
        embarrassingly dislike disliked
    """),
    **_group(-1.5, """
        silly messy forgettable predictable cliched clichéd cliche stiff flat bland crude cheesy
        corny clunky stilted awkward shallow unlikable unlikeable hollow murky drab muddy dreary
        cheap fake aimless clumsy careless stale juvenile repetitive confusing absurd contrived
        derivative muddled convoluted sluggish plodding glacial choppy overlong grating generic
        overbearing rushed baffling hammy forced flimsy shabby asleep yawn mediocre skip overacted
        overwrought manipulative preachy lacking lacks disjointed implausible bloated cardboard
        irritatingly soulless tepid annoyed
    """),
    **_group(-1.0, """
        slow thin uneven intrusive loud abrupt dated tired chaotic confused sadly unfortunately
        meh miss problem problems flaws flawed unnecessary average dragged drags
    """),
}

# -----------------------------------------------------------------------------
# words that change the words after them

# A negator flips the polarity of the next few words ("not good", "never boring").
NEGATORS: frozenset[str] = frozenset("""
    not no never neither nor nothing nobody none hardly barely scarcely without cannot
    isn't wasn't aren't weren't don't doesn't didn't can't couldn't won't wouldn't shouldn't
    hasn't haven't hadn't ain't isnt wasnt arent werent dont doesnt didnt cant couldnt wont
    wouldnt shouldnt hasnt havent hadnt
""".split())

# Multipliers for the next sentiment word: intensifiers > 1, diminishers < 1.
INTENSIFIERS: dict[str, float] = {
    **{w: 1.5 for w in """
        very really extremely truly incredibly genuinely absolutely utterly totally remarkably
        thoroughly deeply hugely so too especially exceptionally seriously completely complete
        total utter highly immensely insanely painfully downright entirely wildly enormously
        most
    """.split()},
    **{w: 1.25 for w in "quite pretty particularly rather real just such simply".split()},
}
DIMINISHERS: dict[str, float] = {
    w: 0.5 for w in "slightly somewhat mildly fairly little bit marginally occasionally".split()
}

# Words after which the rest of the sentence counts more ("..., but the ending is superb").
CONTRAST_WORDS: frozenset[str] = frozenset("but however yet still".split())
# Words that open a subordinate clause that counts less ("Although the plot is thin, ...").
CONCESSIVE_WORDS: frozenset[str] = frozenset("although though while whilst despite".split())

# -----------------------------------------------------------------------------
# tiny helpers

_WORD_RE = re.compile(r"[a-z0-9]+(?:['’][a-z]+)?|[.!?;,:]")


def tokenize(text: str) -> list[str]:
    """Lower-cased words (keeping "wasn't" whole) and the punctuation marks that end clauses."""
    return [t.replace("’", "'") for t in _WORD_RE.findall(text.lower())]


def polarity(word: str) -> float:
    """The word's weight in [-3, 3]; 0.0 for words the lexicon does not know."""
    return LEXICON.get(word.lower(), 0.0)


def is_negator(word: str) -> bool:
    return word.lower().replace("’", "'") in NEGATORS


def intensity(word: str) -> float:
    """How much the word scales the next sentiment word: 1.5 for "very", 0.5 for "slightly", else 1."""
    word = word.lower()
    return INTENSIFIERS.get(word, DIMINISHERS.get(word, 1.0))


# -----------------------------------------------------------------------------
# the same text with its sentiment turned around (notebook 01: what BLEU and ROUGE cannot see)

_BY_WEIGHT: dict[float, list[str]] = {}
for _word, _weight in sorted(LEXICON.items()):
    _BY_WEIGHT.setdefault(_weight, []).append(_word)
_RATING_FLIP = {"one": "four", "two": "three", "three": "two", "four": "one"}


def _opposite(word: str) -> str | None:
    """A lexicon word of the opposite sign and (as near as the lexicon has) the same strength."""
    weight = LEXICON.get(word)
    if not weight:
        return None
    weights = [w for w in _BY_WEIGHT if w * weight < 0]
    target = min(weights, key=lambda w: (abs(w + weight), -abs(w)))
    group, own = _BY_WEIGHT[target], _BY_WEIGHT[weight]
    return group[own.index(word) % len(group)]  # a fixed partner: the same word always flips alike


def flip_sentiment(text: str) -> str:
    """The text with every sentiment word replaced by one of the opposite sign and about the same strength,
    and a rating "X out of four" mirrored (one <-> four, two <-> three); everything else, spacing and
    capitals included, as it was. "The acting was superb. Overall, four out of four." becomes a pan that
    shares all but two of its words with the rave."""
    words = re.split(r"([A-Za-z']+)", text)
    out = []
    for i, piece in enumerate(words):
        lower = piece.lower()
        new = _opposite(lower)
        if lower in _RATING_FLIP and i + 2 < len(words) and words[i + 2].lower() == "out":
            new = _RATING_FLIP[lower]  # the rating's first number ("four out of four": the second stays)
        if new is None:
            out.append(piece)
        else:
            out.append(new.capitalize() if piece[:1].isupper() else new)
    return "".join(out)
