"""Tiny GPT-2 sampling speed: generated tokens per second at batch 64 (median of repeats).

    python benchmarks/generation_speed.py [--model tiny] [--batch-size 64] [--new-tokens 64] [--repeats 7]

Counts only real response tokens (up to and including EOS); padding after an early EOS is not counted,
so the figure is what a learner gets, not what the hardware pushes.
"""

import argparse
import statistics
import time

import torch

from rlhf_lab.generation import generate_tokens
from rlhf_lab.loading import load_model, load_prompts


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    model, tokenizer = load_model(args.model, device=args.device)
    prompts = load_prompts("tiny", split="validation")["prompt"][: args.batch_size]
    generate_tokens(model, tokenizer, prompts, max_new_tokens=8)  # warm-up
    real, padded = [], []
    for i in range(args.repeats):
        torch.manual_seed(i)
        start = time.perf_counter()
        rollout = generate_tokens(model, tokenizer, prompts, max_new_tokens=args.new_tokens)
        seconds = time.perf_counter() - start
        real.append(rollout.response_mask.sum().item() / seconds)
        padded.append(rollout.response.numel() / seconds)
    print(f"model={args.model} device={next(model.parameters()).device} threads={torch.get_num_threads()} "
          f"batch={args.batch_size} max_new_tokens={args.new_tokens} repeats={args.repeats}")
    print(f"median real tokens/s: {statistics.median(real):,.0f}  (min {min(real):,.0f}, max {max(real):,.0f})")
    print(f"median generated positions/s (incl. padding after EOS): {statistics.median(padded):,.0f}")


if __name__ == "__main__":
    main()
