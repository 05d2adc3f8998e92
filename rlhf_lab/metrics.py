"""Numbers that describe a set of samples: EOS rate, diversity (distinct-n)."""

from __future__ import annotations

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
