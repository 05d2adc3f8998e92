"""The hub world by name, offline: `rlhf-lab run --model gpt2 --data stanfordnlp/imdb` from a Hugging Face
cache that holds a GPT-2-shaped model with GPT-2's real tokenizer and IMDB's hub layout (tests/hub_world.py).

The tokenizer is GPT-2's own (50,257 tokens, no pad, BOS = EOS = 50256), rebuilt from the BPE ranks that
openai-whisper's PyPI sdist ships (scripts/make_gpt2_tokenizer.py); the model is small with random weights.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from hub_world import EOS_ID, TOKENIZER_DIR, build_hub_cache, imdb_splits, write_gpt2, write_imdb

KNOWN_IDS = {"Hello world": [15496, 995], " Hello world": [18435, 995],
             "Hello, my dog is cute": [15496, 11, 616, 3290, 318, 13779], "<|endoftext|>": [EOS_ID]}


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2")
    write_gpt2(folder)
    return folder


def test_gpt2_tokenizer_rebuilt_from_pypi_ranks_gives_gpt2s_ids(gpt2_folder):
    from transformers import AutoTokenizer

    from rlhf_lab.loading import load_tokenizer

    raw = AutoTokenizer.from_pretrained(gpt2_folder)
    assert len(raw) == 50_257 and raw.pad_token is None
    assert raw.bos_token_id == raw.eos_token_id == EOS_ID
    for text, ids in KNOWN_IDS.items():
        assert raw(text)["input_ids"] == ids, text
    text = "I loved it.<br /><br />The ending, though... 7/10!"
    assert raw.decode(raw(text)["input_ids"]) == text  # byte-level: every text round-trips
    tokenizer = load_tokenizer(gpt2_folder)  # what the lab makes of it: pad = EOS, found by position
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == EOS_ID
    assert (TOKENIZER_DIR / "merges.txt").read_text().count("\n") == 50_001  # "#version: 0.2" and 50,000 merges


def test_hub_demonstrations_fit_the_generation_budget_in_gpt2_tokens(gpt2_folder, tmp_path):
    """Demonstrations cut from IMDB-style reviews end (EOS included) within the 48 new tokens that ranking, PPO and
    evaluation sample, counted with GPT-2's tokenizer; at the old 60-word cut two thirds of these did not."""
    from rlhf_lab.demonstrations import demonstrations_from_texts, load_demonstrations
    from rlhf_lab.loading import load_tokenizer
    from rlhf_lab.ppo import PPOConfig

    tokenizer = load_tokenizer(gpt2_folder)
    budget = PPOConfig().max_new_tokens
    write_imdb(tmp_path)
    demos = load_demonstrations(tmp_path, "train")
    lengths = [len(tokenizer(d["completion"])["input_ids"]) + 1 for d in demos]
    assert len(demos) >= 20 and sum(n <= budget for n in lengths) / len(lengths) >= 0.95
    old = demonstrations_from_texts(imdb_splits()["train"][0], seed=0, max_review_words=60)
    old_lengths = [len(tokenizer(d["completion"])["input_ids"]) + 1 for d in old]
    assert sum(n > budget for n in old_lengths) / len(old_lengths) > 0.5


def test_imdb_by_name_from_the_hub_cache_offline(tmp_path, monkeypatch):
    """Offline, datasets only finds datasets it prepared itself; the hub cache's own copy (as `hf download` leaves
    it) is read as the folder of data files it is, with IMDB's splits: validation -> test."""
    import huggingface_hub

    from rlhf_lab.demonstrations import load_demonstrations
    from rlhf_lab.loading import load_prompts, load_texts

    env = build_hub_cache(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
    splits = imdb_splits()
    assert list(load_texts("stanfordnlp/imdb", "validation")["text"]) == splits["test"][0]
    assert list(load_texts("stanfordnlp/imdb", "train")["text"]) == splits["train"][0]
    prompts = load_prompts("stanfordnlp/imdb", "validation", limit=8)["prompt"]
    assert len(prompts) == 8
    demos = load_demonstrations("stanfordnlp/imdb", "validation", limit=4)
    assert len(demos) == 4 and not any("<br" in d["prompt"] + d["completion"] for d in demos)


@pytest.mark.slow
def test_run_by_hub_names_offline_through_every_stage(tmp_path):
    """`rlhf-lab run --model gpt2 --data stanfordnlp/imdb` by name, HF_HUB_OFFLINE=1, every stage, small settings
    (~35 s on 2 cores); summary.json and report.md carry the EOS share and mean length of SFT and PPO."""
    env = os.environ | build_hub_cache(tmp_path) | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    small = ["--fast", "--sft-n-train", "32", "--sft-n-eval", "16", "--sft-eval-every", "2", "--n-rankings", "8",
             "--k", "3", "--rm-epochs", "1", "--rm-eval-every", "2", "--steps", "2", "--ppo-batch-size", "8",
             "--ppo-minibatch-size", "8", "--ppo-norm-episodes", "8", "--ppo-eval-prompts", "8",
             "--ppo-max-new-tokens", "16"]
    done = subprocess.run([sys.executable, "-m", "rlhf_lab.cli", "run", "--model", "gpt2", "--data", "stanfordnlp/imdb",
                           *small, "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Could not find a config file" not in done.stderr  # peft no longer asks the hub on every save
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "gpt2" and summary["gold_reference"] == "english"
    lengths = summary["lengths"]
    assert lengths["max_new_tokens"] == 16
    for model in ("sft", "ppo"):
        assert 0 <= lengths[model]["eos_share"] <= 1 and 1 <= lengths[model]["mean_length"] <= 16, model
    assert lengths["demonstrations"]["p95"] <= 48
    assert math.isfinite(summary["sft"]["eval_loss_after"]) and summary["sft"]["eval_loss_before"] > 9  # ~ln 50,257
    assert "ended with EOS" in (out / "report.md").read_text()
    # the run used GPT-2's tokenizer, found by name in the cache: the SFT adapter saved it
    from transformers import AutoTokenizer
    saved = AutoTokenizer.from_pretrained(out / "01_sft" / "adapter")
    assert len(saved) == 50_257 and saved("Hello world")["input_ids"] == [15496, 995]
    # the reward model's normalisation sampled the run's prompts (IMDB's), not the tiny world's
    rm = json.loads((out / "03_reward_model" / "reward_model" / "reward_model.json").read_text())
    assert rm["metrics"]["normalisation"]["prompts"] == "stanfordnlp/imdb"
    # every prompt came from IMDB's splits, and the rankings' prompts from both labels (the files are sorted)
    splits = imdb_splits()
    ranked = [json.loads(line)["prompt"] for line in (out / "02_rankings" / "rankings.jsonl").read_text().splitlines()]
    train_texts, labels = splits["train"]
    sources = [{label for text, label in zip(train_texts, labels) if text.startswith(p)} for p in ranked]
    assert all(sources)  # each prompt opens a training review
    assert {next(iter(s)) for s in sources if len(s) == 1} == {0, 1}  # openings only one label's reviews have
