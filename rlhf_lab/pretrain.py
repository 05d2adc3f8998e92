"""Make the tiny world's tokenizer and tiny GPT-2 from the corpus, in one seeded command.

    python -m rlhf_lab.pretrain --seed 0 --out data/tiny-gpt2

1. A byte-level BPE tokenizer (as GPT-2's, with a 4,096 vocabulary) trained on data/reviews/train.jsonl,
   with <|endoftext|> as BOS and EOS (as GPT-2) and a pad token <|pad|> distinct from EOS.
2. A GPT2LMHeadModel of 4 layers and 128 dims (about 1.3M parameters), pretrained on the reviews
   packed into blocks, each review followed by EOS so that the model learns to stop.
The result loads with AutoModelForCausalLM.from_pretrained("data/tiny-gpt2") and AutoTokenizer.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from .utils import DATA_DIR, REPO_DIR, LabError, config_to_dict, set_seed

EOS = "<|endoftext|>"  # GPT-2's one token for BOS and EOS
PAD = "<|pad|>"        # distinct from EOS, or a pad-masked loss would never teach the model to stop


@dataclass
class PretrainConfig:
    seed: int = 0
    """seeds the tokenizer's data order, the model's init and the batches"""
    reviews_dir: str = str(DATA_DIR / "reviews")
    """folder with train.jsonl and validation.jsonl ({"text": ...} per line)"""
    out: str = str(DATA_DIR / "tiny-gpt2")
    vocab_size: int = 4096  # a budget: BPE stops earlier (2,858) once every corpus word is one token
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4          # 32 dims per head
    n_positions: int = 128   # reviews are at most ~60 tokens; prompts + responses fit
    block_size: int = 128    # training sequences: the packed stream cut into blocks
    batch_size: int = 32
    epochs: int = 18  # validation loss flattens by epoch ~16 (1.454 nats); the reward model gains most
    # from it: from the same 2,000 pairs its accuracy against gold is 83% on a 6-epoch trunk, 87% on this
    lr: float = 2e-3         # small models take a large learning rate
    warmup_steps: int = 100
    weight_decay: float = 0.01
    dropout: float = 0.1     # only while pretraining; every RL stage switches it off
    max_train_reviews: int | None = None
    """use only the first N training reviews (for quick tests)"""


def _relative(path: str) -> str:
    """A path relative to the repository when it lies inside it, so the saved record is portable."""
    try:
        return str(Path(path).resolve().relative_to(REPO_DIR))
    except ValueError:
        return str(path)


def read_texts(path: Path) -> list[str]:
    if not path.is_file():
        raise LabError(f"{path} is missing; make the corpus first: python -m rlhf_lab.corpus --seed 0 --out data")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE, the scheme GPT-2 uses: any text can be encoded, no unknown tokens."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2,
                            special_tokens=[EOS, PAD], show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS,
                                        unk_token=EOS, pad_token=PAD, model_max_length=128)
    return tokenizer


def pack(tokenizer, texts: list[str], block_size: int) -> torch.Tensor:
    """Every review followed by EOS, concatenated and cut into blocks: (N, block_size)."""
    stream = []
    for ids in tokenizer(texts)["input_ids"]:
        stream.extend(ids)
        stream.append(tokenizer.eos_token_id)
    n = len(stream) // block_size
    return torch.tensor(stream[: n * block_size]).view(n, block_size)


@torch.no_grad()
def evaluate(model, blocks: torch.Tensor, batch_size: int = 64) -> float:
    """Mean next-token loss (nats) over packed validation blocks."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        x = blocks[i:i + batch_size]
        out = model(input_ids=x, labels=x)
        n = x.numel() - x.shape[0]  # one prediction fewer than tokens per block
        total += out.loss.item() * n
        count += n
    model.train()
    return total / count


def pretrain(cfg: PretrainConfig) -> dict:
    set_seed(cfg.seed)
    t0 = time.time()
    reviews = Path(cfg.reviews_dir)
    train_texts = read_texts(reviews / "train.jsonl")[: cfg.max_train_reviews]
    val_texts = read_texts(reviews / "validation.jsonl")

    tokenizer = train_tokenizer(train_texts, cfg.vocab_size)
    train_blocks = pack(tokenizer, train_texts, cfg.block_size)   # (N, block)
    val_blocks = pack(tokenizer, val_texts, cfg.block_size)

    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    steps_per_epoch = math.ceil(len(train_blocks) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs

    def lr_at(step):  # linear warmup, cosine decay to 10% (nanoGPT)
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    g = torch.Generator().manual_seed(cfg.seed)
    history = []
    model.train()
    step = 0
    bar = tqdm(total=total_steps, desc="pretraining tiny GPT-2")
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(train_blocks), generator=g)
        for i in range(0, len(order), cfg.batch_size):
            x = train_blocks[order[i:i + cfg.batch_size]]           # (B, block)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            loss = model(input_ids=x, labels=x).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        val_loss = evaluate(model, val_blocks)
        history.append({"epoch": epoch + 1, "step": step, "train_loss": loss.item(), "val_loss": val_loss,
                        "val_perplexity": math.exp(val_loss)})
    bar.close()

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = cfg.dropout
    model.generation_config.update(do_sample=True, top_k=0, top_p=1.0, max_new_tokens=48,
                                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                   bos_token_id=tokenizer.bos_token_id)
    model.save_pretrained(out)  # model.safetensors
    tokenizer.save_pretrained(out)
    result = {
        "config": config_to_dict(cfg) | {"out": _relative(cfg.out), "reviews_dir": _relative(cfg.reviews_dir)},
        "parameters": n_params,
        "train_tokens": int(train_blocks.numel()),
        "validation_tokens": int(val_blocks.numel()),
        "steps": step,
        "seconds": round(time.time() - t0, 1),
        "val_loss": history[-1]["val_loss"],
        "val_perplexity": history[-1]["val_perplexity"],
        "history": history,
        "torch": torch.__version__,
    }
    (out / "pretraining.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = PretrainConfig()
    for field, value in config_to_dict(defaults).items():
        kind = type(getattr(defaults, field)) if getattr(defaults, field) is not None else int
        parser.add_argument(f"--{field.replace('_', '-')}", type=kind, default=getattr(defaults, field))
    args = parser.parse_args(argv)
    result = pretrain(PretrainConfig(**vars(args)))
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
