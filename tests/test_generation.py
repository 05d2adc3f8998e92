"""rlhf_lab.generation: sampling with left padding, responses cut at the first EOS, tiny-world quality."""

import torch

from rlhf_lab.generation import first_eos_mask, generate_tokens, sample
from rlhf_lab.gold import gold_scores
from rlhf_lab.loading import load_prompts
from rlhf_lab.metrics import distinct_n, eos_rate


def test_first_eos_mask_keeps_the_eos_and_drops_what_follows():
    eos = 0
    response = torch.tensor([[5, 6, 0, 0, 0],    # EOS at 2, then pad == EOS (the hub GPT-2 case)
                             [5, 0, 7, 8, 9],    # tokens after EOS do not count
                             [5, 6, 7, 8, 9]])   # never ended
    mask, ended = first_eos_mask(response, eos)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert ended.tolist() == [True, True, False]


def test_left_padded_batch_generates_what_each_prompt_generates_alone(tiny):
    """Greedy continuations must not depend on the other prompts in the batch (position ids, masks)."""
    model, tokenizer = tiny
    prompts = ["The plot", "I had heard good things about this film and"]
    batch = generate_tokens(model, tokenizer, prompts, max_new_tokens=12, greedy=True)
    for i, prompt in enumerate(prompts):
        alone = generate_tokens(model, tokenizer, [prompt], max_new_tokens=12, greedy=True)
        n = int(alone.response_mask.sum())
        assert batch.response[i, :n].tolist() == alone.response[0, :n].tolist()


def test_same_seed_same_samples(tiny):
    model, tokenizer = tiny
    a = sample(model, tokenizer, ["The acting"] * 4, max_new_tokens=16, seed=3)
    b = sample(model, tokenizer, ["The acting"] * 4, max_new_tokens=16, seed=3)
    c = sample(model, tokenizer, ["The acting"] * 4, max_new_tokens=16, seed=4)
    assert a == b and a != c


def test_tiny_gpt2_samples_read_like_the_corpus(tiny):
    """Issue 2's bar: 256 samples at temperature 1 end with EOS within 64 tokens (>= 95%), are diverse
    (distinct-2 >= 0.3), and the gold labeler scores them on both sides of zero."""
    model, tokenizer = tiny
    prompts = load_prompts("tiny", split="validation")["prompt"][:256]
    rows = sample(model, tokenizer, prompts, max_new_tokens=64, temperature=1.0, seed=0)
    assert eos_rate(rows) >= 0.95
    assert distinct_n([r["completion"] for r in rows], 2) >= 0.3
    scores = gold_scores([r["prompt"] + r["completion"] for r in rows])
    assert sum(s > 0.1 for s in scores) >= 40 and sum(s < -0.1 for s in scores) >= 40
