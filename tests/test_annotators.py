"""Tests for rlhf_lab/annotators.py: annotators disagree on scores but agree on rankings."""

import pytest

from rlhf_lab.annotators import SimulatedAnnotator, agreement_study, default_panel, ranking_agreement
from rlhf_lab.corpus import generate_reviews
from rlhf_lab.gold import gold_score


@pytest.fixture(scope="module")
def texts():
    return [r["text"] for r in generate_reviews(200, seed=123)]


def test_perception_is_deterministic_per_annotator_and_text(texts):
    a = SimulatedAnnotator("a", scale=2.0, bias=0.0, noise=0.3, seed=1)
    same = SimulatedAnnotator("a", scale=2.0, bias=0.0, noise=0.3, seed=1)
    other = SimulatedAnnotator("b", scale=2.0, bias=0.0, noise=0.3, seed=2)
    assert a.score(texts) == same.score(texts) == a.score(texts)
    assert [a.perceive(t) for t in texts[:20]] == [same.perceive(t) for t in texts[:20]]
    assert [a.perceive(t) for t in texts[:20]] != [other.perceive(t) for t in texts[:20]]
    # a stable hash: the same number on every machine and every Python process
    text = "The acting was superb."
    # the noise alone is pinned, so retuning the gold labeler does not break this test
    assert a.perceive(text) - gold_score(text) == pytest.approx(-0.025169054948263492, abs=1e-12)
    assert SimulatedAnnotator("renamed", noise=0.3, seed=1).perceive(text) == a.perceive(text)


def test_scores_are_whole_ratings_with_personal_calibration(texts):
    panel = {a.name: a for a in default_panel()}
    assert len(panel) >= 4
    for a in panel.values():
        scores = a.score(texts)
        assert all(1 <= s <= 10 and s == int(s) for s in scores)
    mean = {name: sum(a.score(texts)) / len(texts) for name, a in panel.items()}
    assert mean["harsh"] < mean["balanced"] < mean["generous"]
    spread = {name: max(a.score(texts)) - min(a.score(texts)) for name, a in panel.items()}
    assert spread["compressed"] < spread["balanced"]


def test_rank_orders_by_perception():
    texts = ["The film was awful and boring.", "The film was fine.", "A superb, moving film. I loved it."]
    a = SimulatedAnnotator("a", noise=0.0)
    assert a.rank(texts) == [2, 1, 0]
    assert sorted(a.rank(texts * 2)) == list(range(6))


def test_ranking_agreement():
    assert ranking_agreement([0, 1, 2, 3], [0, 1, 2, 3]) == 1.0
    assert ranking_agreement([0, 1, 2, 3], [3, 2, 1, 0]) == 0.0
    assert ranking_agreement([0, 1, 2, 3], [1, 0, 2, 3]) == pytest.approx(5 / 6)  # one swap of six pairs
    assert ranking_agreement([2], [2]) == 1.0
    with pytest.raises(ValueError):
        ranking_agreement([0, 1], [0, 2])


def test_rankings_agree_far_more_than_scores(texts):
    """The seed claim of RLHF's data collection, measured: ~0.89 vs ~0.17 on these texts (two different
    measures), and on one measure, the share of pairs ordered alike."""
    study = agreement_study(texts, default_panel(), k=4)
    assert study["ranking_agreement"] >= 0.8
    assert study["score_exact_agreement"] <= 0.4
    assert study["score_mean_abs_diff"] >= 1.0
    assert study["n_groups"] == 50 and study["n_annotators"] == 5
    # measured alike (the share of the same text pairs two annotators order alike), the scores agree less:
    # a 1-10 scale ties many pairs a ranking must order
    assert 0.5 < study["score_pair_agreement"] < study["ranking_agreement"]
    assert agreement_study(texts, default_panel(), k=4) == study  # deterministic
    with pytest.raises(ValueError):
        agreement_study(texts, default_panel()[:1])


def test_score_pair_agreement_on_hand_made_scores():
    """Two annotators, two groups of k = 2: pair 1 ordered alike, pair 2 opposite: 1/2; a tie counts 1/2."""

    class Fixed(SimulatedAnnotator):
        def __init__(self, name, scores, order):
            super().__init__(name)
            self._scores, self._order = scores, order

        def score(self, texts):
            return self._scores

        def rank(self, texts):
            return self._order

    texts = ["a", "b", "c", "d"]
    study = agreement_study(texts, [Fixed("x", [5, 3, 2, 7], [0, 1]), Fixed("y", [9, 1, 6, 4], [0, 1])], k=2)
    assert study["score_pair_agreement"] == pytest.approx(0.5)
    study = agreement_study(texts, [Fixed("x", [5, 5, 2, 7], [0, 1]), Fixed("y", [9, 1, 2, 7], [0, 1])], k=2)
    assert study["score_pair_agreement"] == pytest.approx((0.5 + 1) / 2)
