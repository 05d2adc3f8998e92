"""A Hugging Face cache that holds `gpt2` and `stanfordnlp/imdb` as the hub serves them, built offline.

- models--gpt2: a GPT-2 of the hub's shape but small (2 layers, 64 dims, random weights) with GPT-2's
  real tokenizer: vocab.json and merges.txt from tests/data/gpt2-tokenizer (made from the BPE ranks in
  openai-whisper's PyPI sdist by scripts/make_gpt2_tokenizer.py), tokenizer.json built from them, and
  the hub's tokenizer_config.json ({"model_max_length": 1024}: no pad token; BOS = EOS = 50256).
- datasets--stanfordnlp--imdb: the hub's layout (README.md with its YAML `configs`, plain_text/
  {train,test,unsupervised}-00000-of-00001.parquet, columns text and label as a ClassLabel), sorted by
  label as IMDB is, with IMDB's `<br />` line breaks, and a few dozen reviews written here.

    env = build_hub_cache(tmp_path)        # HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE=1, ...
    subprocess.run(["rlhf-lab", "run", "--model", "gpt2", "--data", "stanfordnlp/imdb", ...], env=os.environ | env)

Each snapshot sits where huggingface_hub looks for it (refs/main names the commit, snapshots/<commit>/
holds the files), so `from_pretrained("gpt2")` finds the model by name with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

TOKENIZER_DIR = Path(__file__).resolve().parent / "data" / "gpt2-tokenizer"
MODEL_COMMIT = "0" * 39 + "1"  # any 40 hex digits: refs/main names the snapshot
DATASET_COMMIT = "0" * 39 + "2"
EOS_ID = 50_256

# the hub's gpt2 config.json, with the size made small (n_layer 12 -> 2, n_embd 768 -> 64, n_head 12 -> 2)
GPT2_CONFIG = {
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
    "bos_token_id": EOS_ID, "embd_pdrop": 0.1, "eos_token_id": EOS_ID, "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 64, "n_head": 2,
    "n_layer": 2, "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": None,
    "summary_first_dropout": 0.1, "summary_proj_to_labels": True, "summary_type": "cls_index",
    "summary_use_proj": True, "vocab_size": 50_257,
}

IMDB_README = """---
language:
- en
license:
- other
pretty_name: IMDB
task_categories:
- text-classification
task_ids:
- sentiment-classification
dataset_info:
  config_name: plain_text
  features:
  - name: text
    dtype: string
  - name: label
    dtype:
      class_label:
        names:
          '0': neg
          '1': pos
  splits:
  - name: train
    num_examples: {train}
  - name: test
    num_examples: {test}
  - name: unsupervised
    num_examples: {unsupervised}
configs:
- config_name: plain_text
  data_files:
  - split: train
    path: plain_text/train-*
  - split: test
    path: plain_text/test-*
  - split: unsupervised
    path: plain_text/unsupervised-*
  default: true
---

# Dataset Card for "imdb" (a small stand-in with the hub's layout, written for rlhf-lab's tests)
"""

# -----------------------------------------------------------------------------
# reviews: IMDB's register (long, first person, <br /> breaks), written from sentence pools

FILMS = ["this film", "the movie", "this picture", "the sequel", "this thriller", "the remake", "this comedy"]
POSITIVE = [
    "I went in expecting very little and came out genuinely moved by {film}.",
    "The lead performance is superb, subtle and warm without ever asking for our sympathy.",
    "Every scene is beautifully shot, and the score lifts the quiet moments instead of drowning them.",
    "The script is sharp and funny, and the dialogue sounds like people actually talking.",
    "I have watched it three times now and I still notice small details I had missed.",
    "The supporting cast is wonderful, especially the older sister, who steals every scene she is in.",
    "It is rare to see a story this honest about family, grief and forgiveness.",
    "The pacing is patient but never slow, and the ending is earned.",
    "My wife and I talked about it for hours afterwards.",
    "Highly recommended, and one of the best films I have seen this year.",
]
NEGATIVE = [
    "I really wanted to like {film}, but it was a complete waste of two hours.",
    "The acting is wooden, and the lead delivers every line as if reading it off a card.",
    "The plot makes no sense at all, and the twist can be seen coming from the opening credits.",
    "The dialogue is clumsy and the jokes fall flat one after another.",
    "Half the audience walked out before the end, and I almost joined them.",
    "The editing is a mess, with scenes that start in the middle and stop for no reason.",
    "Even the music is annoying, loud where it should be quiet and silent where it should help.",
    "I cannot understand how anyone approved this script.",
    "Save your money and watch the original instead.",
    "Avoid it, it is boring, predictable and far too long.",
]
LONG = ("Without giving too much away, the story follows a man who returns to the small town where he grew up "
        "after many years away, and who has to face the people he left behind, his old friends, his brother and "
        "the woman he once promised to marry.")  # 45 words in one sentence: a review that opens so is skipped


def write_review(rng: random.Random, label: int) -> str:
    """A review of 4 to 9 sentences in IMDB's style: paragraphs joined by <br /><br />."""
    pool = POSITIVE if label == 1 else NEGATIVE
    sentences = rng.sample(pool, rng.randint(4, 9))
    if rng.random() < 0.15:
        sentences.insert(0, LONG)
    if rng.random() < 0.5:
        sentences.insert(rng.randint(1, len(sentences)), LONG)
    text = " ".join(s.format(film=rng.choice(FILMS)) for s in sentences)
    text = text[0].upper() + text[1:]
    cut = text.find(". ", len(text) // 2)
    return text if cut < 0 else text[:cut + 1] + "<br /><br />" + text[cut + 2:]


def imdb_splits(seed: int = 0, n_train: int = 48, n_test: int = 24, n_unsupervised: int = 8) -> dict:
    """{split: (texts, labels)}: train and test half negative then half positive (IMDB's files are sorted
    by label), unsupervised with label -1, as on the hub."""
    rng = random.Random(seed)
    splits = {}
    for name, n in (("train", n_train), ("test", n_test)):
        labels = [0] * (n // 2) + [1] * (n - n // 2)
        splits[name] = ([write_review(rng, label) for label in labels], labels)
    splits["unsupervised"] = ([write_review(rng, rng.randint(0, 1)) for _ in range(n_unsupervised)],
                              [-1] * n_unsupervised)
    return splits


# -----------------------------------------------------------------------------
# the cache


def _snapshot(cache: Path, repo_folder: str, commit: str) -> Path:
    """cache/<repo_folder>/snapshots/<commit>, with refs/main naming the commit (huggingface_hub's layout)."""
    (cache / repo_folder / "refs").mkdir(parents=True, exist_ok=True)
    (cache / repo_folder / "refs" / "main").write_text(commit)
    folder = cache / repo_folder / "snapshots" / commit
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_gpt2(folder: Path, seed: int = 0) -> None:
    """The hub's gpt2 file set: config.json, generation_config.json, model.safetensors, merges.txt,
    tokenizer.json, tokenizer_config.json, vocab.json."""
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import GPT2Config, GPT2LMHeadModel

    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(TOKENIZER_DIR / name, folder / name)
    # tokenizer.json as the hub's: byte-level BPE, no prefix space, <|endoftext|> a special added token
    bpe = models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1024}))

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**GPT2_CONFIG))  # random weights, GPT-2's init
    model.save_pretrained(folder)  # config.json, generation_config.json, model.safetensors
    (folder / "config.json").write_text(json.dumps(GPT2_CONFIG | {"transformers_version": "4.26.0.dev0"}, indent=2))


def write_imdb(folder: Path, seed: int = 0, **sizes) -> dict:
    """README.md and plain_text/{split}-00000-of-00001.parquet; returns {split: (texts, labels)}."""
    import datasets

    splits = imdb_splits(seed, **sizes)
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    (folder / "plain_text").mkdir(parents=True, exist_ok=True)
    for name, (texts, labels) in splits.items():
        ds = datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)
        ds.to_parquet(str(folder / "plain_text" / f"{name}-00000-of-00001.parquet"))
    counts = {name: len(texts) for name, (texts, _) in splits.items()}
    (folder / "README.md").write_text(IMDB_README.replace("{train}", str(counts["train"]))
                                      .replace("{test}", str(counts["test"]))
                                      .replace("{unsupervised}", str(counts["unsupervised"])))
    (folder / ".gitattributes").write_text("*.parquet filter=lfs diff=lfs merge=lfs -text\n")
    return splits


def build_hub_cache(root: Path, seed: int = 0) -> dict[str, str]:
    """Write the cache under root/hf and return the environment that points the libraries at it, offline."""
    home = Path(root) / "hf"
    cache = home / "hub"
    write_gpt2(_snapshot(cache, "models--gpt2", MODEL_COMMIT), seed)
    write_imdb(_snapshot(cache, "datasets--stanfordnlp--imdb", DATASET_COMMIT), seed)
    return {"HF_HOME": str(home), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1"}
