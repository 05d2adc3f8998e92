"""rlhf_lab.loading: the tiny world, local folders (the hub code path), and the errors a learner sees."""

import json
import shutil

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_lab.generation import sample
from rlhf_lab.loading import TINY_MODEL_DIR, load_model, load_prompts, load_texts, load_tokenizer
from rlhf_lab.utils import LabError, fast_mode, pick_device


def test_tiny_gpt2_is_small_and_loads_with_plain_transformers(tiny):
    model, tokenizer = tiny
    assert (model.config.n_layer, model.config.n_embd) == (4, 128)
    # BPE stops below its 4,096 budget once every corpus word is one token (it never merges across words)
    assert model.config.vocab_size == len(tokenizer) <= 4096
    assert tokenizer.tokenize(" superb") == ["Ġsuperb"]
    assert sum(p.numel() for p in model.parameters()) < 10_000_000
    assert (TINY_MODEL_DIR / "model.safetensors").is_file()
    assert not list(TINY_MODEL_DIR.glob("*.bin"))  # safetensors only
    plain = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR)
    plain_tok = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    assert plain_tok.pad_token_id != plain_tok.eos_token_id
    ids = torch.tensor([plain_tok("The acting was superb.")["input_ids"]])
    torch.testing.assert_close(plain(ids).logits, model(ids).logits)


@pytest.mark.parametrize("text", ["The acting was superb, but the plot was not bad.",
                                  "I didn't love it.\nStill: 7/10!", "Ünïcödé <script>alert(1)</script>  "])
def test_tokenizer_round_trip(tiny, text):
    _, tokenizer = tiny
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_save_pretrained_then_load_from_the_folder_gives_the_same_logits(tiny, tmp_path):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    again, tok = load_model(tmp_path, device="cpu")
    ids = torch.tensor([tok("This film was never boring.")["input_ids"]])
    torch.testing.assert_close(again(ids).logits, model(ids).logits)


def test_gpt2_like_tokenizer_without_pad_gets_eos_as_pad(tiny, gpt2_like_tokenizer_dir, tmp_path):
    """The hub's GPT-2: no pad token, one token for BOS and EOS. Sampling must still find each EOS."""
    raw = AutoTokenizer.from_pretrained(gpt2_like_tokenizer_dir)
    assert raw.pad_token is None and raw.bos_token == raw.eos_token
    tokenizer = load_tokenizer(gpt2_like_tokenizer_dir)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    folder = tmp_path / "gpt2-like"
    shutil.copytree(gpt2_like_tokenizer_dir, folder)
    tiny[0].save_pretrained(folder)
    model, tokenizer = load_model(folder, device="cpu")
    rows = sample(model, tokenizer, ["The plot", "I expected more from"] * 8, max_new_tokens=64, seed=0)
    assert sum(r["ended"] for r in rows) >= 12  # EOS found by position although pad == EOS
    assert all(r["num_tokens"] <= 64 for r in rows)


def test_unknown_hub_name_offline_says_what_to_do():
    with pytest.raises(LabError, match="name='tiny'"):
        load_model("no-such-org/no-such-model")


def test_missing_folder_is_a_clear_error():
    with pytest.raises(LabError, match="not a local folder"):
        load_model("./no/such/folder")


@pytest.mark.parametrize("damage", ["truncate-weights", "bad-config", "no-weights"])
def test_corrupted_or_missing_files_are_a_clear_error(tmp_path, damage):
    folder = tmp_path / "model"
    shutil.copytree(TINY_MODEL_DIR, folder)
    if damage == "truncate-weights":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 3])
    elif damage == "bad-config":
        (folder / "config.json").write_text("{not json")
    else:
        (folder / "model.safetensors").unlink()
    with pytest.raises(LabError, match=str(folder)):
        load_model(folder, device="cpu")


def test_tiny_texts_and_prompts():
    texts = load_texts("tiny", split="validation")
    assert texts.column_names == ["text"] and len(texts) == 1000
    prompts = load_prompts("tiny", split="validation")
    assert prompts.column_names == ["prompt"] and len(prompts) == 256
    assert all(1 <= len(p.split()) <= 6 for p in prompts["prompt"])


def test_dataset_hub_code_path_on_local_folders(tmp_path):
    """A folder laid out as on the hub goes through datasets.load_dataset, like 'stanfordnlp/imdb'."""
    hub_like = tmp_path / "imdb"
    hub_like.mkdir()
    rows = [{"text": "I loved this movie, the acting was superb.", "label": 1},
            {"text": "This was a complete waste of time.", "label": 0}]
    (hub_like / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_texts(hub_like, split="train")
    assert ds["text"] == [r["text"] for r in rows]
    prompts = load_prompts(hub_like, split="train", min_words=2, max_words=2)
    assert prompts["prompt"] == ["I loved", "This was"]
    # a save_to_disk folder too
    datasets.Dataset.from_list(rows).save_to_disk(tmp_path / "saved")
    assert load_texts(tmp_path / "saved", limit=1)["text"] == [rows[0]["text"]]
    with pytest.raises(LabError, match="column='review'|no column 'review'"):
        load_texts(hub_like, column="review")


def test_unknown_dataset_offline_says_what_to_do():
    with pytest.raises(LabError, match="tiny"):
        load_texts("no-such-org/no-such-dataset")


def test_device_choice_and_fast_mode(monkeypatch):
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert pick_device("auto").type in ("cpu", "mps")
        with pytest.raises(LabError, match="CUDA is not available"):
            pick_device("cuda")
    monkeypatch.setenv("RLHF_LAB_FAST", "1")
    assert fast_mode(False) is True
    monkeypatch.setenv("RLHF_LAB_FAST", "0")
    assert fast_mode(True) is False
    monkeypatch.delenv("RLHF_LAB_FAST")
    assert fast_mode(False) is False


def test_local_loads_show_no_library_progress_bars_and_restore_the_setting(tiny, tmp_path, capsys):
    """Loading a local folder prints no transformers/datasets bar ("Loading weights", "Generating
    split"), and leaves the libraries' own setting as it found it."""
    import datasets
    from transformers.utils import logging as hf_logging

    from rlhf_lab.loading import load_model, load_texts, quiet_progress

    data = tmp_path / "texts.jsonl"
    data.write_text('{"text": "a fine film."}\n{"text": "a dull film."}\n')
    assert hf_logging.is_progress_bar_enabled() and datasets.is_progress_bar_enabled()
    load_model("tiny", device="cpu")
    assert load_texts(str(data))["text"] == ["a fine film.", "a dull film."]
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "Generating" not in err
    assert hf_logging.is_progress_bar_enabled() and datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with quiet_progress():
            pass
        assert not datasets.is_progress_bar_enabled()  # off before: still off
    finally:
        datasets.enable_progress_bars()


# -----------------------------------------------------------------------------
# splits and order: one resolver for every layout; subsets of sorted data in a seeded order (issue 13)


def test_split_resolver_for_every_layout():
    from rlhf_lab.loading import resolve_split

    assert resolve_split(["train", "test", "unsupervised"], "validation") == ("test", "all")  # IMDB
    assert resolve_split(["train", "test", "unsupervised"], "train") == ("train", "all")
    assert resolve_split(["train", "validation"], "validation") == ("validation", "all")  # the tiny world's layout
    assert resolve_split(["train", "validation"], "test") == ("validation", "all")
    assert resolve_split(["train"], "validation") == ("train", "held_out")  # a single data file
    assert resolve_split(["train"], "train") == ("train", "rest")
    with pytest.raises(LabError, match="no split 'train'.*unsupervised"):
        resolve_split(["unsupervised"], "train")


def test_a_file_without_splits_holds_out_a_seeded_slice(tmp_path):
    path = tmp_path / "reviews.jsonl"
    texts = [f"Review number {i} of a film." for i in range(40)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    train, held_out = list(load_texts(path, "train")["text"]), list(load_texts(path, "validation")["text"])
    assert len(held_out) == 4 and not set(train) & set(held_out) and sorted(train + held_out) == sorted(texts)
    assert list(load_texts(path, "validation")["text"]) == held_out  # the same rows every time, whatever the run's seed
    assert set(load_prompts(path, "validation", min_words=3, max_words=3)["prompt"]) == {
        " ".join(t.split()[:3]) for t in held_out}
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:5]))
    with pytest.warns(UserWarning, match="too few to hold any out"):
        assert len(load_texts(small, "validation")) == 5


def test_subsets_of_sorted_data_are_seeded_samples_and_the_tiny_world_keeps_its_order(tmp_path):
    from hub_world import write_imdb

    from rlhf_lab.utils import DATA_DIR

    texts, labels = write_imdb(tmp_path)["train"]  # IMDB's layout, sorted by label as IMDB is
    assert labels == sorted(labels)
    label_of = dict(zip(texts, labels))
    assert {label_of[t] for t in load_texts(tmp_path, "train", limit=8)["text"]} == {0, 1}
    openings = load_prompts(tmp_path, "train", limit=8)["prompt"]
    assert len(openings) == 8 and len({label_of[t] for p in openings for t in texts if t.startswith(p)}) == 2
    assert list(load_prompts(tmp_path, "train", limit=8)["prompt"]) == list(openings)  # seeded
    assert len(load_prompts(tmp_path, "validation")) == 24  # IMDB's "validation" is its test split
    # the tiny world's files were written in a seeded random order: read as they are, numbers unchanged
    lines = (DATA_DIR / "prompts" / "validation.jsonl").read_text().splitlines()[:5]
    assert list(load_prompts("tiny", "validation", limit=5)["prompt"]) == [json.loads(line)["prompt"] for line in lines]
