"""Demonstrations for stage 1 (SFT): (prompt, completion) pairs written the way we want reviews to read.

In InstructGPT, labelers wrote the demonstrations by hand (Ouyang et al. 2022, section 3.4). In the
tiny world the corpus generator plays the labeler, with a house style the pretraining corpus does not
have, so that a learner can see what SFT changes:

- compact: at most MAX_REVIEW_WORDS words of review, so a sample ends well within 48 new tokens;
- every review closes with a verdict line, "Overall, three out of four.", whose number follows the
  review's sentiment as the gold labeler reads it (verdict_score), and then EOS;
- a balanced sentiment mix (the corpus's 40% positive, 40% negative, 20% mixed), so the SFT model
  still writes negative reviews and stage 3 (PPO towards positive, non-repetitive reviews) has room
  to improve the gold score.

The prompt is the review's opening (2-5 words, as data/prompts); the completion is the rest, starting
with its space, so that prompt + completion is the whole review.

    python -m rlhf_lab.demonstrations --seed 0 --out data

writes data/demonstrations/{train,validation}.jsonl, byte-identical for the same seed.
Hub world: `load_demonstrations("stanfordnlp/imdb")` cuts IMDB reviews into the same kind of pairs.
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

import datasets

from rlhf_lab import gold
from rlhf_lab.corpus import derive_seed, generate_reviews, review_prompts, write_jsonl
from rlhf_lab.utils import DATA_DIR, LabError

MAX_REVIEW_WORDS = 20  # the review before its verdict (corpus: up to 45): ~30 tokens with the verdict
VERDICT = "Overall, {score} out of four."  # the house style's last line; no lexicon word, no sentiment
# Number words, not digits: the tiny tokenizer has " three" and " four" as tokens, while a digit after
# a space is two rare tokens that a tiny model samples badly.
SCORE_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
OVERSAMPLE = 3  # corpus reviews drawn per demonstration kept (about 45% are short enough)
HUB_MAX_WORDS = 30  # hub reviews: whole sentences up to this many words (IMDB reviews run ~230), so that the
# completion (the review less its 2-5 prompt words) and EOS fit in the 48 new tokens that ranking, PPO and
# evaluation sample: English runs ~1.3 GPT-2 tokens a word, and 28 words overflow 47 tokens only past 1.68.
# At 60 words 97% of IMDB demonstrations did not fit, and PPO's first lesson became "stop early" (issue 13)


# -----------------------------------------------------------------------------
# the tiny world


def verdict_score(text: str) -> int:
    """The verdict's number, 1-4, from the review's sentiment as the gold labeler reads it.

    gold's sentiment term lies in (-1.5, 1.5): below -0.75 is one, up to 0 two, up to 0.75 three,
    above four (Roger Ebert's four-star scale).
    """
    sentiment = gold.explain(text)["sentiment"]
    return 1 + (sentiment > -0.75) + (sentiment > 0.0) + (sentiment > 0.75)


def verdict(text: str) -> str:
    """The house style's last line for a review: "Overall, three out of four."."""
    return VERDICT.format(score=SCORE_WORDS[verdict_score(text)])


_VERDICT_AT_END = re.compile(r"Overall, (one|two|three|four) out of four\.\s*$")


def has_verdict(text: str) -> bool:
    """Whether a text ends with a well-formed house verdict ("Overall, three out of four.")."""
    return _VERDICT_AT_END.search(text) is not None


def _split(text: str, prompt: str) -> dict:
    """{"prompt", "completion"} with prompt + completion == text; the completion keeps its space."""
    if not text.startswith(prompt) or len(text) == len(prompt):
        raise LabError(f"internal: the prompt {prompt!r} is not a proper opening of {text!r}")
    return {"prompt": prompt, "completion": text[len(prompt):]}


def generate_demonstrations(n: int, seed: int) -> list[dict]:
    """n demonstrations {"prompt", "completion", "sentiment", "score"} in the house style.

    The same seed gives the same list. Drawn from the corpus generator with a seed of its own
    (derive_seed), so they are new reviews, not the pretraining corpus's first ones.
    """
    rng_seed = derive_seed(seed, "demonstrations")
    reviews, out, round_ = [], [], 0
    while len(out) < n:
        batch = generate_reviews(OVERSAMPLE * (n - len(out)) + 16, derive_seed(rng_seed, str(round_)))
        round_ += 1
        reviews = [r for r in batch if len(r["text"].split()) <= MAX_REVIEW_WORDS]
        texts = [f"{r['text']} {verdict(r['text'])}" for r in reviews]
        prompts = review_prompts(texts, derive_seed(rng_seed, f"prompts/{round_}"))
        for review, text, prompt in zip(reviews, texts, prompts):
            if len(out) == n:
                break
            out.append(_split(text, prompt) | {"sentiment": review["sentiment"],
                                               "score": verdict_score(review["text"])})
    return out


# -----------------------------------------------------------------------------
# the hub world: real reviews cut into prompt + completion

_SENTENCE = re.compile(r"[^.!?]*[.!?]+[\"')]*\s*")  # a sentence with its end mark(s) and closing quote


def clean_review(text: str) -> str:
    """IMDB's markup out (<br /> line breaks), whitespace collapsed."""
    text = re.sub(r"<br\s*/?>", " ", text)
    text = re.sub(r"<[^>]+>", " ", text)
    return " ".join(text.split())


def truncate_review(text: str, max_words: int = HUB_MAX_WORDS) -> str | None:
    """The longest run of whole sentences from the start within max_words; None if even the first
    sentence is longer (a demonstration must end properly, not mid-sentence)."""
    kept, count = [], 0
    for match in _SENTENCE.finditer(text):
        sentence = match.group(0).strip()
        words = len(sentence.split())
        if count + words > max_words:
            break
        kept.append(sentence)
        count += words
    return " ".join(kept) if kept else None


def demonstrations_from_texts(texts: list[str], seed: int, min_words: int = 2, max_words: int = 5,
                              max_review_words: int = HUB_MAX_WORDS) -> list[dict]:
    """Real reviews as demonstrations: cleaned, cut after whole sentences, split into an opening
    prompt (min_words-max_words words, as review_prompts) and the rest as completion.

    Texts that cannot end properly within max_review_words, or leave fewer than 3 words to write,
    are skipped, so the result can be shorter than `texts`. Order follows `texts`.
    """
    reviews = []
    for text in texts:
        review = truncate_review(clean_review(text), max_review_words)
        if review is not None and len(review.split()) >= max_words + 3:
            reviews.append(review)
    prompts = review_prompts(reviews, seed, min_words=min_words, max_words=max_words)
    return [_split(review, prompt) for review, prompt in zip(reviews, prompts)]


# -----------------------------------------------------------------------------
# loading


def _pairs(records: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    ds = records.select_columns(["prompt", "completion"])
    return ds.select(range(min(limit, len(ds)))) if limit is not None else ds


def load_demonstrations(name: str | Path = "tiny", split: str = "train", limit: int | None = None,
                        seed: int = 0) -> datasets.Dataset:
    """Demonstrations as a datasets.Dataset with columns "prompt" and "completion".

    - "tiny": data/demonstrations/{split}.jsonl;
    - a local file or folder that already has prompt and completion columns: as it is;
    - anything else (a hub id such as "stanfordnlp/imdb", a local file of texts): loaded with
      loading.load_texts, shuffled with `seed` (IMDB's train split is sorted by label) and cut into
      pairs by demonstrations_from_texts.
    Splits as loading.resolve_split reads them: IMDB's "validation" is its "test", a single file's a
    held-out slice of it. The tiny world's files are taken in their (seeded random) order, anything
    else in a seeded order, so that `limit` never takes the first rows of a sorted file.
    """
    from rlhf_lab.loading import _read_data_file, load_split, load_texts, seeded_order

    if str(name) == "tiny":
        path = DATA_DIR / "demonstrations" / f"{split}.jsonl"
        if not path.is_file():
            raise LabError(f"The tiny world's demonstrations are missing: {path}. They ship with the "
                           "repository; to make them again run: python -m rlhf_lab.demonstrations "
                           "--seed 0 --out data")
        return _pairs(_read_data_file(path), limit)
    path = Path(name)
    if path.exists():
        local = load_split(path, split)
        if {"prompt", "completion"} <= set(local.column_names):
            return _pairs(local.select(seeded_order(len(local), seed)), limit)
    texts = load_texts(name, split=split)["text"]
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    # Reviews are skipped when they cannot end within HUB_MAX_WORDS, so take a margin beyond `limit`.
    take = order if limit is None else order[: 3 * limit + 50]
    pairs = demonstrations_from_texts([texts[i] for i in take], seed)
    if not pairs:
        raise LabError(f"{name}: no text could be made into a demonstration (each needs a sentence end "
                       f"within {HUB_MAX_WORDS} words); check the column holding the reviews.")
    return _pairs(datasets.Dataset.from_list(pairs), limit)


def describe(demos: list[dict]) -> dict:
    """Mean gold score, sentiment mix and length of demonstrations (or any {"prompt", "completion"}).

    The mix is read by the gold labeler (sentiment term above 0.5: positive, below -0.5: negative,
    else mixed), so it works for the hub world's reviews too.
    """
    texts = [d["prompt"] + d["completion"] for d in demos]
    explained = [gold.explain(t) for t in texts]
    sentiments = [e["sentiment"] for e in explained]
    n = len(texts)
    return {"n": n, "mean_gold": sum(e["total"] for e in explained) / n,
            "mean_words": sum(len(t.split()) for t in texts) / n,
            "sentiment_mix": {"positive": round(sum(s > 0.5 for s in sentiments) / n, 3),
                              "mixed": round(sum(-0.5 <= s <= 0.5 for s in sentiments) / n, 3),
                              "negative": round(sum(s < -0.5 for s in sentiments) / n, 3)}}


# -----------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the training split")
    parser.add_argument("--out", type=Path, default=Path("data"), help="folder to write into")
    parser.add_argument("--n-train", type=int, default=2_000, help="training demonstrations")
    parser.add_argument("--n-validation", type=int, default=200, help="held-out demonstrations")
    args = parser.parse_args(argv)

    train = generate_demonstrations(args.n_train, args.seed)
    # The held-out split has its own seed; texts that also occur in train are dropped (short
    # template reviews can repeat), so validation loss measures generalisation, not recall.
    seen = {d["prompt"] + d["completion"] for d in train}
    candidates = generate_demonstrations(2 * args.n_validation, derive_seed(args.seed, "validation"))
    validation = [d for d in candidates if d["prompt"] + d["completion"] not in seen][: args.n_validation]
    for split, demos in (("train", train), ("validation", validation)):
        write_jsonl(demos, args.out / "demonstrations" / f"{split}.jsonl")
        stats = describe(demos)
        print(f"{split}: {stats['n']} demonstrations, mean gold {stats['mean_gold']:+.3f}, "
              f"{stats['mean_words']:.1f} words, mix {stats['sentiment_mix']} -> "
              f"{args.out / 'demonstrations' / f'{split}.jsonl'}")


if __name__ == "__main__":
    main()
