"""GPT-2's BPE tokenizer files (vocab.json, merges.txt) from the BPE ranks that PyPI packages bundle.

The hub's GPT-2 tokenizer is not reachable everywhere the tests run, but GPT-2's byte-level BPE ships
inside some PyPI source distributions as tiktoken ranks: openai-whisper's `whisper/assets/gpt2.tiktoken`
holds one line "<base64 token bytes> <rank>" per token, ranks 0..50255 (<|endoftext|>, 50256, is a
special token and not in the file). This turns those ranks back into the two files GPT-2 was published
with (Radford et al. 2019; OpenAI's encoder.json and vocab.bpe, the hub's vocab.json and merges.txt):

- vocab.json: token -> id, the token's bytes written with GPT-2's byte-to-unicode table (the 188
  printable bytes stand for themselves, the other 68 are shifted to 256 + n), so that every byte
  sequence is a printable string; the id is the tiktoken rank, and <|endoftext|> is 50256.
- merges.txt: the 50,000 merges in rank order. A token of rank r >= 256 was made by one merge; running
  BPE on its bytes with only the ranks below r stops at exactly two parts, which are that merge.
  (tiktoken's own `data_gym_to_mergeable_bpe_ranks` goes the other way.)

    pip download openai-whisper --no-deps --no-binary :all: -d /tmp/whisper   # any version with the asset
    python scripts/make_gpt2_tokenizer.py /tmp/whisper/openai_whisper-*.tar.gz --out tests/data/gpt2-tokenizer

The result is checked against ids that GPT-2's tokenizer is known to give ("Hello world" -> [15496, 995]).
tests/hub_world.py builds the hub's tokenizer.json from these two files.
"""

from __future__ import annotations

import argparse
import base64
import json
import tarfile
from pathlib import Path

ASSET = "whisper/assets/gpt2.tiktoken"
EOS = "<|endoftext|>"
N_RANKS = 50_256  # 256 bytes + 50,000 merges; <|endoftext|> is id 50,256
KNOWN_IDS = {  # GPT-2's ids for these texts (the Hugging Face docs' GPT2Tokenizer examples, and common knowledge)
    "Hello world": [15496, 995],
    " Hello world": [18435, 995],
    "Hello, my dog is cute": [15496, 11, 616, 3290, 318, 13779],
    " the": [262],
    "<|endoftext|>": [50256],
}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table (openai/gpt-2, src/encoder.py): printable bytes map to themselves, the rest to 256 + n."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


def read_ranks(source: Path) -> dict[bytes, int]:
    """{token bytes: rank} from a .tiktoken file, or from the openai-whisper sdist (.tar.gz) holding one."""
    if source.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(source) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith(ASSET)), None)
            if member is None:
                raise SystemExit(f"{source} holds no {ASSET}")
            text = tar.extractfile(member).read().decode()
    else:
        text = source.read_text()
    ranks = {}
    for line in text.splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != N_RANKS or sorted(ranks.values()) != list(range(N_RANKS)):
        raise SystemExit(f"{source}: expected ranks 0..{N_RANKS - 1}, got {len(ranks)} tokens; is it GPT-2's?")
    return ranks


def merge_of(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The merge that made `token`: BPE on its bytes with only the ranks below its own, which ends in two parts."""
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while True:
        best = None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < limit and (best is None or rank < best[0]):
                best = (rank, i)
        if best is None:
            break
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise SystemExit(f"token {token!r} (rank {limit}) is not one merge of lower ranks ({len(parts)} parts)")
    return parts[0], parts[1]


def convert(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) in GPT-2's files' form."""
    table = bytes_to_unicode()

    def word(token: bytes) -> str:
        return "".join(table[b] for b in token)

    vocab = {word(token): rank for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])}
    vocab[EOS] = N_RANKS
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if rank >= 256:
            left, right = merge_of(token, ranks)
            merges.append(f"{word(left)} {word(right)}")
    return vocab, merges


def write(vocab: dict[str, int], merges: list[str], out: Path) -> None:
    """vocab.json and merges.txt as the hub's gpt2 has them (merges.txt opens with a version line)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def check(folder: Path) -> None:
    """The files give GPT-2's known ids, and the tokenizer has GPT-2's shape (50,257 tokens, one for EOS)."""
    from transformers import GPT2TokenizerFast

    tokenizer = GPT2TokenizerFast.from_pretrained(folder)  # reads vocab.json and merges.txt
    assert len(tokenizer) == 50_257 and tokenizer.eos_token_id == 50_256, (len(tokenizer), tokenizer.eos_token_id)
    for text, ids in KNOWN_IDS.items():
        got = tokenizer(text)["input_ids"]
        assert got == ids, f"{text!r}: {got} != {ids}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="gpt2.tiktoken, or the openai-whisper sdist (.tar.gz) holding it")
    parser.add_argument("--out", type=Path, default=Path("tests/data/gpt2-tokenizer"), help="folder to write into")
    args = parser.parse_args(argv)
    vocab, merges = convert(read_ranks(args.source))
    write(vocab, merges, args.out)
    check(args.out)
    print(f"{len(vocab)} tokens, {len(merges)} merges -> {args.out}; known ids check out")


if __name__ == "__main__":
    main()
