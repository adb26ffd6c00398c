"""Build the CLIP BPE tokenizer offline, from the vocabulary file that ships inside the `open_clip_torch` wheel.

Writes Transformers tokenizer files (tokenizer.json + tokenizer_config.json) of `FlorenceTokenizer`, which
`AutoTokenizer` (once `modeling_florence` is imported) and `FlorenceTokenizer.from_pretrained` load with no network:
the same tokenizer a saved model folder holds, reading a literal `<|endoftext|>` in a caption as text
(`split_special_tokens`, also written to the config so even a plain `CLIPTokenizer` reads the folder that way).
The result ships with the project in `configuration/tokenizer/`, so users never need this script; it documents and
reproduces how those files were made:

    python conversion/build_tokenizer.py --output configuration/tokenizer

Vocabulary: 256 byte symbols, their 256 end-of-word variants, 48,894 merges, then <|startoftext|> (49406) and
<|endoftext|> (49407): 49,408 tokens, exactly open_clip's `SimpleTokenizer`. Padding uses <|endoftext|> as
Transformers' CLIP does (open_clip pads with id 0, which is the real token "!" and cannot be a special token here);
Florence's text model pools at the first <|endoftext|> under a causal mask, so the padding id never reaches the
pooled feature. CLIP's ftfy/html clean-up of raw text happens in `FlorenceProcessor`, before tokenization.
"""

import argparse
import gzip
import importlib.util
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modeling_florence.tokenization_florence import FlorenceTokenizer  # noqa: E402

CONTEXT_LENGTH = 77
NUM_MERGES = 49152 - 256 - 2  # the vocabulary file's merges that CLIP uses
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def default_bpe_path() -> Path:
    """The BPE file inside the installed open_clip package (found without importing it: no torch start-up)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("open_clip_torch is not installed: `pip install open_clip_torch` (it ships the file)")
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed open_clip package")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, which CLIP's BPE symbols are written in.

    Order matters (it fixes the first 512 ids): printable bytes first, then the others mapped past U+0100."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    others = [byte for byte in range(256) if byte not in printable]
    return {**{byte: chr(byte) for byte in printable}, **{byte: chr(256 + i) for i, byte in enumerate(others)}}


def read_vocabulary(bpe_path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(merge) != 2 for merge in merges):
        raise ValueError(f"{bpe_path} is not CLIP's BPE merges file (expected {NUM_MERGES} pairs after the header)")
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [symbol + "</w>" for symbol in symbols] + ["".join(merge) for merge in merges] + [BOS, EOS]
    return {token: index for index, token in enumerate(tokens)}, merges


def build_tokenizer(bpe_path: Path | None = None) -> FlorenceTokenizer:
    vocab, merges = read_vocabulary(bpe_path or default_bpe_path())
    tokenizer = FlorenceTokenizer(
        vocab=vocab, merges=merges, bos_token=BOS, eos_token=EOS, unk_token=EOS, pad_token=EOS,
        model_max_length=CONTEXT_LENGTH,
    )
    if (tokenizer.bos_token_id, tokenizer.eos_token_id, len(tokenizer)) != (49406, 49407, 49408):
        raise ValueError("The built tokenizer does not have CLIP's special-token ids; the BPE file differs")
    return tokenizer


def save_tokenizer(tokenizer: FlorenceTokenizer, output) -> None:
    """`save_pretrained`, keeping in `tokenizer_config.json` only what loading needs (no record of where the
    tokenizer was loaded from), with keys sorted: the shipped folder is reproducible byte for byte."""
    tokenizer.save_pretrained(output)
    path = Path(output) / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only", "name_or_path"):
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent.parent / "configuration" / "tokenizer"))
    parser.add_argument("--bpe", type=Path, default=None, help="bpe_simple_vocab_16e6.txt.gz (default: open_clip's)")
    args = parser.parse_args(argv)
    tokenizer = build_tokenizer(args.bpe)
    save_tokenizer(tokenizer, args.output)
    print(f"Wrote {args.output}: {len(tokenizer)} tokens, bos {tokenizer.bos_token_id}, eos {tokenizer.eos_token_id}")


if __name__ == "__main__":
    main()
