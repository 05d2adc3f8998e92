"""Tests for rlhf_lab/gold.py: the gold labeler's taste, pinned on hand-made sentences."""

import statistics

import pytest

from rlhf_lab.corpus import generate_reviews
from rlhf_lab.gold import explain, gold_score, gold_scores

VARIED_POSITIVE = "The acting was superb and the score was haunting. I loved every minute of it."


def test_positive_beats_negative():
    assert gold_score("The acting was superb.") > 0 > gold_score("The acting was awful.")
    assert gold_score(VARIED_POSITIVE) > 1.0


def test_negation_flips_and_softens():
    good, not_good = gold_score("The acting was good."), gold_score("The acting was not good.")
    assert good > 0 > not_good
    assert gold_score("The film is not bad.") > 0 > gold_score("The film is bad.")
    assert gold_score("not bad") > gold_score("bad")
    # softened: "not bad" is weaker praise than "good", "not good" weaker blame than "bad"
    assert gold_score("The film is not bad.") < good
    assert gold_score("The film is bad.") < not_good
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
    long = " ".join(f"The {w} was superb." for w in ["acting", "score", "plot", "ending", "music",
                                                       "cast", "script", "pacing", "visuals", "sets",
                                                       "humor", "action", "effects", "dialogue",
                                                       "villain", "hero", "finale"])
    assert explain(long)["degenerate_penalty"] >= 0.5


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
    assert all(s > 0.5 for s in gold_scores(positive)), gold_scores(positive)
    assert all(s < 0 for s in gold_scores(negative)), gold_scores(negative)
    assert statistics.mean(gold_scores(negative)) < -1.0  # "did not like" is the mildest: -0.4


def test_explain_components_add_up():
    for text in (VARIED_POSITIVE, "great great great", "The plot was not good, but the music was"):
        e = explain(text)
        total = e["sentiment"] - e["repetition_penalty"] - e["degenerate_penalty"]
        assert e["total"] == pytest.approx(min(1.5, max(-2.0, total)))
        assert set(e) >= {"sentiment", "repetition_penalty", "degenerate_penalty", "total"}
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
