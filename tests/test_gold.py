"""Tests for rlhf_lab/gold.py: the gold labeler's taste, pinned on hand-made sentences."""

import collections
import json
import statistics

import pytest

from rlhf_lab import gold
from rlhf_lab.corpus import generate_reviews
from rlhf_lab.garble import KINDS, garble, garbled_pairs
from rlhf_lab.gold import explain, gold_score, gold_scores
from rlhf_lab.utils import DATA_DIR

VARIED_POSITIVE = "The acting was superb. The score was haunting. I loved every minute of it."  # tiny-world English


def test_positive_beats_negative():
    assert gold_score("The acting was superb.") > 0 > gold_score("The acting was awful.")
    assert gold_score(VARIED_POSITIVE) > 1.0


def test_negation_flips_and_softens():
    good, not_good = gold_score("The acting was good."), gold_score("The acting was not good.")
    assert good > 0 > not_good
    assert gold_score("The film is not bad.") > 0 > gold_score("The film is bad.")
    # fragments: both are floored as unusable reviews (too short, unterminated), the reading still flips
    assert explain("not bad")["sentiment"] > 0 > explain("bad")["sentiment"]
    # softened: "not bad" is weaker praise than "good", "not good" weaker blame than "bad" (the
    # sentiment reading; the tiny corpus never writes "was good", so the total also pays for fluency)
    sentiment = {t: explain(t)["sentiment"] for t in ("The acting was good.", "The acting was not good.",
                                                      "The film is not bad.", "The film is bad.")}
    assert sentiment["The film is not bad."] < sentiment["The acting was good."]
    assert sentiment["The film is bad."] < sentiment["The acting was not good."]
    assert gold_score("The pacing was never boring.") > 0
    assert gold_score("The jokes weren't funny.") < 0
    assert gold_score("I wasn't impressed by the effects.") < 0


def test_intensifiers_and_contrast():
    assert explain("The plot is very clever.")["raw_sentiment"] > explain("The plot is clever.")["raw_sentiment"]
    assert explain("The plot is slightly slow.")["raw_sentiment"] > explain("The plot is slow.")["raw_sentiment"]
    # the clause after "but" (or after an "although" clause) is what the writer means
    assert gold_score("The plot is superb, but the acting is awful.") < 0
    assert gold_score("The acting is awful, but the plot is superb.") > 0
    assert gold_score("Although the plot is thin, the acting is superb.") > 0


def test_repetition_is_penalised_and_sentiment_saturates():
    assert gold_score("great great great great great great.") < gold_score(VARIED_POSITIVE) - 1.0
    repeated = "The acting is great. The acting is great. The acting is great."
    assert explain(repeated)["repetition_penalty"] > 0.5
    assert gold_score(repeated) < gold_score("The acting is great and the music is lovely.")
    assert explain(VARIED_POSITIVE)["repetition_penalty"] == 0.0
    # piling on praise buys little: the tanh is nearly saturated for an ordinary positive review
    piled = ("The acting was superb, brilliant, wonderful, stunning, excellent, gorgeous and perfect. "
             "I loved every minute of it.")
    assert gold_score(piled) - gold_score(VARIED_POSITIVE) < 0.1


def test_degenerate_text_scores_low():
    assert gold_score("") == -2.0
    assert gold_score("   ") == -2.0
    assert gold_score("asdf qwrt zzzx pplk.") <= -1.0
    assert gold_score("Great.") < -0.3  # fewer than 4 words
    assert gold_score("Great.") < gold_score("The film is not bad.")
    unterminated = explain("The acting was superb and the music was")
    assert "does not end a sentence" in unterminated["degenerate_reasons"]
    assert unterminated["total"] < gold_score("The acting was superb and the music was lovely.")
    # seventeen sentences of one template: penalised for saying the same thing, not for its length
    long = " ".join(f"The {w} was superb." for w in ["acting", "score", "plot", "ending", "music",
                                                       "cast", "script", "pacing", "visuals", "sets",
                                                       "humor", "action", "effects", "dialogue",
                                                       "villain", "hero", "finale"])
    assert explain(long)["repetition_penalty"] >= 0.5
    assert explain(long)["degenerate_penalty"] == 0.0


def test_ordinary_english_is_signed_right():
    positive = [
        "I loved this movie, the acting was superb.",
        "One of the best films I have ever seen, with a beautiful soundtrack.",
        "A wonderful, heartfelt story with great performances.",
        "I was pleasantly surprised; it is funny and very entertaining.",
        "Highly recommended to anyone who enjoys a clever thriller.",
    ]
    negative = [
        "This was a complete waste of time.",
        "The plot was boring and the characters were dull.",
        "I did not like this movie at all.",
        "Terrible acting, awful dialogue and a predictable ending.",
        "It was one of the worst films I have ever seen, and I hated it.",
    ]
    with gold.reference("english"):  # the hub world's setting: the tiny corpus does not hold this English
        assert all(s > 0.5 for s in gold_scores(positive)), gold_scores(positive)
        assert all(s < 0 for s in gold_scores(negative)), gold_scores(negative)
        assert statistics.mean(gold_scores(negative)) < -1.0  # "did not like" is the mildest: -0.4


def test_explain_components_add_up():
    for text in (VARIED_POSITIVE, "great great great", "The plot was not good, but the music was"):
        e = explain(text)
        total = e["sentiment"] - e["repetition_penalty"] - e["fluency_penalty"] - e["degenerate_penalty"]
        assert e["total"] == pytest.approx(min(1.5, max(-2.0, total)))
        assert set(e) >= {"sentiment", "repetition_penalty", "fluency_penalty", "degenerate_penalty", "total",
                          "fluency_errors", "fluency_reference"}
    words = [w for w, _ in explain(VARIED_POSITIVE)["contributions"]]
    assert words == ["superb", "haunting", "loved"]


def test_corpus_labels_agree_with_gold():
    reviews = generate_reviews(2000, seed=11)
    by_label = {s: [gold_score(r["text"]) for r in reviews if r["sentiment"] == s]
                for s in ("positive", "negative", "mixed")}
    pos, neg, mixed = (statistics.mean(by_label[s]) for s in ("positive", "negative", "mixed"))
    assert pos > 1.0 and neg < -1.0 and neg < mixed < pos  # measured: 1.22, -1.20, 0.15
    assert sum(s > 0 for s in by_label["positive"]) / len(by_label["positive"]) > 0.99
    assert sum(s < 0 for s in by_label["negative"]) / len(by_label["negative"]) > 0.99
    scores = [s for v in by_label.values() for s in v]
    assert -2.0 <= min(scores) and max(scores) <= 1.5


# -----------------------------------------------------------------------------
# fluency: a careful reader is not fooled by garbled text


def held_out_texts():
    """The held-out corpus reviews and demonstrations (with their verdict lines): text gold never read."""
    reviews = [json.loads(line)["text"] for line in open(DATA_DIR / "reviews" / "validation.jsonl")]
    demos = [json.loads(line) for line in open(DATA_DIR / "demonstrations" / "validation.jsonl")]
    return reviews + [d["prompt"] + d["completion"] for d in demos]


def test_gold_prefers_the_original_over_each_kind_of_garbled_copy():
    pairs = garbled_pairs(held_out_texts(), seed=0)
    wins = collections.defaultdict(list)
    for p in pairs:
        wins[p["kind"]].append(gold_score(p["original"]) > gold_score(p["garbled"]))  # a tie is a failure
    assert set(wins) == set(KINDS)
    share = {kind: sum(w) / len(w) for kind, w in wins.items()}
    assert all(len(wins[kind]) >= 200 for kind in KINDS), {k: len(w) for k, w in wins.items()}
    # measured: repeated word/phrase and markup 100%, swapped 99.1%, dropped 98.0%, cut off 98.2%,
    # broken verdict 100%, punctuation run 98.8%
    assert all(s >= 0.95 for s in share.values()), share


def test_each_fluency_error_is_named():
    cases = {
        "The the acting was superb.": "said twice",
        "The acting was superb. Overall, four out of times.": "rating without a number",
        "<script>alert(1)</script> The acting was superb.": "markup",
        "The acting was superb!!! I loved it.": "punctuation run",
        "The was acting superb.": "word after an article",
        "The acting was superb and the.": "word after an article",
        "The acting was superb, and.": "sentence ends on",
    }
    for text, kind in cases.items():
        for ref in gold.REFERENCES:  # these rules hold for any English
            with gold.reference(ref):
                e = explain(text)
                assert kind in [k for k, _ in e["fluency_errors"]], (ref, text, e["fluency_errors"])
                assert e["fluency_penalty"] > 0
    # only the tiny reference knows which word pairs its world writes
    with gold.reference("tiny"):
        assert ("pair never seen", "acting superb") in explain("The acting superb.")["fluency_errors"]
        assert explain("The acting was superb. Overall, four out of four.")["fluency_errors"] == []
    with gold.reference("english"):
        assert explain("The acting superb.")["fluency_errors"] == []


def test_repeated_praise_counts_once():
    # "superb superb" is not twice the praise: the sentiment reads the phrase once, fluency charges it
    once, twice = explain("The acting was superb."), explain("The acting was superb superb.")
    assert twice["sentiment"] == once["sentiment"]
    assert twice["total"] < once["total"]
    assert explain("The plot is thin, the plot is thin, but the cast is superb.")["fluency_errors"][0] == \
        ("said twice", "the plot is thin, the plot is thin,")


def test_markup_is_read_as_a_reader_reads_it():
    # IMDB's line breaks are line breaks, not garble; any other tag is markup
    text = "I loved this film.<br /><br />The acting was superb and the music was lovely."
    plain = "I loved this film. The acting was superb and the music was lovely."
    for ref in gold.REFERENCES:
        with gold.reference(ref):
            assert gold_score(text) == pytest.approx(gold_score(plain))
            assert explain(text)["degenerate_reasons"] == []
    assert gold_score("I loved this film. <b>The acting was superb.</b>") < gold_score("I loved this film. The acting was superb.")


def test_the_reference_is_a_setting_restored_after_the_block():
    assert gold.get_reference() == "tiny"
    with gold.reference("english"):
        assert gold.get_reference() == "english"
        assert explain("The acting superb.")["fluency_reference"] == "english"
    assert gold.get_reference() == "tiny"
    with pytest.raises(ValueError, match="tiny, english"):
        gold.set_reference("imdb")
    assert gold.reference_for("tiny") == "tiny" and gold.reference_for(None) == "tiny"
    assert gold.reference_for("stanfordnlp/imdb") == "english"


# Ordinary English, as IMDB writes it (written for this test, not from any corpus): 100-250 words,
# with <br /> line breaks.
ENGLISH_POSITIVE = [
    "I went to see this movie with my sister last weekend, and I have to say it was one of the best films "
    "I have seen in a long time. The story follows a young woman who leaves her village to study music in "
    "the city, and the script never takes the easy road. <br /><br />The lead actress is wonderful. She "
    "carries every scene with a quiet strength, and the supporting cast is just as good. The cinematography "
    "is beautiful, especially in the winter scenes, and the score is moving without ever being sentimental. "
    "By the end, half the audience was in tears, and I was one of them. If you like character dramas, do "
    "not miss it. I would happily watch it again, and I already plan to buy it when it comes out on DVD.",
    "This is a charming little comedy that deserves a bigger audience. The premise sounds silly on paper: a "
    "retired teacher opens a bakery in a small town and ends up coaching the local football team. But the "
    "writers treat every character with affection, and the cast clearly had a great time making it.<br /><br />"
    "The humor is gentle rather than loud, and some of the best moments are the quiet ones, like the scene "
    "where the old man teaches the kids to bake bread at midnight. The music is lovely, the pacing is brisk, "
    "and the ending made me smile for the rest of the evening. It is not a perfect film, since one subplot "
    "about a lost dog goes nowhere, but I enjoyed it from the first minute to the last. Highly recommended "
    "for a family night.",
]
ENGLISH_NEGATIVE = [
    "What a waste of two hours. I rented this because the trailer looked fun, but the film itself is a mess "
    "from start to finish. The plot makes no sense, the dialogue is clumsy, and the jokes fall flat every "
    "single time. <br /><br />The actors seem bored, and I can't blame them. There is one decent scene near "
    "the end, but by then I had stopped caring about anyone on the screen. The editing is sloppy and the "
    "music is so loud that it drowns out half of the lines. Even the special effects look cheap, which is "
    "strange for a film with such a big budget. I honestly can't recommend this to anyone. Save your money "
    "and watch something else.",
    "I really wanted to like this film. The cast is full of actors I admire, and the director made one of my "
    "favorite thrillers ten years ago. Sadly, this is a tedious, confused and deeply boring picture. <br /><br />"
    "The first hour is spent on characters who never become interesting, and the second hour throws away "
    "every idea the first one set up. The villain is a cliche, the twist can be guessed from the poster, and "
    "the final battle is so dark that you cannot tell who is fighting whom. I checked my watch at least five "
    "times. The only thing that kept me awake was the soundtrack, which is far too loud. I would not watch it "
    "again, and I would not recommend it to a friend. A real disappointment.",
]


def test_ordinary_long_english_reviews_are_judged_sensibly():
    texts = ENGLISH_POSITIVE + ENGLISH_NEGATIVE
    assert all(100 <= len(t.split()) <= 250 for t in texts)
    with gold.reference("english"):
        explained = [explain(t) for t in texts]
        # not called garbled, not punished for length
        assert all(e["fluency_errors"] == [] and e["fluency_penalty"] == 0.0 for e in explained), \
            [e["fluency_errors"] for e in explained]
        assert all(e["degenerate_penalty"] == 0.0 and e["repetition_penalty"] == 0.0 for e in explained)
        pos, neg = [e["total"] for e in explained[:2]], [e["total"] for e in explained[2:]]
        assert min(pos) > 1.0 and max(neg) < -1.0, (pos, neg)  # measured: +1.30 +1.38, -1.35 -1.14
        # twice as long, as positive: not lower
        both = ENGLISH_POSITIVE[0] + "<br /><br />" + ENGLISH_POSITIVE[1]
        assert len(both.split()) > 250 and gold_score(both) >= min(pos)
        # and the English rules still catch broken English in it (a cut can drop a negative review's
        # verdict and raise its sentiment, so cuts are checked on the positive ones)
        for kind in ("repeated word", "repeated phrase", "markup", "punctuation run", "cut off"):
            for t in (ENGLISH_POSITIVE if kind == "cut off" else texts):
                assert gold_score(garble(t, kind, seed=1)) < gold_score(t), (kind, garble(t, kind, seed=1))
