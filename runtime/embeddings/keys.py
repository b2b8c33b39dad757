"""The keys of an embeddings folder's records: the sha256 of an image's bytes or of a text's UTF-8, as hex, and
their 32-byte form in the index. The decode workers hash images with these while they read them."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable

from ..contract.manifest import sha256_file
from .identity import clip

_HEX = re.compile(r"[0-9a-fA-F]{64}")



def file_sha256(path: str | os.PathLike[str]) -> str:
    """The key of an image file: the hex sha256 of its bytes (about 30 µs for a 50 KB JPEG, under 1% of decoding
    and resizing it).

    >>> file_sha256(os.devnull)
    'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
    """
    return sha256_file(path)


def bytes_sha256(data: bytes) -> str:
    """The key of an image that comes as bytes (a WebDataset member): the hex sha256 of the bytes.

    >>> bytes_sha256(b"")[:16]
    'e3b0c44298fc1c14'
    """
    return hashlib.sha256(data).hexdigest()


def text_sha256(text: str) -> str:
    """The key of a text: the hex sha256 of its UTF-8 bytes; ``ValueError`` for text UTF-8 cannot hold.

    >>> text_sha256("a cat")[:16]
    '51e4674156077982'
    """
    try:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()
    except UnicodeEncodeError as exc:
        raise ValueError(f"text {clip(text)!r} holds {exc.object[exc.start]!r}, which UTF-8 cannot hold: it has no "
                         "sha256 (a run reports such a row as bad_text)") from None


def keys_of(sha256s: Iterable[str]) -> dict[bytes, list[str]]:
    """The 32-byte key of each sha256 given, with the spellings it was given in."""
    keys: dict[bytes, list[str]] = {}
    for given in sha256s:
        keys.setdefault(bytes.fromhex(sha256_key(given)), []).append(given)
    return keys


def sha256_key(value: object) -> str:
    """``value`` as a record key: 64 hex digits, lowercase; ``ValueError`` naming it otherwise."""
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise ValueError(f"sha256 {clip(repr(value))} is not 64 hex digits: pass file_sha256(path), "
                         "bytes_sha256(data) or text_sha256(text)")
    return value.lower()
