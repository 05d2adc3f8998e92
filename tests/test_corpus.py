"""Tests for rlhf_lab/corpus.py: the tiny world's reviews and prompts."""

import re

import pytest

from rlhf_lab import corpus, lexicon
from rlhf_lab.corpus import generate_reviews, read_jsonl, review_prompts, write_jsonl
from rlhf_lab.gold import sentiment_contributions
from rlhf_lab.utils import DATA_DIR, LabError

N = 20_000  # the training split's size; generating it takes about half a second


@pytest.fixture(scope="module")
def reviews():
    return generate_reviews(N, seed=0)


def _sentences(text):
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s]


def test_same_seed_same_corpus_and_different_seed_different():
    a, b, c = generate_reviews(300, seed=7), generate_reviews(300, seed=7), generate_reviews(300, seed=8)
    assert a == b
    assert sum(x["text"] != y["text"] for x, y in zip(a, c)) > 290


def test_records_have_the_documented_fields(reviews):
    for r in reviews[:500]:
        assert list(r) == ["text", "sentiment", "aspects"]
        assert r["sentiment"] in ("positive", "negative", "mixed")
        assert all(a in corpus.ASPECTS for a in r["aspects"])


def test_vocabulary_is_large(reviews):
    vocab = {w for r in reviews for w in lexicon.tokenize(r["text"]) if w[0].isalnum()}
    assert len(vocab) >= 1000, len(vocab)


def test_sentiment_mix_and_aspects(reviews):
    share = {s: sum(r["sentiment"] == s for r in reviews) / N for s in ("positive", "negative", "mixed")}
    assert share["positive"] == pytest.approx(0.4, abs=0.02)
    assert share["negative"] == pytest.approx(0.4, abs=0.02)
    assert share["mixed"] == pytest.approx(0.2, abs=0.02)
    seen = {a for r in reviews for a in r["aspects"]}
    assert seen == set(corpus.ASPECTS)  # all 13 aspects occur


def test_negation_and_contrast_occur(reviews):
    texts = [r["text"] for r in reviews]
    with_negator = sum(any(lexicon.is_negator(w) for w in lexicon.tokenize(t)) for t in texts) / N
    assert with_negator > 0.15
    assert sum(", but " in t for t in texts) / N > 0.1
    assert any(t.startswith(("Although", "Though", "While")) or ". Although" in t for t in texts)
    for phrase in ("never", "wasn't", "isn't", "not bad", "still"):
        assert any(phrase in t for t in texts), phrase


def test_length_and_form(reviews):
    words = [len(r["text"].split()) for r in reviews]
    assert min(words) >= corpus.MIN_WORDS and max(words) <= corpus.MAX_WORDS == 45
    assert 15 <= sum(words) / N <= 30  # mean about 22 words
    n_sentences = [len(_sentences(r["text"])) for r in reviews]
    assert min(n_sentences) == 1 and max(n_sentences) == 5
    for r in reviews[:2000]:
        for s in _sentences(r["text"]):
            assert s[0].isupper() or s[0].isdigit(), s
            assert s[-1] in ".!", s
        assert "  " not in r["text"] and "{" not in r["text"]  # no unfilled template slots


def test_sentiment_words_are_in_the_lexicon_with_the_right_sign():
    for name, aspect in corpus.ASPECTS.items():
        for word in aspect.positive:
            assert lexicon.polarity(word) > 0, (name, word)
        for word in aspect.negative:
            assert lexicon.polarity(word) < 0, (name, word)
        for noun in aspect.nouns:  # "the score" must not carry a sign of its own
            assert all(lexicon.polarity(w) == 0 for w in lexicon.tokenize(noun)), noun
    for word in corpus.POSITIVE_OVERALL:
        assert lexicon.polarity(word) > 0, word
    for word in corpus.NEGATIVE_OVERALL:
        assert lexicon.polarity(word) < 0, word
    for phrase in corpus.POSITIVE_NOUNS + corpus.POSITIVE_VERDICTS:
        assert sum(v for _, v in sentiment_contributions(lexicon.tokenize(phrase))) > 0, phrase
    for phrase in corpus.NEGATIVE_NOUNS + corpus.NEGATIVE_VERDICTS:
        assert sum(v for _, v in sentiment_contributions(lexicon.tokenize(phrase))) < 0, phrase
    for word in corpus.INTENSIFIERS + corpus.EXTREME_INTENSIFIERS + corpus.ATTRIBUTIVE_INTENSIFIERS:
        assert lexicon.intensity(word) > 1, word
    for phrase in corpus.DIMINISHERS:
        assert lexicon.intensity(phrase.split()[-1]) < 1, phrase


def test_neutral_context_carries_no_sentiment():
    pools = (corpus.GENRES, corpus.FIRST_NAMES, corpus.LAST_NAMES, [p for p, _ in corpus.PEOPLE],
             corpus.PERSON_ADJ, corpus.AGELESS_ADJ, corpus.PLACES, corpus.MOVES, corpus.GOALS, corpus.PERIODS,
             corpus.RELATIVES, corpus.WHEN, corpus.SOURCES, corpus.TIME_SPANS, corpus.OPENERS,
             corpus.PLOTS, corpus.FILM)
    words = {w for pool in pools for entry in pool for w in lexicon.tokenize(entry)}
    assert {w for w in words if lexicon.polarity(w)} == set()


def test_prompts_are_deterministic_openings():
    texts = [r["text"] for r in generate_reviews(500, seed=3)]
    a, b = review_prompts(texts, seed=1), review_prompts(texts, seed=1)
    assert a == b and len(a) == len(texts)
    assert a != review_prompts(texts, seed=2)
    for prompt, text in zip(a, texts):
        n = len(prompt.split())
        assert 1 <= n <= 5 and n < len(text.split())
        assert text.startswith(prompt)
    assert sum(2 <= len(p.split()) <= 5 for p in a) == len(a)  # reviews have >= 4 words
    with pytest.raises(LabError):
        review_prompts(texts, seed=0, min_words=4, max_words=2)


def test_jsonl_round_trip_and_errors(tmp_path):
    records = [{"text": "Très bien, the acting was superb.", "sentiment": "positive", "aspects": ["acting"]}]
    path = write_jsonl(records, tmp_path / "sub" / "a.jsonl")
    assert read_jsonl(path) == records
    assert path.read_bytes().endswith(b"\n") and "Très".encode() in path.read_bytes()

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": oops}\n')
    with pytest.raises(LabError, match=re.escape(f"{bad}:2:")):
        read_jsonl(bad)
    bad.write_text('{"prompt": "ok"}\n\n[1, 2]\n')
    with pytest.raises(LabError, match=re.escape(f"{bad}:3:")):
        read_jsonl(bad)
    with pytest.raises(LabError, match="python -m rlhf_lab.corpus"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_command_line_is_byte_identical_across_runs(tmp_path):
    args = ["--seed", "5", "--n-train", "300", "--n-validation", "50",
            "--n-prompts-train", "40", "--n-prompts-validation", "10"]
    corpus.main(args + ["--out", str(tmp_path / "a")])
    corpus.main(args + ["--out", str(tmp_path / "b")])
    files = ["reviews/train.jsonl", "reviews/validation.jsonl", "prompts/train.jsonl",
             "prompts/validation.jsonl"]
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    train = read_jsonl(tmp_path / "a" / "reviews/train.jsonl")
    assert [r["text"] for r in train] == [r["text"] for r in generate_reviews(300, seed=5)]
    assert len(read_jsonl(tmp_path / "a" / "prompts/validation.jsonl")) == 10
    assert list(read_jsonl(tmp_path / "a" / "prompts/train.jsonl")[0]) == ["prompt"]


def test_shipped_data_matches_the_generator(reviews):
    """data/ must be what `python -m rlhf_lab.corpus --seed 0 --out data` writes today."""
    path = DATA_DIR / "reviews" / "train.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not generated yet")
    shipped = read_jsonl(path)
    assert len(shipped) == N and shipped == reviews
    prompts = read_jsonl(DATA_DIR / "prompts" / "train.jsonl")
    assert len(prompts) == 2000
    assert [p["prompt"] for p in prompts] == review_prompts(
        [r["text"] for r in reviews[:2000]], corpus.derive_seed(0, "prompts/train"))
    assert len(read_jsonl(DATA_DIR / "reviews" / "validation.jsonl")) == 1000
    assert len(read_jsonl(DATA_DIR / "prompts" / "validation.jsonl")) == 256
