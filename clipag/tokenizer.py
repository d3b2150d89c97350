"""OpenAI-exact tokenization on top of open_clip's BPE.

open_clip's tokenizer shares OpenAI's vocabulary and cleaning but differs in three ways that break
drop-in use: its special tokens are spelled ``<start_of_text>``/``<end_of_text>`` (so the literal
``<|startoftext|>`` in a prompt tokenizes differently), it returns int64, and it truncates silently.
We reuse its BPE and fix those three things here.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import regex as re
import torch
from open_clip.tokenizer import SimpleTokenizer

SOT_TEXT, EOT_TEXT = "<|startoftext|>", "<|endoftext|>"
_OPEN_CLIP_SPECIALS = {"<start_of_text>": SOT_TEXT, "<end_of_text>": EOT_TEXT}

__all__ = ["tokenize", "tokenize_for", "get_tokenizer", "SOT_TEXT", "EOT_TEXT"]


class OpenAITokenizer(SimpleTokenizer):
    """open_clip's ``SimpleTokenizer`` with OpenAI's special-token spelling (same ids 49406/49407)."""

    def __init__(self) -> None:
        super().__init__()
        for theirs, ours in _OPEN_CLIP_SPECIALS.items():
            token_id = self.encoder.pop(theirs)
            self.encoder[ours] = token_id
            self.decoder[token_id] = ours
            del self.cache[theirs]
            self.cache[ours] = ours
        specials = "|".join(re.escape(t) for t in (SOT_TEXT, EOT_TEXT))
        self.pat = re.compile(specials + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                              re.IGNORECASE)
        self.sot_token_id = self.encoder[SOT_TEXT]
        self.eot_token_id = self.encoder[EOT_TEXT]


@functools.cache
def get_tokenizer() -> OpenAITokenizer:
    """The process-wide tokenizer (building the BPE tables takes ~0.3 s, so build it once)."""
    return OpenAITokenizer()


def tokenize(texts: str | list[str], context_length: int = 77, truncate: bool = False) -> torch.IntTensor:
    """Tokenize like ``clip.tokenize``: ``[SOT] + bpe + [EOT]``, zero padded, int32.

    Raises ``RuntimeError`` for a text longer than ``context_length`` unless ``truncate`` is set, in
    which case the first ``context_length`` tokens are kept and the last one becomes EOT.
    """
    if isinstance(texts, str):
        texts = [texts]
    tokenizer = get_tokenizer()
    sot, eot = tokenizer.sot_token_id, tokenizer.eot_token_id
    result = torch.zeros(len(texts), context_length, dtype=torch.int)
    for row, text in enumerate(texts):
        tokens = [sot, *tokenizer.encode(text), eot]
        if len(tokens) > context_length:
            if not truncate:
                raise RuntimeError(f"Input {text} is too long for context length {context_length}")
            tokens = tokens[:context_length]
            tokens[-1] = eot
        result[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.int)
    return result


def tokenize_for(model: Any, texts: str | list[str], what: str, stacklevel: int = 2) -> torch.IntTensor:
    """``texts`` at ``model``'s context length, for the optimisers: a text that does not fit is cut, with a
    warning that names ``what`` (OpenAI's ``tokenize`` would raise; silently cut, a prompt loses its end)."""
    context = int(getattr(model, "context_length", 77) or 77)
    try:
        return tokenize(texts, context_length=context)
    except RuntimeError:
        warnings.warn(f"{what} is longer than {context} tokens, CLIP's context; the end is cut off",
                      stacklevel=stacklevel + 1)
        return tokenize(texts, context_length=context, truncate=True)
