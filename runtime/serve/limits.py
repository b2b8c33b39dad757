"""What a request may hold, and its JSON turned into work: data URIs, paths under ``--image-root``, the 4xx errors.

Validation only: nothing here decodes an image or opens a file. A path is handed on only when it resolves, with
every symlink followed, to a regular file inside the image root, so a path outside it is never opened.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..contract import errors
from ..contract.constants import DECODE_TIMEOUT, MAX_PIXELS
from ..contract.errors import ImageError, LongCLIPError

MAX_ITEMS = 256
MAX_BODY_MB = 64
_DATA_IMAGE = re.compile(r"data:image/[A-Za-z0-9.+-]+(;[A-Za-z0-9=._+-]+)*;base64,", re.IGNORECASE)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class RequestError(LongCLIPError):
    """A request the service refuses as a whole: its HTTP status, OpenAI's error ``type`` and ``code``."""

    def __init__(self, status: int, message: str, code: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.code, self.kind = status, code, kind


@dataclass(frozen=True)
class Limits:
    """A request's bounds: ``--max-items``, ``--max-body-mb``, ``--max-pixels``, ``--decode-timeout``, and the
    folder paths are read from (``--image-root``; None: paths are refused)."""

    max_items: int = MAX_ITEMS
    max_body_bytes: int = MAX_BODY_MB << 20
    max_pixels: int = MAX_PIXELS
    decode_timeout: float = DECODE_TIMEOUT
    image_root: Path | None = None


def is_image_uri(value: object) -> bool:
    """Whether an input is an image: a ``data:image/...;base64,`` URI (anything else is a text).

    >>> is_image_uri("data:image/png;base64,iVBO"), is_image_uri("a photo of data:image/png;base64,")
    (True, False)
    """
    return isinstance(value, str) and _DATA_IMAGE.match(value) is not None


def image_bytes(uri: str) -> bytes:
    """The bytes of a ``data:image/...;base64,`` URI, or :class:`ImageError` (``undecodable``) for bad base64.

    >>> image_bytes("data:image/png;base64,aGk=")
    b'hi'
    """
    match = _DATA_IMAGE.match(uri)
    assert match is not None
    try:
        data = base64.b64decode(uri[match.end():], validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(errors.UNDECODABLE, "the data URI's payload is not valid base64") from None
    if not data:
        raise ImageError(errors.EMPTY_FILE, "the data URI holds no bytes")
    return data


def image_path(value: str, root: Path | None) -> str:
    """The real path of the file ``value`` names under ``root``, or :class:`ImageError` (``bad_path``,
    ``missing_file``, ``directory``, ``not_a_file``) without opening anything.

    ``value`` must be relative, without ``..``; the file it resolves to (symlinks followed) must be a regular
    file inside ``root``. URLs are never fetched."""
    if root is None:
        raise ImageError(errors.BAD_PATH, "image paths are not served: send a data:image/...;base64, URI, or start "
                         "longclip-serve with --image-root")
    if _URL.match(value):
        raise ImageError(errors.BAD_PATH, f"URLs are not fetched: {value[:200]!r}; send the image as a data URI")
    parts = Path(value).parts
    if "\0" in value or os.path.isabs(value) or ".." in parts:
        raise ImageError(errors.BAD_PATH, f"image path {value[:200]!r} must be relative to --image-root, "
                         "without '..'")
    real = os.path.realpath(root / value)
    if os.path.commonpath([real, str(root)]) != str(root):
        raise ImageError(errors.BAD_PATH, f"image path {value[:200]!r} leads outside --image-root")
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        raise ImageError(errors.MISSING_FILE, f"image not found: {value[:200]!r}") from None
    except OSError as exc:
        raise ImageError(errors.BAD_PATH, f"image path {value[:200]!r}: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise ImageError(errors.DIRECTORY, f"image path {value[:200]!r} is a folder")
    if not stat.S_ISREG(mode):
        raise ImageError(errors.NOT_A_FILE, f"image path {value[:200]!r} is not a regular file")
    return real


def pair_image(value: object, root: Path | None) -> tuple[object, str]:
    """A pair's image as the pipeline takes it (bytes, a real path, or the cell itself for the pipeline's own
    reasons: null, not a string) and its read reason (``""``: none)."""
    if not isinstance(value, str):
        return value, ""
    try:
        return (image_bytes(value) if is_image_uri(value) else image_path(value, root)), ""
    except ImageError as exc:
        return None, str(exc)


def check_count(items: list[Any], what: str, limits: Limits) -> None:
    if not items:
        raise RequestError(400, f"'{what}' is empty: send at least one item", "empty_input")
    if len(items) > limits.max_items:
        raise RequestError(413, f"'{what}' has {len(items)} items, more than --max-items {limits.max_items}: split "
                           "the request", "too_many_items")


def embedding_inputs(body: dict[str, Any], limits: Limits) -> tuple[list[bytes | str], str]:
    """``/v1/embeddings``' inputs (image bytes or texts) and its ``encoding_format``; 400 naming the first bad
    index: an empty input, token ids (send strings), a value that is not a string, a broken data URI."""
    value = body.get("input")
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise RequestError(400, f"'input' must be a string or a list of strings, got {type(value).__name__}",
                           "invalid_input")
    check_count(items, "input", limits)
    ids = 0 if all(isinstance(i, int) for i in items) else next(
        (n for n, i in enumerate(items) if isinstance(i, list)), None)
    if ids is not None:
        raise RequestError(400, f"input[{ids}] is token ids: send strings (LangChain's OpenAIEmbeddings sends ids "
                           "unless check_embedding_ctx_length=False)", "token_ids_not_supported")
    out: list[bytes | str] = []
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise RequestError(400, f"input[{index}] must be a string, got {type(item).__name__}", "invalid_input")
        if not item.strip():
            raise RequestError(400, f"input[{index}] is empty", "empty_input")
        try:
            out.append(image_bytes(item) if is_image_uri(item) else item)
        except ImageError as exc:
            raise RequestError(400, f"input[{index}]: {exc}", exc.code) from None
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise RequestError(400, f"'encoding_format' must be 'float' or 'base64', got {encoding!r}", "invalid_input")
    return out, encoding


def score_pairs(body: dict[str, Any], limits: Limits) -> tuple[list[object], list[object], list[str]]:
    """``/v1/score``'s images (as :func:`pair_image` gives them), texts, and each pair's read reason."""
    pairs = body.get("pairs")
    if not isinstance(pairs, list):
        raise RequestError(400, f"'pairs' must be a list of {{\"image\", \"text\"}} objects, got "
                           f"{type(pairs).__name__}", "invalid_input")
    check_count(pairs, "pairs", limits)
    images, texts, reasons = [], [], []
    for index, pair in enumerate(pairs):
        if not isinstance(pair, dict):
            raise RequestError(400, f"pairs[{index}] must be an object with 'image' and 'text', got "
                               f"{type(pair).__name__}", "invalid_input")
        image, reason = pair_image(pair.get("image"), limits.image_root)
        images.append(image)
        texts.append(pair.get("text"))
        reasons.append(reason)
    return images, texts, reasons
