"""Simulated human annotators: the gold labeler seen through noise and personal calibration.

Why rankings, not scores (InstructGPT; the "Illustrating RLHF" account): annotators disagree on a
scale ("is this a 6 or an 8?") far more than on an order ("is A better than B?"). Here each
annotator perceives quality as gold + noise, then rates on 1-10 with their own scale and bias
(harsh, generous, compressed...). `agreement_study` measures both kinds of agreement on the same
texts, so the notebook can show the claim with numbers before training a reward model on rankings.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass

from rlhf_lab.gold import gold_score


@dataclass(frozen=True)
class SimulatedAnnotator:
    """One simulated human. Perception = gold + N(0, noise); rating = 5.5 + scale * perception + bias."""

    name: str
    scale: float = 2.0  # rating points per gold unit: a compressed annotator has a small scale
    bias: float = 0.0  # shifts every rating: harsh < 0 < generous
    noise: float = 0.15  # std of the perception noise, in gold units
    seed: int = 0  # with the text, fixes the noise: the same text is always perceived the same

    def perceive(self, text: str) -> float:
        """Gold plus this annotator's noise for this text (deterministic per annotator and text)."""
        # A stable hash (not Python's salted hash()) so runs and machines agree.
        digest = hashlib.sha256(f"{self.seed}\x00{text}".encode("utf-8")).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        return gold_score(text) + rng.gauss(0.0, self.noise)

    def score(self, texts: list[str]) -> list[float]:
        """Ratings on the 1-10 scale (whole numbers, as floats)."""
        return [float(min(10, max(1, round(5.5 + self.scale * self.perceive(t) + self.bias))))
                for t in texts]

    def rank(self, texts: list[str]) -> list[int]:
        """Indices of texts, best first, by this annotator's perception (ties keep input order)."""
        perceived = [self.perceive(t) for t in texts]
        return sorted(range(len(texts)), key=lambda i: -perceived[i])


def default_panel(seed: int = 0) -> list[SimulatedAnnotator]:
    """Five annotators with different calibrations and a little noise each."""
    return [
        SimulatedAnnotator("balanced", scale=2.0, bias=0.0, noise=0.15, seed=seed * 10 + 1),
        SimulatedAnnotator("harsh", scale=2.0, bias=-1.5, noise=0.15, seed=seed * 10 + 2),
        SimulatedAnnotator("generous", scale=1.5, bias=1.5, noise=0.15, seed=seed * 10 + 3),
        SimulatedAnnotator("compressed", scale=0.8, bias=0.5, noise=0.15, seed=seed * 10 + 4),
        SimulatedAnnotator("enthusiast", scale=3.0, bias=-0.5, noise=0.2, seed=seed * 10 + 5),
    ]


# -----------------------------------------------------------------------------
# agreement


def ranking_agreement(rank_a: list[int], rank_b: list[int]) -> float:
    """Share of item pairs that two rankings (indices, best first) order the same: (1 + tau) / 2.

    1.0 is the same order, 0.5 is what random orders give on average, 0.0 is the reverse order.
    """
    if sorted(rank_a) != sorted(rank_b):
        raise ValueError(f"rankings must hold the same items, got {rank_a} and {rank_b}")
    if len(rank_a) < 2:
        return 1.0
    pos_a = {item: i for i, item in enumerate(rank_a)}
    pos_b = {item: i for i, item in enumerate(rank_b)}
    pairs = list(itertools.combinations(rank_a, 2))
    same = sum((pos_a[x] < pos_a[y]) == (pos_b[x] < pos_b[y]) for x, y in pairs)
    return same / len(pairs)


def agreement_study(texts: list[str], annotators: list[SimulatedAnnotator], k: int = 4) -> dict:
    """How much do annotators agree on scores, and on rankings of k texts at a time?

    Scores: for each pair of annotators, the share of texts they score the same and the mean
    absolute difference; averaged over pairs. Rankings: texts are cut into consecutive groups of k
    (like a ranking task with k samples per prompt); for each pair of annotators, the mean pairwise
    order agreement over groups; averaged over pairs. score_pair_agreement measures the scores the way
    rankings are measured: the share of the same text pairs that two annotators' scores order alike.
    """
    if len(annotators) < 2:
        raise ValueError("an agreement study needs at least two annotators")
    if k < 2 or len(texts) < k:
        raise ValueError(f"need k >= 2 and at least k texts, got k={k} and {len(texts)} texts")
    scores = {a.name: a.score(texts) for a in annotators}
    groups = [texts[i:i + k] for i in range(0, len(texts) - k + 1, k)]
    rankings = {a.name: [a.rank(g) for g in groups] for a in annotators}

    exact, abs_diff, rank_agree, score_pair_agree = [], [], [], []
    for a, b in itertools.combinations([a.name for a in annotators], 2):
        diffs = [abs(x - y) for x, y in zip(scores[a], scores[b])]
        exact.append(sum(d <= 0.5 for d in diffs) / len(diffs))
        abs_diff.append(sum(diffs) / len(diffs))
        per_group = [ranking_agreement(ra, rb) for ra, rb in zip(rankings[a], rankings[b])]
        rank_agree.append(sum(per_group) / len(per_group))
        # the same measure from the scores: does each annotator's pair of scores order the two texts alike?
        # A tie in either orders nothing, and counts one half (as a coin would decide it)
        same = []
        for start in range(0, len(groups) * k, k):
            for i, j in itertools.combinations(range(start, start + k), 2):
                da, db = scores[a][i] - scores[a][j], scores[b][i] - scores[b][j]
                same.append(0.5 if da == 0 or db == 0 else float((da > 0) == (db > 0)))
        score_pair_agree.append(sum(same) / len(same))

    def mean(xs):
        return sum(xs) / len(xs)

    return {
        "score_exact_agreement": mean(exact),  # share of texts two annotators score the same
        "score_mean_abs_diff": mean(abs_diff),  # rating points apart, on average
        "ranking_agreement": mean(rank_agree),  # share of text pairs ordered the same
        "score_pair_agreement": mean(score_pair_agree),  # the same share, read off the scores (ties: 1/2)
        "mean_score": {name: mean(s) for name, s in scores.items()},  # each one's calibration
        "n_texts": len(texts),
        "n_groups": len(groups),
        "k": k,
        "n_annotators": len(annotators),
    }
