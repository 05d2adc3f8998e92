"""rlhf_lab/demonstrations.py: the tiny world's SFT data and the hub world's cut of real reviews."""

import json

import pytest

from rlhf_lab import gold
from rlhf_lab.corpus import read_jsonl
from rlhf_lab.demonstrations import (
    MAX_REVIEW_WORDS,
    SCORE_WORDS,
    demonstrations_from_texts,
    generate_demonstrations,
    has_verdict,
    load_demonstrations,
    main,
    truncate_review,
    verdict_score,
)
from rlhf_lab.utils import DATA_DIR


@pytest.fixture(scope="module")
def demos():
    return generate_demonstrations(400, seed=0)


def test_same_seed_same_demonstrations(demos):
    assert generate_demonstrations(400, seed=0) == demos
    assert generate_demonstrations(50, seed=1) != demos[:50]


def test_house_style_compact_review_then_verdict(demos):
    for d in demos:
        text = d["prompt"] + d["completion"]
        assert d["completion"].startswith(" ") and 2 <= len(d["prompt"].split()) <= 5
        review, _, score_word = text.rpartition(" Overall, ")
        assert score_word == f"{SCORE_WORDS[d['score']]} out of four."
        assert len(review.split()) <= MAX_REVIEW_WORDS
        assert d["score"] == verdict_score(review)
        assert has_verdict(text)
    assert not has_verdict("Overall, four out of several.") and not has_verdict("Overall, four out of four")


def test_verdict_follows_sentiment_and_mix_stays_balanced(demos):
    by_label = {label: [d["score"] for d in demos if d["sentiment"] == label]
                for label in ("positive", "negative")}
    assert sum(by_label["positive"]) / len(by_label["positive"]) > 3.4
    assert sum(by_label["negative"]) / len(by_label["negative"]) < 1.6
    share_positive = len(by_label["positive"]) / len(demos)
    assert 0.3 < share_positive < 0.55  # room for stage 3: not already all positive
    mean_gold = sum(gold.gold_scores([d["prompt"] + d["completion"] for d in demos])) / len(demos)
    assert -0.3 < mean_gold < 0.4  # far from the gold labeler's best, 1.5
    assert verdict_score("The acting was superb and the story was gripping.") == 4
    assert verdict_score("The acting was awful and the story was boring.") == 1


def test_command_line_is_byte_identical(tmp_path):
    for out in (tmp_path / "a", tmp_path / "b"):
        main(["--seed", "0", "--out", str(out), "--n-train", "60", "--n-validation", "20"])
    for split in ("train", "validation"):
        a = (tmp_path / "a" / "demonstrations" / f"{split}.jsonl").read_bytes()
        assert a == (tmp_path / "b" / "demonstrations" / f"{split}.jsonl").read_bytes()
    train = read_jsonl(tmp_path / "a" / "demonstrations" / "train.jsonl")
    validation = read_jsonl(tmp_path / "a" / "demonstrations" / "validation.jsonl")
    assert len(train) == 60 and len(validation) == 20
    texts = {d["prompt"] + d["completion"] for d in train}
    assert not any(d["prompt"] + d["completion"] in texts for d in validation)  # held out


def test_shipped_files_are_what_the_generator_writes():
    path = DATA_DIR / "demonstrations" / "train.jsonl"
    if not path.is_file():
        pytest.skip("data/demonstrations not made yet")
    shipped = read_jsonl(path)
    assert len(shipped) == 2000
    assert shipped[:100] == generate_demonstrations(100, seed=0)
    ds = load_demonstrations("tiny", "validation", limit=10)
    assert ds.column_names == ["prompt", "completion"] and len(ds) == 10


def test_hub_reviews_are_cleaned_and_cut_after_whole_sentences():
    long = ("This film was great.<br /><br />The acting was superb and the story moved me. "
            + "It goes on and on " * 30 + "and never ends.")
    assert truncate_review("One two three. Four five six seven!", max_words=5) == "One two three."
    assert truncate_review("No sentence end within the limit at all here", max_words=4) is None
    pairs = demonstrations_from_texts([long, "Too short.", "I loved it. The ending made me cry and laugh."],
                                      seed=0)
    assert len(pairs) == 2  # "Too short." leaves nothing to write
    first = pairs[0]["prompt"] + pairs[0]["completion"]
    assert first == "This film was great. The acting was superb and the story moved me."
    assert "<br" not in first and pairs[0]["completion"].startswith(" ")


def test_local_file_of_pairs_or_texts(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "The plot", "completion": " is thin."}) + "\n")
    ds = load_demonstrations(pairs)
    assert ds[0] == {"prompt": "The plot", "completion": " is thin."}
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": f"Review number {i} says the film was fine. Really."}) + "\n"
                             for i in range(5)))
    ds = load_demonstrations(texts, limit=3)
    assert len(ds) == 3 and all(" was fine." in p + c for p, c in zip(ds["prompt"], ds["completion"]))
