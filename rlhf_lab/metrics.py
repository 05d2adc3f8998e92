"""Numbers that describe a set of samples: EOS rate, diversity (distinct-n), BLEU and ROUGE, rank correlation."""

from __future__ import annotations

import math
import re

_WORD = re.compile(r"[A-Za-z']+|[0-9]+|[^\sA-Za-z0-9]")


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks, the unit of distinct-n."""
    return _WORD.findall(text.lower())


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct n-grams over all n-grams in a set of texts (Li et al. 2016): 1 = no n-gram repeats."""
    total, seen = 0, set()
    for text in texts:
        toks = words(text)
        grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def eos_rate(samples: list[dict]) -> float:
    """Share of samples that ended with EOS (a sample dict has "ended", as `generation.sample` makes)."""
    return sum(bool(s["ended"]) for s in samples) / max(len(samples), 1)


# -----------------------------------------------------------------------------
# reference-based scores (notebook 01: what they measure, and what they miss) and rank correlation


def _ngrams(tokens: list[str], n: int) -> dict[tuple, int]:
    counts: dict[tuple, int] = {}
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i:i + n])
        counts[gram] = counts.get(gram, 0) + 1
    return counts


def bleu(candidate: str, references: str | list[str], max_n: int = 4, smooth: bool = True) -> float:
    """Sentence BLEU (Papineni et al. 2002) on `words`: the geometric mean of the clipped n-gram precisions,
    n = 1..max_n, times the brevity penalty exp(1 - r / c) when the candidate (c words) is shorter than the
    reference closest in length (r words). smooth: add one to the matches and the count of every n > 1
    (Lin & Och 2004), so that one missing 4-gram does not make a sentence's BLEU 0. In [0, 1]."""
    refs = [words(r) for r in ([references] if isinstance(references, str) else references)]
    cand = words(candidate)
    if not cand or not refs:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        grams = _ngrams(cand, n)
        most = {}  # the most times each n-gram occurs in one reference: the clip
        for ref in refs:
            for gram, count in _ngrams(ref, n).items():
                most[gram] = max(most.get(gram, 0), count)
        matches = sum(min(count, most.get(gram, 0)) for gram, count in grams.items())
        total = sum(grams.values())
        if smooth and n > 1:
            matches, total = matches + 1, total + 1
        if matches == 0 or total == 0:
            return 0.0
        log_precision += math.log(matches / total) / max_n
    r = min((abs(len(ref) - len(cand)), len(ref)) for ref in refs)[1]  # closest length, the shorter on ties
    brevity = 1.0 if len(cand) > r else math.exp(1 - r / len(cand))
    return brevity * math.exp(log_precision)


def rouge_n(candidate: str, reference: str, n: int = 1) -> float:
    """ROUGE-n F1 (Lin 2004): n-grams shared by candidate and reference (clipped counts), as the harmonic
    mean of their share of the candidate's (precision) and of the reference's (recall)."""
    cand, ref = _ngrams(words(candidate), n), _ngrams(words(reference), n)
    overlap = sum(min(count, ref.get(gram, 0)) for gram, count in cand.items())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / sum(cand.values()), overlap / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 (Lin 2004): the longest common subsequence of words, over the candidate's length
    (precision) and the reference's (recall), their harmonic mean."""
    cand, ref = words(candidate), words(reference)
    if not cand or not ref:
        return 0.0
    previous = [0] * (len(ref) + 1)  # LCS lengths, one row of the dynamic programme at a time
    for token in cand:
        row = [0]
        for j, other in enumerate(ref):
            row.append(previous[j] + 1 if token == other else max(previous[j + 1], row[j]))
        previous = row
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties given the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation: Pearson's correlation of the ranks (ties get mean ranks). In [-1, 1]."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"spearman needs two lists of the same length, at least 2 (got {len(x)} and {len(y)})")
    rx, ry = ranks(list(x)), ranks(list(y))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / var if var else float("nan")
