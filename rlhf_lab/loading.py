"""Load a causal LM with its tokenizer, and the lab's text and prompt datasets, from one name.

A name is one of:
- "tiny": the lab's own tiny GPT-2 in data/tiny-gpt2 (the offline default);
- a local directory written by `save_pretrained` (or a data file / `save_to_disk` folder);
- a Hugging Face hub id such as "gpt2", "distilgpt2" or "stanfordnlp/imdb", for online users.
Hub ids go through the ordinary `from_pretrained` / `datasets.load_dataset`, so the path online users
run is the path the tests run on local directories. Offline (HF_HUB_OFFLINE=1), a hub dataset is read
from the hub cache's copy of its files. Every dataset's splits are resolved one way (resolve_split:
validation -> test, or a seeded held-out slice of train), and every subset of hub or local data is a
seeded sample (seeded_order), never the first rows of a file that may be sorted.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from .utils import DATA_DIR, REPO_DIR, LabError, pick_device

if TYPE_CHECKING:
    import datasets  # imported where data is loaded: it brings pandas and pyarrow (~80 MiB), which
    # loading a model, or a PPO trainer given its prompts as a list, does not need

TINY = "tiny"
TINY_MODEL_DIR = DATA_DIR / "tiny-gpt2"

OFFLINE_HINT = ("If you are offline, use the lab's own model with name='tiny', or a local directory "
                "written by save_pretrained().")


def resolve_model_name(name: str | Path) -> str:
    """"tiny" -> data/tiny-gpt2; an existing path -> that path; anything else stays a hub id."""
    if str(name) == TINY:
        if not (TINY_MODEL_DIR / "config.json").is_file():
            raise LabError(f"The tiny GPT-2 is missing from {TINY_MODEL_DIR}. It ships with the repository "
                           "(git checkout data/); to make it again run: python -m rlhf_lab.pretrain")
        return str(TINY_MODEL_DIR)
    return str(name)


def _explain_load_error(name: str, what: str, err: Exception) -> LabError:
    """Turn whatever from_pretrained raised into one sentence a learner can act on."""
    path = Path(name)
    reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    if path.exists() and what == "dataset":
        return LabError(f"Could not load the dataset {path} ({reason}). Check that it is a data file (.jsonl, "
                        ".json, .csv, .txt, .parquet) or a folder of them, with a column of texts.")
    if path.exists():
        return LabError(f"Could not load the {what} from the local folder {path}: its files are missing or "
                        f"corrupted ({reason}). Save it again with save_pretrained(), or load name='tiny'.")
    if "/" in name and (name.startswith((".", "/", "~")) or name.endswith((".json", ".jsonl"))):
        return LabError(f"No such file or folder: {name}. Check the path, or load name='tiny'.")
    example = "'stanfordnlp/imdb'" if what == "dataset" else "'gpt2', 'distilgpt2'"
    return LabError(f"Could not load the {what} {name!r} from the Hugging Face hub ({reason}). "
                    f"Check the name (e.g. {example}). {OFFLINE_HINT}")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (a quick TCP connect, no download)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    from huggingface_hub import constants
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def quiet_datasets_log():
    """datasets logs its own line for a file it cannot parse ("Failed to load JSON from file ...") and
    for a folder without a card; the lab says what went wrong itself, in one line, so those stay quiet."""
    import logging

    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def quiet_progress():
    """No transformers / datasets progress bars inside: loading a local folder takes a blink, and a bar
    per load ("Loading weights", "Generating train split") only clutters a notebook. Hub downloads keep
    theirs. Restores whatever was set before."""
    ds = sys.modules.get("datasets")  # only if imported: loading a model needs no datasets
    hf_was, ds_was = hf_logging.is_progress_bar_enabled(), ds is not None and ds.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    if ds is not None:
        ds.disable_progress_bars()
    try:
        yield
    finally:
        if hf_was:
            hf_logging.enable_progress_bar()
        if ds_was:
            ds.enable_progress_bars()


def _from_pretrained(loader, name: str, what: str, **kwargs):
    """`loader.from_pretrained(name)`, with one clear error when it cannot work.

    A local folder loads as it is. A hub id loads from the local cache when it is there (no network);
    otherwise we check that the hub answers before asking, instead of letting an offline learner wait
    through a minute of retries.
    """
    if Path(name).exists():
        try:
            with quiet_progress():
                return loader.from_pretrained(name, local_files_only=True, **kwargs)
        except Exception as err:
            raise _explain_load_error(name, what, err) from None
    try:
        with quiet_progress():
            return loader.from_pretrained(name, local_files_only=True, **kwargs)
    except Exception:
        pass  # not cached: ask the hub below
    if not hub_reachable():
        raise LabError(f"Could not load the {what} {name!r}: it is not a local folder, not in the Hugging "
                       f"Face cache, and the hub cannot be reached. {OFFLINE_HINT}")
    try:
        return loader.from_pretrained(name, **kwargs)
    except Exception as err:
        raise _explain_load_error(name, what, err) from None


def load_tokenizer(name: str | Path = TINY) -> PreTrainedTokenizerBase:
    """The tokenizer for `name`, made ready for batching.

    The hub's GPT-2 tokenizer has no pad token and one token for BOS and EOS. We then pad with EOS,
    and every stage finds padding through the attention mask and the EOS through its position, never
    by comparing token ids with pad_token_id (that would mask the real EOS and the model would never
    learn to stop). The tiny world's tokenizer has its own <|pad|>.
    """
    name = resolve_model_name(name)
    tokenizer = _from_pretrained(AutoTokenizer, name, "tokenizer", trust_remote_code=False)
    if tokenizer.eos_token is None:
        raise LabError(f"The tokenizer of {name} has no EOS token; the lab needs one to end samples.")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str | Path = TINY, device: str | torch.device | None = "auto",
               dtype: torch.dtype | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer, on `device` ("auto": CUDA, MPS or CPU), in eval mode.

    Weights load from safetensors only; no remote code runs.
    """
    tokenizer = load_tokenizer(name)
    name = resolve_model_name(name)
    model = _from_pretrained(AutoModelForCausalLM, name, "model", dtype=dtype, use_safetensors=True,
                             trust_remote_code=False)
    if model.config.vocab_size < len(tokenizer):
        raise LabError(f"The tokenizer of {name} has {len(tokenizer)} tokens but the model only "
                       f"{model.config.vocab_size}: they do not belong together.")
    # generate() reads these; the hub's GPT-2 has no pad id, so we give it the tokenizer's.
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.to(pick_device(device))
    model.eval()
    return model, tokenizer


# -----------------------------------------------------------------------------
# datasets


def _data_suffix(path: Path) -> str:
    """.jsonl for x.jsonl and x.jsonl.gz: what the file holds, under any compression."""
    suffixes = [x.lower() for x in path.suffixes]
    return suffixes[-2] if len(suffixes) > 1 and suffixes[-1] == ".gz" else path.suffix.lower()


def _read_data_file(path: Path) -> datasets.Dataset:
    """One data file (.jsonl, .json, .csv, .txt, .parquet, each maybe .gz) as a Dataset. A bad line in a
    JSON file is named (file and line), not left to pyarrow."""
    import datasets

    suffix = _data_suffix(path)
    builder = {".jsonl": "json", ".json": "json", ".csv": "csv", ".txt": "text", ".parquet": "parquet"}.get(suffix)
    if builder is None:
        raise LabError(f"{path}: unknown data file type {suffix!r}; use .jsonl, .json, .csv, .txt or .parquet "
                       "(each may be .gz-compressed).")
    try:
        with quiet_progress(), quiet_datasets_log():
            return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:
        if builder == "json":
            _explain_bad_json(path)  # names the file and the line, if a line is to blame
        raise _explain_load_error(str(path), "dataset", err) from None


def _load_local_splits(path: Path) -> dict[str, datasets.Dataset]:
    """{split: Dataset} of a data file (its one split is "train"), a save_to_disk folder, or a folder of
    data files laid out as on the hub (splits from the file names, or from the README's `configs`)."""
    import datasets

    from .preferences import DATA_SUFFIXES

    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        with quiet_progress():
            loaded = datasets.load_from_disk(str(path))
        return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    if path.is_file():
        return {"train": _read_data_file(path)}
    data_files = [p for p in path.rglob("*") if p.is_file() and _data_suffix(p) in DATA_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(path).parts)]
    if not data_files:
        found = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
        raise LabError(f"{path} holds no data files (it has: {found}); the lab reads .jsonl, .json, .csv, .txt or "
                       ".parquet files (each may be .gz), or a folder written by Dataset.save_to_disk. Put the "
                       "data there, or pass the data file itself.")
    try:
        with quiet_progress(), quiet_datasets_log():
            return dict(datasets.load_dataset(str(path)))  # a folder of data files, as on the hub
    except Exception as err:
        raise _explain_load_error(str(path), "dataset", err) from None


def _explain_bad_json(path: Path) -> None:
    """Raise the LabError of the first record that is not a JSON object, naming the file and line;
    return quietly if every record is one (then the original error stands)."""
    from .preferences import read_records

    for where, record in read_records(path):  # raises for invalid JSON, naming the line
        if not isinstance(record, dict):
            raise LabError(f"{path}, {where}: a record must be a JSON object {{\"text\": ...}}, not a "
                           f"{type(record).__name__}; fix or delete that line.")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) is set: the hub is not asked, only the local cache."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _cached_hub_snapshot(name: str) -> Path | None:
    """The dataset's files in the Hugging Face hub cache (HF_HUB_CACHE/datasets--org--name/snapshots/<commit>,
    as `hf download --repo-type dataset` or an earlier online load left them), or None if not cached.

    Offline, datasets.load_dataset("org/name") only finds datasets it has prepared itself (HF_DATASETS_CACHE);
    the hub's own copy of the files is read here, as the folder of data files it is."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, repo_type="dataset", local_files_only=True))
    except Exception:
        return None


def _load_hub_splits(name: str) -> dict[str, datasets.Dataset]:
    """{split: Dataset} of a hub id: from the hub cache when offline (or the hub does not answer), else with
    datasets.load_dataset; failing at once, not after a minute of retries, when neither can work."""
    import datasets

    offline = hub_offline() or not hub_reachable()
    snapshot = _cached_hub_snapshot(name) if offline else None
    if snapshot is not None:
        return _load_local_splits(snapshot)
    if offline and not hub_offline():
        raise LabError(f"Could not load the dataset {name!r}: it is not a local file or folder, not in the Hugging "
                       "Face hub cache, and the hub cannot be reached. Use the tiny world (name='tiny') or a local "
                       "file; if the dataset is in your Hugging Face cache, set HF_HUB_OFFLINE=1.")
    try:
        with quiet_datasets_log():
            return dict(datasets.load_dataset(name))  # online; or offline, a dataset that datasets prepared before
    except Exception as err:
        if not offline:
            raise
        from huggingface_hub import constants
        raise LabError(f"Could not load the dataset {name!r} offline (HF_HUB_OFFLINE is set): it is neither in the "
                       f"Hugging Face hub cache ({constants.HF_HUB_CACHE}) nor prepared in datasets' cache "
                       f"({type(err).__name__}). Download it once online (hf download --repo-type dataset {name}), "
                       "or use the tiny world (name='tiny') or a local file.") from None


def _load_splits(name: str | Path) -> dict[str, datasets.Dataset]:
    """{split: Dataset} of a local file or folder, or of a hub id; one LabError if it cannot be loaded."""
    path = Path(name)
    try:
        return _load_local_splits(path) if path.exists() else _load_hub_splits(str(name))
    except LabError:
        raise
    except Exception as err:
        raise _explain_load_error(str(name), "dataset", err) from None


# -----------------------------------------------------------------------------
# splits: one resolver for local data and hub datasets alike

HELD_OUT_FRACTION = 0.1  # a dataset with a train split only: this share of it is held out as "validation"
HELD_OUT_MAX = 1_000  # ... at most: every stage evaluates on a few hundred rows (SFT 200, PPO 256 prompts)
MIN_ROWS_TO_HOLD_OUT = 10  # fewer rows spare none: "validation" is then the training rows, with a warning
SPLIT_SEED = 0  # the held-out rows belong to the data, not to a run: runs with other seeds are measured on them too
HELD_OUT_NAMES = ("validation", "test")  # the held-out splits, in the order a request for either is answered


def resolve_split(available, split: str) -> tuple[str, str]:
    """(the split to read, which of its rows: "all", "held_out" or "rest") for a request of `split`.

    IMDB has train, test and unsupervised; the tiny world train and validation; a single data file only
    train. So: a split that exists is read as it is; "validation" is "test" where there is no
    validation (and the other way round); where neither exists, a seeded held-out slice of train
    (held_out_rows) stands in, and "train" is then the rest of it, so that nothing is evaluated on the
    rows it trained on.
    """
    available = list(available)
    held_out = [s for s in HELD_OUT_NAMES if s in available]
    if split in available:
        return split, ("rest" if split == "train" and not held_out else "all")
    if split in HELD_OUT_NAMES:
        if held_out:
            return held_out[0], "all"
        if "train" in available:
            return "train", "held_out"
    raise LabError(f"no split {split!r} in this dataset (it has {', '.join(available) or 'none'}), and none to read "
                   f"instead: the lab reads train, and validation or test (or holds out part of train).")


def held_out_rows(n: int, seed: int = SPLIT_SEED) -> list[int]:
    """The rows of an n-row train split held out as its validation split: a seeded sample of
    HELD_OUT_FRACTION (at least 1, at most HELD_OUT_MAX); none below MIN_ROWS_TO_HOLD_OUT rows."""
    if n < MIN_ROWS_TO_HOLD_OUT:
        return []
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[:min(HELD_OUT_MAX, max(1, round(HELD_OUT_FRACTION * n)))])


def load_split(name: str | Path, split: str = "train") -> datasets.Dataset:
    """The rows of `split` of a local data file or folder, or a hub dataset, every column, resolved by
    resolve_split (IMDB's "validation" is its "test"; a file's is a held-out slice of it)."""
    splits = _load_splits(name)
    source, rows = resolve_split(splits, split)
    ds = splits[source]
    if rows == "all":
        return ds
    held_out = held_out_rows(len(ds))
    if not held_out:
        if rows == "held_out":
            warnings.warn(f"{name} has only {len(ds)} rows and no validation or test split: too few to hold any "
                          f"out (the lab holds out {HELD_OUT_FRACTION:.0%} of {MIN_ROWS_TO_HOLD_OUT} rows or more), "
                          "so its held-out numbers are measured on the training rows.", stacklevel=3)
        return ds
    if rows == "held_out":
        return ds.select(held_out)
    held = set(held_out)
    return ds.select([i for i in range(len(ds)) if i not in held])


def seeded_order(n: int, seed: int) -> list[int]:
    """A seeded permutation of range(n): which rows a subset takes, and in what order. Hub datasets are
    often sorted (IMDB by label), so the first rows are never a fair sample."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def load_texts(name: str | Path = TINY, split: str = "train", column: str = "text",
               limit: int | None = None, seed: int = 0) -> datasets.Dataset:
    """A dataset of texts with one column "text".

    "tiny": data/reviews/{split}.jsonl, in the file's order (the generator wrote it in a seeded random
    order) and its first `limit` rows. A hub id such as "stanfordnlp/imdb", or a local file or folder:
    the split as resolve_split reads it, in the file's order; with `limit`, a seeded sample of that many
    rows (seeded_order), never the first rows. `column` names the text column if it is not "text".
    """
    if str(name) == TINY:
        path = DATA_DIR / "reviews" / f"{split}.jsonl"
        if not path.is_file():
            raise LabError(f"The tiny world's reviews are missing: {path}. They ship with the repository; "
                           "to make them again run: python -m rlhf_lab.corpus --seed 0 --out data")
        ds = _read_data_file(path)
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
    else:
        ds = load_split(name, split)
        if limit is not None:
            ds = ds.select(seeded_order(len(ds), seed)[:limit])
    if column not in ds.column_names:
        raise LabError(f"{name}: no column {column!r} (it has {ds.column_names}); pass column=... to choose one.")
    ds = ds.select_columns([column])
    if column != "text":
        ds = ds.rename_column(column, "text")
    return ds


def load_prompts(name: str | Path = TINY, split: str = "train", limit: int | None = None,
                 seed: int = 0, min_words: int = 2, max_words: int = 5) -> datasets.Dataset:
    """A dataset with one column "prompt": openings of reviews for the policy to continue.

    "tiny": data/prompts/{split}.jsonl, in the file's (seeded random) order. Anything else is loaded with
    load_texts, put in a seeded order (IMDB's splits are sorted by label: the first rows would all be
    negative reviews), and each text is cut to its first few words, as TRL's sentiment notebook cut
    IMDB reviews into prompts.
    """
    if str(name) == TINY:
        path = DATA_DIR / "prompts" / f"{split}.jsonl"
        if not path.is_file():
            raise LabError(f"The tiny world's prompts are missing: {path}. To make them again run: "
                           "python -m rlhf_lab.corpus --seed 0 --out data")
        ds = _read_data_file(path).select_columns(["prompt"])
        return ds.select(range(min(limit, len(ds)))) if limit is not None else ds
    import datasets

    from .corpus import review_prompts
    texts = load_texts(name, split=split)
    texts = texts.select(seeded_order(len(texts), seed)[:limit])["text"]  # limit None: every row, shuffled
    return datasets.Dataset.from_dict({"prompt": review_prompts(texts, seed=seed, min_words=min_words,
                                                                max_words=max_words)})


def describe_world(name: str | Path = TINY) -> dict:
    """Which world a name belongs to and where it loads from, for the welcome notebook's check."""
    resolved = resolve_model_name(name)
    world = "tiny" if str(name) == TINY else ("local" if Path(resolved).exists() else "hub")
    source = Path(resolved)
    if source.exists():  # say data/tiny-gpt2, not this machine's absolute path
        try:
            source = source.resolve().relative_to(REPO_DIR)
        except ValueError:
            pass
    info = {"name": str(name), "world": world, "source": str(source)}
    config = Path(resolved) / "config.json"
    if config.is_file():
        cfg = json.loads(config.read_text())
        info.update({k: cfg.get(k) for k in ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions")})
    return info
