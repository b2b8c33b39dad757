"""The official CLIP byte-level BPE with LongCLIP's 248-token padding and truncation.

Identical to OpenAI CLIP's ``simple_tokenizer`` + LongCLIP's ``tokenize(texts, 248, truncate=True)``:
ftfy, html-unescape twice, whitespace collapse, lowercase, ``[SOT] + bpe + [EOT]``, zero padding; a text that
is too long is cut to 248 tokens and its last token forced to EOT.

Its cost grows about linearly with the text, so a hostile row (a megabyte of one word, or of many) cannot stall a
crawl: each pre-token is BPE'd by :func:`bpe` in about ``O(n log n)`` rather than the official ``O(n^2)``;
:meth:`Tokenizer.batch` stops at the first word boundary once the cut is certain; the word cache is bounded.
Only ftfy still reads the whole text, exactly as the official does.
"""

from __future__ import annotations

import functools
import gzip
import html
from collections.abc import Mapping, Sequence
from heapq import heapify, heappop, heappush
from importlib import resources

import ftfy
import numpy as np
import regex

from . import errors
from .constants import CONTEXT_LENGTH, EOT_TOKEN, SOT_TOKEN
from .errors import TextError

_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")
_SPECIAL = ("<|startoftext|>", "<|endoftext|>")
_N_MERGES = 49152 - 256 - 2
CACHE_SIZE = 65_536
"""Distinct words a :class:`Tokenizer` keeps the ids of; emptied when full. Full, it holds about 9 MB of 8-letter
words, 26 MB of :data:`MAX_CACHED_WORD`-letter ones."""
MAX_CACHED_WORD = 64
"""Longer pre-tokens (in characters) are never cached: they rarely repeat and would pin memory."""


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


# For str.translate on the latin-1 view of the utf-8 bytes: a whole word byte-encoded in one C call.
_BYTE_TABLE = _byte_to_unicode()


def byte_encode(token: str) -> str:
    """A pre-token's utf-8 bytes as GPT-2's printable characters, as the official ``byte_encoder`` join.

    >>> byte_encode("café!")
    'cafÃ©!'
    """
    return token.encode("utf-8").decode("latin-1").translate(_BYTE_TABLE)


def clean(text: str) -> str:
    """The official text cleaning: ftfy, html-unescape twice, collapse whitespace, lowercase.

    >>> clean("  A &amp;amp; B\\n\\tC ")
    'a & b c'
    """
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


def bpe(word: str, ranks: Mapping[tuple[str, str], int], merges: Sequence[tuple[str, str]]) -> list[str]:
    """The parts of one byte-encoded pre-token, exactly as the official ``SimpleTokenizer.bpe``.

    The official loop takes the lowest-ranked adjacent pair, merges all its occurrences in one left-to-right scan
    (skipping one whose first part the previous merge took), and only then looks at the pairs this made: a rescan
    of the word per merge, quadratic in its length. Here the parts are a linked list over the characters'
    positions; each pair that has a rank is filed (by its left position) in that rank's bucket, and the ranks with
    a bucket sit on a heap. The lowest rank's bucket is taken whole and its positions merged in text order where
    they still hold the pair (an earlier merge may have consumed or grown them): the official scan. The pairs those
    merges make go to their own buckets, looked at only after the sweep even when they rank lower; a made pair never
    has the rank being swept (it is longer than that pair). About ``n log n`` for ``n`` characters.
    ``merges[r]`` is the pair of rank ``r`` for every rank in ``ranks``.

    >>> ranks = {("a", "b"): 0, ("ab", "c</w>"): 1}
    >>> bpe("abc", ranks, list(ranks))
    ['abc</w>']
    >>> bpe("aaaa", {("a", "a"): 0}, [("a", "a")])  # left to right: the first "aa" takes the second "a"
    ['aa', 'a', 'a</w>']
    """
    parts = list(word)
    parts[-1] += "</w>"
    end = len(parts)
    get = ranks.get
    buckets: dict[int, list[int]] = {}
    for i, pair in enumerate(zip(parts, parts[1:])):
        rank = get(pair)
        if rank is not None:
            bucket = buckets.get(rank)
            if bucket is None:
                buckets[rank] = [i]
            else:
                bucket.append(i)
    if not buckets:
        return parts
    after = list(range(1, end + 1))  # after[i]: the position of the part that follows the one at i
    before = list(range(-1, end - 1))
    heap = list(buckets)
    heapify(heap)
    while heap:
        rank = heappop(heap)
        first, second = merges[rank]
        merged = first + second
        positions = buckets.pop(rank)
        positions.sort()  # text order, as the official scan: it decides overlapping occurrences ("a a a")
        for i in positions:
            if parts[i] != first:  # consumed by an earlier merge ("" marks a dead position) or grown since
                continue
            j = after[i]
            if j == end or parts[j] != second:
                continue
            parts[i] = merged
            parts[j] = ""
            k = after[j]
            after[i] = k
            if k != end:
                before[k] = i
                new = get((merged, parts[k]))
                if new is not None:
                    bucket = buckets.get(new)
                    if bucket is None:
                        buckets[new] = [i]
                        heappush(heap, new)
                    else:
                        bucket.append(i)
            h = before[i]
            if h != -1:
                new = get((parts[h], merged))
                if new is not None:
                    bucket = buckets.get(new)
                    if bucket is None:
                        buckets[new] = [h]
                        heappush(heap, new)
                    else:
                        bucket.append(h)
    return [part for part in parts if part]


class Tokenizer:
    """CLIP BPE tokenizer; ``Tokenizer()(texts)`` gives LongCLIP's ``(N, 248) int64`` ids.

    ``cache_size`` bounds the word cache (:data:`CACHE_SIZE` by default); it is emptied when full, which over a
    crawl of millions of texts keeps memory flat and costs one re-BPE of each frequent word per refill.

    >>> Tokenizer()(["a photo of a cat"])[0, :7].tolist()
    [49406, 320, 1125, 539, 320, 2368, 49407]
    """

    def __init__(self, *, cache_size: int = CACHE_SIZE) -> None:
        merges_text = resources.files(__package__).joinpath("bpe_simple_vocab_16e6.txt.gz").read_bytes()
        lines = gzip.decompress(merges_text).decode("utf-8").split("\n")[1 : _N_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        byte_chars = list(_byte_to_unicode().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + list(_SPECIAL)
        self.encoder: dict[str, int] = {token: i for i, token in enumerate(vocab)}
        self.bpe_ranks: dict[tuple[str, str], int] = {pair: i for i, pair in enumerate(merges)}  # type: ignore[misc]
        # merges[r] is the pair of rank r: with a repeated pair the dict keeps its last rank, still merges[rank].
        self._merges: list[tuple[str, str]] = merges  # type: ignore[assignment]
        self._special = {s: [self.encoder[s]] for s in _SPECIAL}  # the official cache's two fixed entries
        self._cache: dict[str, list[int]] = {}
        self._cache_size = cache_size
        assert self.encoder["<|startoftext|>"] == SOT_TOKEN and self.encoder["<|endoftext|>"] == EOT_TOKEN

    def _word_ids(self, token: str) -> list[int]:
        """Ids of one pre-token (as the regex found it): a special token's own id, else its BPE."""
        ids = self._cache.get(token)
        if ids is not None:
            return ids
        special = self._special.get(token)
        if special is not None:
            return special
        ids = [self.encoder[part] for part in bpe(byte_encode(token), self.bpe_ranks, self._merges)]
        if len(token) <= MAX_CACHED_WORD:
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[token] = ids
        return ids

    def encode(self, text: str, *, limit: int | None = None) -> list[int]:
        """BPE ids of ``text`` without SOT/EOT; with a ``limit``, they stop after the first word that brings them
        to ``limit`` or more (words are BPE'd independently, so these are a prefix of all the ids).

        >>> Tokenizer().encode("Hello, world!")
        [3306, 267, 1002, 256]
        >>> Tokenizer().encode("Hello, world!", limit=2)
        [3306, 267]
        """
        if not isinstance(text, str):
            raise TextError(errors.NOT_TEXT, f"text must be a str, got {type(text).__name__} ({text!r:.60})")
        ids: list[int] = []
        for match in _PATTERN.finditer(clean(text)):
            ids += self._word_ids(match[0])
            if limit is not None and len(ids) >= limit:
                break
        return ids

    def batch(
        self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH, truncate: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(ids (N, context_length) int64, lengths (N,) int64)``; ``lengths > context_length`` marks exactly
        the texts that were truncated.

        ``lengths`` counts SOT/EOT. For a text that fits it is exact; for a truncated one it is a lower bound
        (still above ``context_length``): BPE stops at the first word boundary past ``context_length - 1`` ids,
        where the cut is certain, so the rest of a long text is never tokenized.

        >>> ids, lengths = Tokenizer().batch(["a dog", "dog " * 300])
        >>> lengths[0].item(), lengths[1].item() > 248, ids[1, -1].item()
        (4, True, 49407)
        """
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), context_length), dtype=np.int64)
        lengths = np.zeros(len(texts), dtype=np.int64)
        for row, text in enumerate(texts):
            # context_length - 1 BPE ids make SOT + ids + EOT one longer than the context: the cut is certain.
            ids = [SOT_TOKEN, *self.encode(text, limit=context_length - 1), EOT_TOKEN]
            lengths[row] = len(ids)
            if len(ids) > context_length:
                if not truncate:
                    raise TextError(errors.TOO_LONG, f"text of {len(ids)} tokens or more is too long for context "
                                    f"length {context_length} ({text!r:.60}): pass truncate=True")
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
