"""The umT5 tokenizer: official prompt cleaning, SentencePiece ids, `</s>` appended, at most 512 tokens.

The SentencePiece model comes from (a) the `spiece_model` uint8 tensor ComfyUI embeds in its umT5 files,
(b) `spiece.model` or `tokenizer.json` in a tokenizer folder (the official checkpoint's `google/umt5-xxl/`),
or (c) a path the user gives (either file, a folder holding one, or a safetensors file with `spiece_model`).
"""

from __future__ import annotations

import html
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io.checkpoint import CheckpointError
from ..io.safe import regular_file
from ..config import TEXT_LEN

log = logging.getLogger(__name__)

SPIECE_KEY = "spiece_model"
TOKENIZER_FILES = ("spiece.model", "tokenizer.json")
TOKENIZER_LIMIT = 64 << 20  # bytes a tokenizer file may have
_WS = re.compile(r"\s+")


def clean_prompt(text: str) -> str:
    """Official Wan cleaning: ftfy.fix_text, html.unescape twice, strip, collapse whitespace runs to one space."""
    import ftfy

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WS.sub(" ", text).strip()


@dataclass(frozen=True)
class TokenizedPrompt:
    """Token ids of one prompt (ending in `</s>`), the cleaned text, and how many tokens truncation dropped."""

    ids: list[int]
    cleaned: str
    dropped: int

    def warning(self) -> str | None:
        """A user-facing line when the prompt was truncated, else None."""
        if not self.dropped:
            return None
        return (f"prompt too long: {self.dropped} token(s) beyond the {len(self.ids)}-token limit were dropped "
                f"(the text encoder sees only the first {len(self.ids) - 1} tokens + </s>); shorten the prompt.")


class Tokenizer:
    """SentencePiece (or tokenizers' tokenizer.json) encoder with the official cleaning and truncation."""

    def __init__(self, *, spm_bytes: bytes | None = None, tokenizer_json: str | os.PathLike | None = None,
                 text_len: int = TEXT_LEN, source: str = "") -> None:
        self.text_len = text_len
        self.source = source
        self._spm = None
        self._fast = None
        self._spm_bytes = spm_bytes
        if spm_bytes is not None:
            import sentencepiece

            try:
                self._spm = sentencepiece.SentencePieceProcessor(model_proto=spm_bytes)
            except Exception:  # sentencepiece raises RuntimeError/OSError on bad protos
                raise CheckpointError(f"{source or 'tokenizer'}: not a valid SentencePiece model (spiece.model); the "
                                      "file is corrupt or another format. Download the tokenizer again.") from None
            self.eos_id = int(self._spm.eos_id())
            self.pad_id = max(int(self._spm.pad_id()), 0)
            self.vocab_size = int(self._spm.get_piece_size())
            if self.vocab_size < 3 or not 0 <= self.eos_id < self.vocab_size:
                raise CheckpointError(f"{source or 'tokenizer'}: a SentencePiece model with {self.vocab_size} pieces "
                                      "and no '</s>'; it is empty or corrupt. Download the tokenizer again.")
        elif tokenizer_json is not None:
            try:
                from tokenizers import Tokenizer as FastTokenizer
            except ImportError as exc:
                raise CheckpointError(
                    f"{tokenizer_json}: reading tokenizer.json needs the 'tokenizers' package (installed with "
                    "transformers). Install it, or put the SentencePiece file spiece.model next to it.") from exc
            try:
                self._fast = FastTokenizer.from_file(str(tokenizer_json))
            except BaseException as exc:  # the Rust library's panics are BaseExceptions
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                raise CheckpointError(f"{tokenizer_json}: not a valid tokenizer.json (the tokenizers library cannot "
                                      "read it); the file is corrupt or another format. Download it again.") from None
            eos, pad = self._fast.token_to_id("</s>"), self._fast.token_to_id("<pad>")
            if eos is None:
                raise CheckpointError(f"{tokenizer_json}: has no '</s>' token; this is not a T5-family tokenizer.")
            self.eos_id, self.pad_id = int(eos), int(pad if pad is not None else 0)
            self.vocab_size = int(self._fast.get_vocab_size(with_added_tokens=True))
        else:
            raise ValueError("Tokenizer needs spm_bytes or tokenizer_json")

    def serialized(self) -> bytes | None:
        """The SentencePiece model proto (what ComfyUI stores as `spiece_model`), or None for tokenizer.json."""
        return self._spm_bytes

    def raw_ids(self, cleaned: str) -> list[int]:
        """Ids of already-cleaned text, without `</s>` and without truncation."""
        if self._spm is not None:
            return list(self._spm.encode(cleaned))
        return list(self._fast.encode(cleaned, add_special_tokens=False).ids)

    def encode(self, prompt: str) -> TokenizedPrompt:
        """Clean, tokenize, append `</s>`, keep at most `text_len` tokens (dropped count reported)."""
        cleaned = clean_prompt(prompt)
        ids = self.raw_ids(cleaned)
        keep = self.text_len - 1
        dropped = max(0, len(ids) - keep)
        result = TokenizedPrompt(ids[:keep] + [self.eos_id], cleaned, dropped)
        if dropped:
            log.warning("%s", result.warning())
        return result


def _spm_from_tensor(t: torch.Tensor, source: str) -> Tokenizer:
    if t.dtype != torch.uint8 or t.dim() != 1:
        raise CheckpointError(f"{source}: '{SPIECE_KEY}' is a {t.dtype} tensor of shape {tuple(t.shape)}, expected 1-D uint8.")
    return Tokenizer(spm_bytes=t.numpy().tobytes(), source=source)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Open a tokenizer from spiece.model, tokenizer.json, a folder holding one, or a safetensors with `spiece_model`."""
    p = Path(path)
    if p.is_dir():
        for name in TOKENIZER_FILES:
            if (p / name).is_file():
                return load_tokenizer(p / name)
        raise CheckpointError(f"{p}: this folder has neither spiece.model nor tokenizer.json. "
                              "Point at the umT5 tokenizer folder (e.g. google/umt5-xxl/ of the official checkpoint).")
    size = regular_file(p, "tokenizer file").st_size
    if size > TOKENIZER_LIMIT:
        raise CheckpointError(f"{p}: {size:,} bytes is too large for a tokenizer (umT5's is about 4.5 MB as "
                              "spiece.model, 16 MB as tokenizer.json); it is not a tokenizer file.")
    if p.name.endswith(".json"):
        return Tokenizer(tokenizer_json=p, source=str(p))
    if p.name.endswith((".safetensors", ".sft")):
        from ..io.checkpoint import open_checkpoint

        ckpt = open_checkpoint(p)
        if SPIECE_KEY not in ckpt:
            raise CheckpointError(f"{p}: this safetensors file has no embedded '{SPIECE_KEY}' tokenizer.")
        return _spm_from_tensor(ckpt.get(SPIECE_KEY), str(p))
    return Tokenizer(spm_bytes=p.read_bytes(), source=str(p))


def find_tokenizer_near(weights: str | os.PathLike) -> Path | None:
    """A tokenizer folder/file next to a weights file: the folder itself, google/umt5-xxl/, umt5-xxl/, tokenizer/,
    or the `tokenizer/` beside a diffusers pipeline's `text_encoder/` folder."""
    p = Path(weights)
    base = p if p.is_dir() else p.parent
    # Inside the weights' own folder only; a folder's siblings google/umt5-xxl/ (the official checkpoint layout)
    # and tokenizer/ (beside a diffusers pipeline's text_encoder/) stay inside the model folder that holds both.
    folders = [base, base / "google" / "umt5-xxl", base / "umt5-xxl", base / "tokenizer"]
    if p.is_dir():
        folders += [base.parent / "google" / "umt5-xxl", base.parent / "tokenizer"]
    for folder in folders:
        for name in TOKENIZER_FILES:
            if (folder / name).is_file():
                return folder / name
    return None
