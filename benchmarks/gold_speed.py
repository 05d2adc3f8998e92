"""The gold labeler's throughput: texts scored per second on one core (median of repeats).

    python benchmarks/gold_speed.py [--texts held-out|sft|garbled|english] [--repeats 7]

Gold scores every PPO batch, every evaluation and every simulated annotator's ranking, so it must
stay cheap: the goal (issue 11) is at least 5,000 texts/s on one core. The texts are the held-out
reviews and demonstrations (default), or their garbled copies, or long ordinary English (hub world:
the English reference). Pure Python: one process, one core, whatever the thread settings. The tiny
corpus's word pairs are built once before timing (about half a second, once per process).
"""

import argparse
import json
import platform
import statistics
import sys
import time

from rlhf_lab import gold
from rlhf_lab.garble import garbled_pairs
from rlhf_lab.utils import DATA_DIR, REPO_DIR


def texts_of(kind: str) -> list[str]:
    reviews = [json.loads(line)["text"] for line in open(DATA_DIR / "reviews" / "validation.jsonl")]
    demos = [json.loads(line) for line in open(DATA_DIR / "demonstrations" / "validation.jsonl")]
    held_out = reviews + [d["prompt"] + d["completion"] for d in demos]
    if kind == "held-out":
        return held_out
    if kind == "garbled":
        return [p["garbled"] for p in garbled_pairs(held_out[:300])]
    if kind == "english":
        sys.path.insert(0, str(REPO_DIR))
        from tests.test_gold import ENGLISH_NEGATIVE, ENGLISH_POSITIVE  # hand-written, 120-140 words
        return (ENGLISH_POSITIVE + ENGLISH_NEGATIVE) * 100
    raise SystemExit(f"--texts is held-out, garbled or english, got {kind!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", default="held-out", help="held-out (default), garbled or english")
    p.add_argument("--repeats", type=int, default=7, help="timed passes over the texts; the median is reported")
    args = p.parse_args()
    texts = texts_of(args.texts)
    reference = "english" if args.texts == "english" else "tiny"
    with gold.reference(reference):
        gold.tiny_ngrams()  # built once per process, not timed
        gold.gold_scores(texts[:100])  # warm-up
        rates = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            gold.gold_scores(texts)
            rates.append(len(texts) / (time.perf_counter() - start))
    words = statistics.mean(len(t.split()) for t in texts)
    print(f"{time.strftime('%Y-%m-%d')} {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"one process: {len(texts):,} texts ({args.texts}, {words:.0f} words on average), reference {reference!r}")
    print(f"median {statistics.median(rates):,.0f} texts/s (min {min(rates):,.0f}, max {max(rates):,.0f}; "
          f"goal >= 5,000 texts/s on one core)")


if __name__ == "__main__":
    main()
