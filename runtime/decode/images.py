"""A row's image file, opened safely and bounded before it is decoded; whatever is wrong with it becomes an
:class:`ImageError` whose code (``errors.IMAGE_CODES``) says what and whose message names it, so one bad row costs
that row and nothing else:

- A path is checked before a byte is read (:func:`open_image_file`): ``os.stat`` refuses FIFOs, devices and
  sockets without opening them (opening a FIFO waits for a writer; opening some devices has effects), then the
  file is opened non-blocking and ``fstat``-ed, so one swapped for a FIFO in between cannot block either.
- Memory is bounded from the header, before decoding (:func:`check_pixels`): the image and its resize to the model
  size must each have at most ``max_pixels`` pixels (a 664-byte 1x300,000 PNG resizes to 64x19,200,000 at 64 px).
- Only the formats of ``constants.ALLOWED_IMAGE_FORMATS`` are opened (:func:`open_allowed`): an EPS would have
  Pillow run Ghostscript on the row's bytes. Any other format is the row's ``not_an_image``, naming the format.
- An exception of any class from a decoder or a preprocessing step is the row's ``undecodable``
  (:func:`image_errors`); ``KeyboardInterrupt`` and ``SystemExit`` still stop the run. Pillow's warnings (corrupt
  EXIF, ...) are silenced.

Limits, both for decode worker processes (killed after a per-image timeout, their stderr kept) to lift:

- A decoder that hangs (a read stalled on a network filesystem, a codec stuck in a loop) cannot be cut from inside
  the process, since Python cannot interrupt a thread blocked in C.
- C libraries that print their own complaints (libtiff on a corrupt TIFF) write to the process's stderr, which a
  thread cannot redirect for itself.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from ..contract.constants import ALLOWED_IMAGE_FORMATS, MAX_PIXELS
from ..contract.errors import (
    BAD_PATH,
    DIRECTORY,
    EMPTY_FILE,
    MISSING_FILE,
    NOT_A_FILE,
    NOT_AN_IMAGE,
    TOO_MANY_PIXELS,
    UNDECODABLE,
    UNREADABLE,
    ImageError,
)
from .transforms import resized_size

# O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer. O_NOCTTY: a terminal is never made
# ours. O_BINARY: Windows only.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_OPEN_FLAGS = os.O_RDONLY | _NONBLOCK | sum(getattr(os, flag, 0) for flag in ("O_CLOEXEC", "O_NOCTTY", "O_BINARY"))
_NOT_THE_ROWS = (errno.EMFILE, errno.ENFILE)  # out of file descriptors: the process's problem, raised as it is
_NOT_FILES = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
              (stat.S_ISSOCK, "a socket"))
_MAX_DETAIL = 200  # characters of a decoder's own message kept in a reason
_MAX_NAME = 1024  # characters of a path kept in a reason (a row's value can be any string)


def open_image_file(path: str | os.PathLike[str]) -> BinaryIO:
    """The regular, non-empty file at ``path``, open for reading; :class:`ImageError` for anything else.

    Only regular files are opened, and opening never blocks; the caller closes the file.

    >>> try:
    ...     open_image_file("/dev/null")
    ... except ImageError as exc:
    ...     print(exc)
    not_a_file: image path is a character device, not a file: '/dev/null'
    """
    name = os.fspath(path)
    try:
        _check_kind(os.stat(path).st_mode, name)
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno in _NOT_THE_ROWS:
            raise
        raise os_error_reason(exc, name) from None
    except ValueError as exc:  # an embedded NUL, a lone surrogate: no file can have that name
        raise ImageError(BAD_PATH, f"not a usable path: {_clip(name)!r} ({exc})") from None
    try:
        st = os.fstat(fd)
        _check_kind(st.st_mode, name)  # what was opened is what was checked, even if the path changed in between
        if st.st_size == 0:
            raise ImageError(EMPTY_FILE, f"image file is empty: {name!r}")
        if _NONBLOCK:
            os.set_blocking(fd, True)  # a regular file: read as usual (a FUSE mount might honour O_NONBLOCK)
    except OSError as exc:
        os.close(fd)
        raise os_error_reason(exc, name) from None
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _check_kind(mode: int, name: str) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise ImageError(DIRECTORY, f"image path is a directory: {name!r}")
    kind = next((what for test, what in _NOT_FILES if test(mode)), "not a regular file")
    raise ImageError(NOT_A_FILE, f"image path is {kind}, not a file: {name!r}")


def os_error_reason(exc: OSError, name: str) -> ImageError:
    """The reason of an ``os.stat`` / ``os.open`` / ``os.fstat`` failure."""
    code = exc.errno
    if code == errno.ENOENT:
        return ImageError(MISSING_FILE, _why_missing(name))
    if code == errno.ENOTDIR:
        return ImageError(MISSING_FILE, _why_not_a_folder(name))
    if code in (errno.EACCES, errno.EPERM):
        return ImageError(UNREADABLE, f"permission denied: {name!r}")
    if code == errno.ELOOP:
        return ImageError(BAD_PATH, f"symlink loop (too many levels of symbolic links): {name!r}")
    if code == errno.ENAMETOOLONG:
        return ImageError(BAD_PATH, f"path or a name in it is too long ({len(name)} characters): {_clip(name)!r}")
    if code == errno.EISDIR:
        return ImageError(DIRECTORY, f"image path is a directory: {name!r}")
    if code == errno.ENXIO:  # a socket or a device without a driver, put there after the stat
        return ImageError(NOT_A_FILE, f"image path is not a file: {name!r}")
    return ImageError(UNDECODABLE, f"cannot read image {name!r}: {_describe(exc)}")


def _why_missing(name: str) -> str:
    """Which part is missing: the folder, the file, or the target of a symlink."""
    if os.path.islink(name):
        return f"image not found: {name!r} is a symlink to a missing file"
    parent = os.path.dirname(name)
    if parent and not os.path.isdir(parent):
        return f"image not found: folder {parent!r} does not exist ({name!r})"
    return f"image not found: {name!r}"


def _why_not_a_folder(name: str) -> str:
    parent = os.path.dirname(name)
    while parent and parent != os.path.dirname(parent):
        if os.path.isfile(parent):
            return f"image not found: {name!r} goes through {parent!r}, a file, not a folder"
        parent = os.path.dirname(parent)
    return f"image not found: a folder on the way to {name!r} is not a folder"


def _clip(text: str, limit: int = _MAX_NAME) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _describe(exc: BaseException) -> str:
    """``ClassName: message``, the message on one line and at most ``_MAX_DETAIL`` characters.

    >>> _describe(NotImplementedError("Unknown pixel format\\nflags 0"))
    'NotImplementedError: Unknown pixel format flags 0'
    """
    message = _one_line(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _one_line(exc: BaseException) -> str:
    return _clip(" ".join(str(exc).split()), _MAX_DETAIL)


class _SharedWarningsFilter:
    """Pillow's warnings silenced while any image is being read, by any thread.

    ``warnings.catch_warnings`` swaps process-wide state and is not thread-safe: decode threads that each enter and
    leave one restore each other's filters out of order (Pillow's warnings back on mid-decode, or the ignore left
    in place for good). So they share one window: the first in opens it, the last out closes it. Only warnings
    raised in Pillow's modules are ignored in it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._window: warnings.catch_warnings | None = None

    def __enter__(self) -> None:
        with self._lock:
            if self._users == 0:
                self._window = warnings.catch_warnings()
                self._window.__enter__()
                warnings.filterwarnings("ignore", module=r"PIL\.")
            self._users += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._window is not None:
                self._window.__exit__(None, None, None)
                self._window = None


_PILLOW_QUIET = _SharedWarningsFilter()


@contextmanager
def image_errors(name: str, file: BinaryIO) -> Iterator[None]:
    """Whatever goes wrong reading the image in ``file`` becomes its :class:`ImageError`; a ``BaseException``
    that is not an ``Exception`` (Ctrl-C, ``SystemExit``) still propagates."""
    try:
        with _PILLOW_QUIET:
            yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(TOO_MANY_PIXELS, f"{name!r}: {_one_line(exc)} (Pillow's limit)") from None
    except UnidentifiedImageError:
        if _is_empty(file):
            raise ImageError(EMPTY_FILE, f"image file is empty: {name!r}") from None
        seen = _other_format(file)
        if seen:
            raise ImageError(NOT_AN_IMAGE, f"{name!r} is {seen}, not an allowed image format (allowed: "
                             f"{', '.join(allowed_formats())})") from None
        raise ImageError(NOT_AN_IMAGE, f"not an image file: {name!r}") from None
    except Exception as exc:  # any class: a decoder fails in more ways than it documents
        raise ImageError(UNDECODABLE, f"cannot decode image {name!r}: {_describe(exc)}") from None


def allowed_formats() -> tuple[str, ...]:
    """The IDs of ``ALLOWED_IMAGE_FORMATS`` this Pillow build has: ``Image.open`` raises ``KeyError`` for an ID it
    does not know (AVIF before Pillow 11.2), so one missing from the build is left out.

    >>> allowed_formats()[:3]
    ('JPEG', 'PNG', 'GIF')
    """
    Image.init()  # registers every plugin (once per process); their open functions run only on Image.open
    return tuple(f for f in ALLOWED_IMAGE_FORMATS if f in Image.OPEN)


def open_allowed(file: BinaryIO) -> Image.Image:
    """``Image.open`` limited to the allowed formats: no other plugin's open (or decoder) ever sees ``file``."""
    return Image.open(file, formats=allowed_formats())


def _other_format(file: BinaryIO) -> str | None:
    """The format(s) Pillow would have taken ``file`` for, by the byte probes (``_accept``) its plugins register: pure
    checks of the first 16 bytes, as ``Image.open`` makes them; no plugin's open runs. None if no probe claims it.

    >>> _other_format(io.BytesIO(b"%!PS-Adobe-3.0 EPSF-3.0"))
    'EPS'
    """
    try:
        file.seek(0)
        prefix = file.read(16)
    except Exception:  # not seekable: it was read whole by Pillow already, nothing to name it by
        return None
    Image.init()
    claims = [format_id for format_id, (_, accept) in Image.OPEN.items() if _claims(accept, prefix)]
    if any(format_id in ALLOWED_IMAGE_FORMATS for format_id in claims):
        return None  # an allowed format's magic, broken after it: not an image, but not another format either
    return " or ".join(claims) or None  # probes are loose ("/*" starts XBM and XPM): name each that claims it


def _claims(accept: object, prefix: bytes) -> bool:
    if not callable(accept):
        return False
    try:
        return bool(accept(prefix))  # True, or (AVIF without its library) a message: either way, that format
    except Exception:  # a probe that fails on a short prefix claims nothing
        return False


def _is_empty(file: BinaryIO) -> bool:
    try:
        return file.seek(0, os.SEEK_END) == 0
    except Exception:  # not seekable: Pillow read it whole, and said it is not an image
        return False


def check_pixels(width: int, height: int, size: int, max_pixels: int, name: str) -> None:
    """Refuse an image whose pixels, or those of its resize to ``size``, would be more than ``max_pixels``.

    Called with the header's size, before anything is decoded: a thin image is tiny, its resize is not.

    >>> check_pixels(640, 480, 224, MAX_PIXELS, "ok.jpg")
    >>> try:
    ...     check_pixels(1, 300_000, 64, MAX_PIXELS, "thin.png")
    ... except ImageError as exc:
    ...     print(exc.code)
    too_many_pixels
    """
    check_source(width, height, max_pixels, name)
    check_resized(width, height, size, max_pixels, name)


def check_resized(width: int, height: int, size: int, max_pixels: int, name: str) -> None:
    new_width, new_height = resized_size(width, height, size)
    if new_width * new_height > max_pixels:
        raise ImageError(TOO_MANY_PIXELS, f"{name!r} is {width}x{height}; resized to {size} px on its short side "
                         f"it would be {new_width}x{new_height} = {new_width * new_height} pixels, over the "
                         f"{max_pixels} pixel cap (raise it with --max-pixels if this is intended)")


def check_source(width: int, height: int, max_pixels: int, name: str) -> None:
    if width < 1 or height < 1:
        raise ImageError(UNDECODABLE, f"cannot decode image {name!r}: it is {width}x{height}, no pixels")
    if width * height > max_pixels:
        raise ImageError(TOO_MANY_PIXELS, f"{name!r} is {width}x{height}, over the {max_pixels} pixel cap "
                         "(raise it with --max-pixels if this is intended)")


def load_image(source: str | os.PathLike[str] | bytes, max_pixels: int = MAX_PIXELS, *,
               name: str | None = None) -> Image.Image:
    """Open an image (a file, or its bytes), first frame, converted to RGB (alpha dropped, no EXIF transpose); for
    the report's thumbnails. Rows of a run go through :func:`decode_image`, which also bounds their resize.

    Raises :class:`ImageError` whose code says what is wrong and whose message names the path (or ``name``).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        file: BinaryIO = io.BytesIO(source)
        name = name or "<bytes>"
    else:
        file, name = open_image_file(source), name or os.fspath(source)
    with file, image_errors(name, file):
        with open_allowed(file) as image:
            check_source(*image.size, max_pixels, name)
            return image.convert("RGB")
