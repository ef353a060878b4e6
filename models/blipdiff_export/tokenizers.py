"""Writing the two tokenizers in the `tokenizers` library's JSON form (the runtime reads nothing else).

* CLIP BPE: the checkpoint's tokenizer.json is copied byte for byte; without one (the SD-1.5
  tokenizer the published checkpoint ships has only vocab.json + merges.txt) the same JSON is
  built from those two files.
* Q-Former WordPiece: bert-base-uncased's vocabulary with `[DEC]` added after the last entry,
  as diffusers' BlipDiffusionPipeline does (`add_special_tokens({"bos_token": "[DEC]"})`).

This module does not depend on the `tokenizers` package; the tests check the files with it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .errors import ExportError

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
DEC = "[DEC]"
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Same pattern as CLIP's own tokenizer (and transformers' CLIPTokenizerFast conversion).
CLIP_SPLIT_REGEX = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"


def _token_text(value: Any, default: str) -> str:
    """tokenizer_config.json stores special tokens as a string or as an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else default


def _added(token_id: int, content: str) -> dict[str, Any]:
    return {
        "id": token_id,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read the tokenizer file {path}: {e}") from e
    if not isinstance(data, dict):
        raise ExportError(f"{path} does not hold a JSON object")
    return data


def _lookup(tok: dict[str, Any], token: str, path: Path) -> int:
    for added in tok.get("added_tokens") or []:
        if added.get("content") == token:
            return int(added["id"])
    vocab = (tok.get("model") or {}).get("vocab") or {}
    if isinstance(vocab, dict) and token in vocab:
        return int(vocab[token])
    raise ExportError(f"{path}: the tokenizer has no token {token!r}")


def _max_id(tok: dict[str, Any]) -> int:
    ids = [int(a["id"]) for a in tok.get("added_tokens") or []]
    vocab = (tok.get("model") or {}).get("vocab") or {}
    ids.extend(int(v) for v in vocab.values())
    return max(ids) if ids else -1


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


# ---------------------------------------------------------------------------------------------- CLIP


def build_clip_tokenizer_json(vocab: dict[str, int], merges: list[list[str]], config: dict[str, Any]) -> dict[str, Any]:
    """The tokenizers-JSON form of a CLIPTokenizer given by vocab.json, merges.txt and tokenizer_config.json."""
    bos = _token_text(config.get("bos_token"), CLIP_BOS)
    eos = _token_text(config.get("eos_token"), CLIP_EOS)
    unk = _token_text(config.get("unk_token"), CLIP_EOS)
    pad = _token_text(config.get("pad_token"), CLIP_EOS)
    for token in (bos, eos, unk, pad):
        if token not in vocab:
            raise ExportError(f"vocab.json has no {token!r}; it is not a CLIP vocabulary")
    specials = sorted({vocab[t]: t for t in (bos, eos, unk, pad)}.items())
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added(i, t) for i, t in specials],
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
                {"type": "Lowercase"},
            ],
        },
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": CLIP_SPLIT_REGEX}, "behavior": "Removed", "invert": True},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            ],
        },
        "post_processor": {
            "type": "RobertaProcessing",
            "sep": [eos, vocab[eos]],
            "cls": [bos, vocab[bos]],
            "trim_offsets": False,
            "add_prefix_space": False,
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": unk,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "</w>",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def read_merges(path: Path) -> list[list[str]]:
    merges = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if (n == 0 and line.startswith("#version")) or not line.strip():
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ExportError(f"{path}:{n + 1}: a merge must be two tokens separated by one space, not {line!r}")
        merges.append(parts)
    return merges


def write_clip_tokenizer(src: Path | None, out: Path) -> dict[str, Any]:
    """Writes `out` (tokenizer.json) from the CLIP tokenizer folder `src`; returns its special ids."""
    if src is None or not src.is_dir():
        raise ExportError(
            "no CLIP tokenizer: the checkpoint has no tokenizer/ folder; pass --tokenizer-dir with a folder "
            "holding tokenizer.json or vocab.json + merges.txt (e.g. Stable Diffusion 1.5's tokenizer/)"
        )
    config = _read_json(src / "tokenizer_config.json") if (src / "tokenizer_config.json").is_file() else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    if (src / "tokenizer.json").is_file():
        tok = _read_json(src / "tokenizer.json")
        if (tok.get("model") or {}).get("type") != "BPE":
            raise ExportError(f"{src / 'tokenizer.json'} is not a BPE tokenizer; expected CLIP's")
        shutil.copyfile(src / "tokenizer.json", out)
    elif (src / "vocab.json").is_file() and (src / "merges.txt").is_file():
        vocab = _read_json(src / "vocab.json")
        tok = build_clip_tokenizer_json(vocab, read_merges(src / "merges.txt"), config)
        out.write_text(_dump(tok), encoding="utf-8")
    else:
        raise ExportError(
            f"{src} holds neither tokenizer.json nor vocab.json + merges.txt; it is not a CLIP tokenizer folder"
        )
    return {
        "bos_token_id": _lookup(tok, _token_text(config.get("bos_token"), CLIP_BOS), out),
        "eos_token_id": _lookup(tok, _token_text(config.get("eos_token"), CLIP_EOS), out),
        "pad_token_id": _lookup(tok, _token_text(config.get("pad_token"), CLIP_EOS), out),
        "max_id": _max_id(tok),
    }


# ------------------------------------------------------------------------------------------ Q-Former


def read_wordpiece_vocab(path: Path) -> dict[str, int]:
    """vocab.txt as BertTokenizer reads it: one token per line, id = line number (later duplicates win)."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"cannot read the WordPiece vocabulary {path}: {e}") from e
    if lines and lines[-1] == "":
        lines.pop()
    vocab = {line.rstrip("\r"): i for i, line in enumerate(lines)}
    missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in vocab]
    if missing:
        raise ExportError(f"{path} lacks {', '.join(missing)}; it is not a BERT WordPiece vocab.txt")
    return vocab


def build_qformer_tokenizer_json(vocab: dict[str, int], do_lower_case: bool = True) -> dict[str, Any]:
    """BertTokenizerFast's JSON form of `vocab`, with [DEC] added at id len(vocab) as the reference does."""
    if DEC in vocab:
        raise ExportError("the WordPiece vocabulary already contains [DEC]; give bert-base-uncased's vocab.txt")
    dec_id = len(vocab)
    specials = sorted((vocab[t], t) for t in BERT_SPECIALS if t in vocab)
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added(i, t) for i, t in specials] + [_added(dec_id, DEC)],
        "normalizer": {
            "type": "BertNormalizer",
            "clean_text": True,
            "handle_chinese_chars": True,
            "strip_accents": None,
            "lowercase": do_lower_case,
        },
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 1}},
            ],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [cls_id], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [sep_id], "tokens": ["[SEP]"]},
            },
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {
            "type": "WordPiece",
            "unk_token": "[UNK]",
            "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100,
            "vocab": vocab,
        },
    }


def hf_cache_dirs() -> list[Path]:
    """Hugging Face hub cache folders, in huggingface_hub's order of precedence."""
    dirs = []
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            dirs.append(Path(os.environ[var]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    dirs.append(Path.home() / ".cache" / "huggingface" / "hub")
    return dirs


def find_cached_bert_vocab() -> Path | None:
    for cache in hf_cache_dirs():
        for repo in ("models--bert-base-uncased", "models--google-bert--bert-base-uncased"):
            found = sorted((cache / repo / "snapshots").glob("*/vocab.txt"))
            if found:
                return found[-1]
    return None


def resolve_qformer_source(checkpoint_dir: Path | None, qformer_vocab: Path | None) -> Path:
    """The file the Q-Former tokenizer is built from: --qformer-vocab, the checkpoint's, or the HF cache's."""
    if qformer_vocab is not None:
        if not qformer_vocab.is_file():
            raise ExportError(f"--qformer-vocab {qformer_vocab}: no such file; give bert-base-uncased's vocab.txt")
        return qformer_vocab
    if checkpoint_dir is not None:
        for name in ("tokenizer.json", "vocab.txt"):
            if (checkpoint_dir / name).is_file():
                return checkpoint_dir / name
    cached = find_cached_bert_vocab()
    if cached is not None:
        return cached
    raise ExportError(
        "the Q-Former's WordPiece tokenizer is needed and the checkpoint has no qformer_tokenizer/ folder "
        "(the published Salesforce checkpoints have none; the reference uses bert-base-uncased). "
        "Pass --qformer-vocab <path to bert-base-uncased's vocab.txt> (30522 lines; e.g. from "
        "https://huggingface.co/google-bert/bert-base-uncased/resolve/main/vocab.txt), or put it in the "
        "local Hugging Face cache (huggingface-cli download bert-base-uncased vocab.txt)"
    )


def write_qformer_tokenizer(
    src: Path, out: Path, vocab_size: int | None = None, allow_smaller: bool = False
) -> dict[str, Any]:
    """Writes `out` (tokenizer.json) from `src` (a tokenizer.json or a vocab.txt); returns its special ids.

    `vocab_size` is the Q-Former's word-embedding count, which must equal the vocabulary plus [DEC]
    (with `allow_smaller`, a smaller vocabulary only gives a "warning" entry in the result).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    if src.name.endswith(".json"):
        tok = _read_json(src)
        if (tok.get("model") or {}).get("type") != "WordPiece":
            raise ExportError(f"{src} is not a WordPiece tokenizer; expected the Q-Former's BERT tokenizer")
        has_dec = any(a.get("content") == DEC for a in tok.get("added_tokens") or []) or DEC in tok["model"]["vocab"]
        if has_dec:
            shutil.copyfile(src, out)
        else:
            tok["added_tokens"] = list(tok.get("added_tokens") or []) + [_added(_max_id(tok) + 1, DEC)]
            out.write_text(_dump(tok), encoding="utf-8")
        lower = bool((tok.get("normalizer") or {}).get("lowercase", True))
    else:
        config_path = src.parent / "tokenizer_config.json"
        config = _read_json(config_path) if config_path.is_file() else {}
        lower = bool(config.get("do_lower_case", True))
        tok = build_qformer_tokenizer_json(read_wordpiece_vocab(src), lower)
        out.write_text(_dump(tok), encoding="utf-8")
    info = {
        "cls_token_id": _lookup(tok, "[CLS]", src),
        "sep_token_id": _lookup(tok, "[SEP]", src),
        "pad_token_id": _lookup(tok, "[PAD]", src),
        "dec_token_id": _lookup(tok, DEC, src),
        "do_lower_case": lower,
    }
    if vocab_size is not None and _max_id(tok) + 1 != vocab_size:
        message = (
            f"the WordPiece vocabulary {src} has {_max_id(tok) + 1} tokens with [DEC], but the Q-Former's "
            f"vocab_size is {vocab_size}; give the vocabulary the checkpoint was trained with "
            "(--qformer-vocab bert-base-uncased's vocab.txt for the published model)"
        )
        # Random weights were trained on nothing: any vocabulary whose ids fit the embedding will do.
        if not (allow_smaller and _max_id(tok) < vocab_size):
            raise ExportError(message)
        info["warning"] = message
    return info
