"""rlhf_lab/metrics.py: BLEU, ROUGE and Spearman's rank correlation on hand-computed cases."""

import math

import pytest

from rlhf_lab.metrics import bleu, ranks, rouge_l, rouge_n, spearman


def test_bleu_modified_precision_is_clipped_as_in_the_paper():
    # Papineni et al. 2002, section 2.1.1: "the" occurs at most twice in a reference, so 2 of 7 count
    candidate = "the the the the the the the"
    references = ["The cat is on the mat.", "There is a cat on the mat."]
    refs = [r.rstrip(".") for r in references]
    assert bleu(candidate, refs, max_n=1) == pytest.approx(2 / 7)  # c = 7 = r: no brevity penalty


def test_bleu_by_hand():
    candidate, reference = "the cat sat on the mat", "the cat is on the mat"
    # unigrams 5 of 6 match, bigrams 3 of 5 (the cat, on the, the mat); both 6 words long
    assert bleu(candidate, reference, max_n=2, smooth=False) == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert bleu(candidate, reference, max_n=2) == pytest.approx(math.sqrt(5 / 6 * 4 / 6))  # add-one for n = 2
    assert bleu(reference, reference) == pytest.approx(1.0)
    assert bleu("mat", reference, max_n=1) == pytest.approx(math.exp(1 - 6 / 1))  # brevity penalty: 1 word of 6
    assert bleu("dog", reference) == 0.0 and bleu("", reference) == 0.0


def test_rouge_as_in_lins_paper():
    reference = "police killed the gunman"
    # Lin 2004, section 3.1: the LCS of the first is "police the gunman", of the second "the gunman"
    assert rouge_l("police kill the gunman", reference) == pytest.approx(0.75)
    assert rouge_l("the gunman kill police", reference) == pytest.approx(0.5)
    assert rouge_n("police kill the gunman", reference, 1) == pytest.approx(0.75)
    assert rouge_n("police kill the gunman", reference, 2) == pytest.approx(1 / 3)  # only "the gunman"
    assert rouge_l("nothing alike", reference) == 0.0 and rouge_n("", reference) == 0.0


def test_spearman_with_ties():
    assert ranks([10, 20, 20, 5]) == [2, 3.5, 3.5, 1]
    # scipy.stats.spearmanr([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) = 0.8207826816681233
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2], [1])


def test_flip_sentiment_keeps_the_words_and_turns_the_verdict():
    from rlhf_lab.gold import gold_score
    from rlhf_lab.lexicon import flip_sentiment

    rave = "The acting was superb. Overall, four out of four."
    pan = flip_sentiment(rave)
    assert pan != rave and pan.endswith("Overall, one out of four.")
    assert gold_score(rave) > 1 and gold_score(pan) < -1
    assert rouge_l(pan, rave) == pytest.approx(10 / 12)  # 12 words and marks, all but two shared
    assert flip_sentiment(flip_sentiment("It was a superb film.")) != "" and flip_sentiment("The plot.") == "The plot."


def test_mean_token_losses_equal_token_losses_one_text_at_a_time(tiny):
    from rlhf_lab import sft

    model, tokenizer = tiny
    rows = [{"prompt": "The acting was", "completion": " superb. Overall, four out of four."},
            {"prompt": "It is a", "completion": " dull film."}, {"prompt": "I", "completion": " liked it a lot."}]
    batched = sft.mean_token_losses(model, tokenizer, rows, batch_size=2)
    for row, got in zip(rows, batched):
        alone = sft.token_losses(model, tokenizer, row["prompt"], row["completion"])
        assert got == pytest.approx(sum(loss for _, loss in alone) / len(alone), rel=1e-5)
