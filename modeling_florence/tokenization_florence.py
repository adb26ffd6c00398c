# Copyright 2026 The Florence for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Florence's tokenizer: CLIP's BPE, loaded only from complete files, with open_clip's treatment of special tokens.

`FlorenceTokenizer` is Transformers' `CLIPTokenizer` with three differences that matter for untrusted text:

- **Loading fails loudly.** Transformers' CLIP tokenizer, given a folder whose `tokenizer.json` is missing, builds a
  two-token tokenizer without complaint. `FlorenceTokenizer.from_pretrained` (and so `AutoTokenizer` and
  `FlorenceProcessor.from_pretrained` on a saved folder) checks the files first and the result after, and raises an
  error naming the missing or broken file.
- **Long texts are truncated by default** to the 77 positions of the text tower, the end-of-text id kept last.
- **Special-token text is text.** A literal `<|endoftext|>` or `<|startoftext|>` in user text is split into ordinary
  BPE tokens (`split_special_tokens=True`), as open_clip does; otherwise a caption could end itself early, since the
  text tower pools at the first end-of-text id.

open_clip names its special tokens `<start_of_text>` and `<end_of_text>`, and its tokenizer does map those literal
strings (any case) to ids 49406 and 49407 wherever they appear. `encode_like_open_clip` reproduces that exactly
(`FlorenceProcessor` uses it), so ids equal `open_clip.tokenize` for every text.
"""

import json
from pathlib import Path

import regex
from transformers import CLIPTokenizer

VOCAB_SIZE, BOS_ID, EOS_ID = 49408, 49406, 49407
# open_clip's SimpleTokenizer pattern; its special-token alternatives come first, so they win where they match
_OPEN_CLIP_PATTERN = regex.compile(
    r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
)
_OPEN_CLIP_SPECIALS = {"<start_of_text>": BOS_ID, "<end_of_text>": EOS_ID}
_PROBE = ("a photo of a cat", [320, 1125, 539, 320, 2368])  # CLIP BPE ids, to catch a wrong vocabulary or merges


def _read_json(path: Path) -> dict:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"Tokenizer file {path} is not readable JSON: {error}") from error
    if not isinstance(content, dict):
        raise ValueError(f"Tokenizer file {path} does not hold a JSON object")
    return content


def check_tokenizer_folder(folder, subfolder: str = "") -> Path | None:
    """Check a local tokenizer folder before loading it; returns the file the vocabulary comes from.

    Needs `tokenizer.json` (a BPE model with vocabulary and merges), or `vocab.json` + `merges.txt`. Missing files
    raise `FileNotFoundError`, unreadable or empty ones `ValueError`, each naming the file. Not a local folder (a Hub
    id): returns None, and only the loaded result is checked."""
    folder = Path(folder) / subfolder if subfolder else Path(folder)
    if not folder.is_dir():
        return None
    config = folder / "tokenizer_config.json"
    if config.exists():
        _read_json(config)
    serialized, vocab, merges = folder / "tokenizer.json", folder / "vocab.json", folder / "merges.txt"
    if serialized.exists():
        model = _read_json(serialized).get("model")
        if not isinstance(model, dict) or not model.get("vocab") or not model.get("merges"):
            raise ValueError(f"Tokenizer file {serialized} has no BPE vocabulary and merges (model.vocab/merges)")
        return serialized
    if vocab.exists() or merges.exists():
        for path in (vocab, merges):
            if not path.exists():
                raise FileNotFoundError(f"Tokenizer file {path} is missing (the folder has only part of vocab.json + "
                                        "merges.txt, and no tokenizer.json)")
        if not _read_json(vocab):
            raise ValueError(f"Tokenizer file {vocab} is empty")
        if len(merges.read_text(encoding="utf-8", errors="replace").splitlines()) < 2:
            raise ValueError(f"Tokenizer file {merges} holds no merges")
        return vocab
    raise FileNotFoundError(f"Tokenizer file {serialized} is missing (nor are there vocab.json + merges.txt): "
                            f"{folder} cannot give the CLIP BPE vocabulary")


def check_clip_vocabulary(tokenizer, source) -> None:
    """Raise a `ValueError` naming `source` unless `tokenizer` is CLIP's BPE (49,408 tokens, ids 49406/49407)."""
    found = (len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    if found != (VOCAB_SIZE, BOS_ID, EOS_ID):
        raise ValueError(f"The tokenizer loaded from {source} has {found[0]} tokens and start/end ids {found[1:]}; "
                         f"Florence needs CLIP's BPE ({VOCAB_SIZE} tokens, ids {BOS_ID}/{EOS_ID})")
    text, expected = _PROBE
    if tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"] != expected:
        raise ValueError(f"The tokenizer loaded from {source} does not tokenize like CLIP's BPE (wrong merges?)")


def load_checked(loader, source, *args, **kwargs):
    """Run `loader(source, ...)` (a `from_pretrained`) between `check_tokenizer_folder` and `check_clip_vocabulary`;
    errors from a broken file come out naming it."""
    path = check_tokenizer_folder(source, kwargs.get("subfolder", "") or "")
    try:
        loaded = loader(source, *args, **kwargs)
    except Exception as error:  # noqa: BLE001 - `tokenizers` raises a bare Exception for a malformed model
        if path is None:
            raise
        raise ValueError(f"Could not load the tokenizer from {path}: {error}") from error
    check_clip_vocabulary(getattr(loaded, "tokenizer", loaded), path or source)
    return loaded


class FlorenceTokenizer(CLIPTokenizer):
    """CLIP BPE tokenizer that refuses incomplete files and reads special-token strings in text as plain text."""

    def __init__(self, *args, split_special_tokens: bool = True, **kwargs):
        super().__init__(*args, split_special_tokens=split_special_tokens, **kwargs)

    def __call__(self, *args, truncation=None, **kwargs):
        """Transformers' call, truncating by default to `model_max_length` (77: the text tower's positions) with the
        end-of-text id kept last, so long texts (class names in `set_class_names` and the zero-shot pipelines) encode
        instead of overflowing the position table. Pass `truncation=False` for the full ids."""
        return super().__call__(*args, truncation=True if truncation is None else truncation, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        return load_checked(super().from_pretrained, pretrained_model_name_or_path, *args, **kwargs)


def encode_like_open_clip(tokenizer, texts: list[str], verbose: bool = True) -> list[list[int]]:
    """Token ids (no start/end ids) of texts already cleaned as CLIP cleans them, equal to open_clip's `encode`.

    Literal `<start_of_text>`/`<end_of_text>` become ids 49406/49407 where open_clip's pattern matches them; all
    other text, `<|endoftext|>` included, goes through the BPE as plain text. `verbose=False` silences the
    tokenizer's "longer than the maximum sequence length" warning, for callers that truncate the ids themselves."""
    pieces, plans = [], []  # plans[i]: text i as piece numbers (BPE'd below) and special ids, in order
    for text in texts:
        lowered, plan, start = text.lower(), [], 0
        for match in _OPEN_CLIP_PATTERN.finditer(lowered):
            if match.group() in _OPEN_CLIP_SPECIALS:
                plan += [len(pieces), -_OPEN_CLIP_SPECIALS[match.group()]]
                pieces.append(lowered[start : match.start()])
                start = match.end()
        plan.append(len(pieces))
        pieces.append(lowered[start:] if plan[:-1] else text)  # no special: the text exactly as before
        plans.append(plan)
    encoded = tokenizer(pieces, add_special_tokens=False, split_special_tokens=True, truncation=False,
                        verbose=verbose)["input_ids"]
    return [[token for step in plan for token in (encoded[step] if step >= 0 else [-step])] for plan in plans]


__all__ = ["FlorenceTokenizer", "check_clip_vocabulary", "check_tokenizer_folder", "encode_like_open_clip"]
