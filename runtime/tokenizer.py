"""The official CLIP byte-level BPE with LongCLIP's 248-token padding and truncation.

Identical to OpenAI CLIP's ``simple_tokenizer`` + LongCLIP's ``tokenize(texts, 248, truncate=True)``:
ftfy, html-unescape twice, whitespace collapse, lowercase, ``[SOT] + bpe + [EOT]``, zero padding; a text that
is too long is cut to 248 tokens and its last token forced to EOT.
"""

from __future__ import annotations

import functools
import gzip
import html
from collections.abc import Sequence
from importlib import resources

import ftfy
import numpy as np
import regex

from .constants import CONTEXT_LENGTH, EOT_TOKEN, SOT_TOKEN
from .errors import TextError

_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")
_SPECIAL = ("<|startoftext|>", "<|endoftext|>")
_N_MERGES = 49152 - 256 - 2


@functools.lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {byte: chr(code) for byte, code in zip(printable, codes)}


def clean(text: str) -> str:
    """The official text cleaning: ftfy, html-unescape twice, collapse whitespace, lowercase.

    >>> clean("  A &amp;amp; B\\n\\tC ")
    'a & b c'
    """
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


class Tokenizer:
    """CLIP BPE tokenizer; ``Tokenizer()(texts)`` gives LongCLIP's ``(N, 248) int64`` ids.

    >>> Tokenizer()(["a photo of a cat"])[0, :7].tolist()
    [49406, 320, 1125, 539, 320, 2368, 49407]
    """

    def __init__(self) -> None:
        merges_text = resources.files(__package__).joinpath("bpe_simple_vocab_16e6.txt.gz").read_bytes()
        lines = gzip.decompress(merges_text).decode("utf-8").split("\n")[1 : _N_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        byte_chars = list(_byte_to_unicode().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + list(_SPECIAL)
        self.encoder: dict[str, int] = {token: i for i, token in enumerate(vocab)}
        self.bpe_ranks: dict[tuple[str, str], int] = {pair: i for i, pair in enumerate(merges)}  # type: ignore[misc]
        self._byte_encoder = _byte_to_unicode()
        self._cache: dict[str, list[int]] = {s: [self.encoder[s]] for s in _SPECIAL}
        assert self.encoder["<|startoftext|>"] == SOT_TOKEN and self.encoder["<|endoftext|>"] == EOT_TOKEN

    def _bpe(self, word: str) -> list[int]:
        """Ids of one pre-token (already mapped to byte characters), merging the lowest-ranked pair first."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            ranked = [(self.bpe_ranks.get(pair, _N_MERGES), pair) for pair in zip(parts, parts[1:])]
            rank, (first, second) = min(ranked, key=lambda r: r[0])
            if rank == _N_MERGES:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = [self.encoder[p] for p in parts]
        self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` without SOT/EOT.

        >>> Tokenizer().encode("Hello, world!")
        [3306, 267, 1002, 256]
        """
        if not isinstance(text, str):
            raise TextError("not_text", f"text must be a str, got {type(text).__name__} ({text!r:.60})")
        ids: list[int] = []
        for token in _PATTERN.findall(clean(text)):
            ids.extend(self._bpe("".join(self._byte_encoder[b] for b in token.encode("utf-8"))))
        return ids

    def batch(
        self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH, truncate: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(ids (N, context_length) int64, lengths (N,) int64)``; ``lengths`` counts SOT/EOT before any cut,
        so ``lengths > context_length`` marks the texts that were truncated."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), context_length), dtype=np.int64)
        lengths = np.zeros(len(texts), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [SOT_TOKEN, *self.encode(text), EOT_TOKEN]
            lengths[row] = len(ids)
            if len(ids) > context_length:
                if not truncate:
                    raise TextError("too_long", f"text of {len(ids)} tokens is too long for context length "
                                    f"{context_length} ({text!r:.60}): pass truncate=True")
                ids = ids[:context_length]
                ids[-1] = EOT_TOKEN
            out[row, : len(ids)] = ids
        return out, lengths

    def __call__(
        self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH, truncate: bool = True
    ) -> np.ndarray:
        """``(N, context_length) int64`` ids, as the official ``longclip.tokenize``."""
        return self.batch(texts, context_length, truncate)[0]


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    """The shared tokenizer, built on first use (not at import)."""
    return Tokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH, truncate: bool = True) -> np.ndarray:
    """LongCLIP's ``tokenize``: ``(N, 248) int64`` ids, zero-padded, EOT forced on truncation.

    >>> tokenize("a dog").shape
    (1, 248)
    """
    return default_tokenizer()(texts, context_length=context_length, truncate=truncate)


def eot_positions(ids: np.ndarray) -> np.ndarray:
    """Index of the EOT token in each row: the integer argmax of the ids, as the model pools.

    >>> eot_positions(tokenize(["a dog", "a"])).tolist()
    [3, 2]
    """
    return np.argmax(ids, axis=-1)
