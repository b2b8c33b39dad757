"""Image preprocessing identical to the spec'd operator: ``Image.open(p).convert("RGB")`` then
torchvision's ``Resize(n, BICUBIC)`` -> ``CenterCrop(n)`` -> ``ToTensor()`` -> ``Normalize(mean, std)``.

Every step is plain float32 arithmetic in the same order as torchvision, so pixels agree bit for bit.

One row's image goes through :func:`decode_image` (a path, ``bytes`` or an open binary file). Whatever is wrong
with it becomes an :class:`ImageError` whose code (``errors.IMAGE_CODES``) says what and whose message names it,
so one bad row costs that row and nothing else:

- A path is checked before a byte is read (:func:`open_image_file`): ``os.stat`` refuses FIFOs, devices and
  sockets without opening them (opening a FIFO waits for a writer; opening some devices has effects), then the
  file is opened non-blocking and ``fstat``-ed, so one swapped for a FIFO in between cannot block either.
- Memory is bounded from the header, before decoding (:func:`check_pixels`): the image and its resize to the model
  size must each have at most ``max_pixels`` pixels (a 664-byte 1x300,000 PNG resizes to 64x19,200,000 at 64 px).
- An exception of any class from a decoder or a preprocessing step is the row's ``undecodable``;
  ``KeyboardInterrupt`` and ``SystemExit`` still stop the run. Pillow's warnings (corrupt EXIF, ...) are silenced.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .constants import IMAGE_MEAN, IMAGE_STD
from .errors import (BAD_PATH, DIRECTORY, EMPTY_FILE, MISSING_FILE, NOT_A_FILE, NOT_AN_IMAGE, TOO_MANY_PIXELS,
                     UNDECODABLE, UNREADABLE, ImageError)

ImageInput = Union[str, "os.PathLike[str]", Image.Image]
ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO]


MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
"""Images with more pixels, or whose resize to the model size would have more, are refused from their header."""

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
        raise _os_error(exc, name) from None
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
        raise _os_error(exc, name) from None
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


def _os_error(exc: OSError, name: str) -> ImageError:
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
def _row_errors(name: str, file: BinaryIO) -> Iterator[None]:
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
        raise ImageError(NOT_AN_IMAGE, f"not an image file: {name!r}") from None
    except Exception as exc:  # any class: a decoder fails in more ways than it documents
        raise ImageError(UNDECODABLE, f"cannot decode image {name!r}: {_describe(exc)}") from None


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
    _check_source(width, height, max_pixels, name)
    _check_resized(width, height, size, max_pixels, name)


def _check_resized(width: int, height: int, size: int, max_pixels: int, name: str) -> None:
    new_width, new_height = resized_size(width, height, size)
    if new_width * new_height > max_pixels:
        raise ImageError(TOO_MANY_PIXELS, f"{name!r} is {width}x{height}; resized to {size} px on its short side "
                         f"it would be {new_width}x{new_height} = {new_width * new_height} pixels, over the "
                         f"{max_pixels} pixel cap (raise it with --max-pixels if this is intended)")


def _check_source(width: int, height: int, max_pixels: int, name: str) -> None:
    if width < 1 or height < 1:
        raise ImageError(UNDECODABLE, f"cannot decode image {name!r}: it is {width}x{height}, no pixels")
    if width * height > max_pixels:
        raise ImageError(TOO_MANY_PIXELS, f"{name!r} is {width}x{height}, over the {max_pixels} pixel cap "
                         "(raise it with --max-pixels if this is intended)")


def decode_image(
    source: ImageSource, size: int, mean: Sequence[float] = IMAGE_MEAN, std: Sequence[float] = IMAGE_STD,
    max_pixels: int = MAX_PIXELS, out: np.ndarray | None = None, *, name: str | None = None,
) -> np.ndarray:
    """One row's image -> ``(3, size, size) float32`` model input (into ``out`` if given), or :class:`ImageError`.

    ``source`` is a path (opened by :func:`open_image_file`), ``bytes``, or an open binary file (read from its
    start, not closed); all three give the same reasons. ``name`` is what messages call it (default: the path,
    or ``"<bytes>"``). Bad arguments (``size``, ``mean``, ``std``, ``out``) raise ``ValueError``, not a row reason.

    >>> import io
    >>> buffer = io.BytesIO()
    >>> Image.new("RGB", (64, 48)).save(buffer, "PNG")
    >>> decode_image(buffer.getvalue(), 32).shape
    (3, 32, 32)
    >>> try:
    ...     decode_image(b"", 32)
    ... except ImageError as exc:
    ...     print(exc)
    empty_file: image file is empty: '<bytes>'
    """
    _check_arguments(size, mean, std, out)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(source), name or "<bytes>", size, mean, std, max_pixels, out)
    if isinstance(source, (str, os.PathLike)):
        with open_image_file(source) as file:
            return _decode(file, name or os.fspath(source), size, mean, std, max_pixels, out)
    return _decode(source, name or str(getattr(source, "name", "<file>")), size, mean, std, max_pixels, out)


def _check_arguments(size: int, mean: Sequence[float], std: Sequence[float], out: np.ndarray | None) -> None:
    # Checked outside the row guard: a wrong argument is the caller's bug, not every row's `undecodable`.
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (R, G, B), got {len(mean)} and {len(std)}")
    if out is not None and (out.shape != (3, size, size) or out.dtype != np.float32):
        raise ValueError(f"out must be a (3, {size}, {size}) float32 array, got {out.shape} {out.dtype}")


def _decode(file: BinaryIO, name: str, size: int, mean: Sequence[float], std: Sequence[float], max_pixels: int,
            out: np.ndarray | None) -> np.ndarray:
    with _row_errors(name, file):
        with Image.open(file) as image:
            check_pixels(*image.size, size, max_pixels, name)  # the header's size: nothing is decoded yet
            rgb = image.convert("RGB")
        check_pixels(*rgb.size, size, max_pixels, name)  # a few formats (ICO) learn their true size by decoding
        return to_normalized_array(center_crop(resize(rgb, size), size), mean, std, out)


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
    with file, _row_errors(name, file):
        with Image.open(file) as image:
            _check_source(*image.size, max_pixels, name)
            return image.convert("RGB")


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)`` output ``(width, height)``: short side to ``size``, long side truncated.

    >>> resized_size(640, 480, 224)
    (298, 224)
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def resize(image: Image.Image, size: int) -> Image.Image:
    """Bicubic short-side resize; a no-op when the size already matches (as torchvision)."""
    target = resized_size(image.width, image.height, size)
    if target == image.size:
        return image
    return image.resize(target, Image.Resampling.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision ``CenterCrop(size)`` on an image whose sides are both >= ``size``.

    Offsets are ``int(round((side - size) / 2))``: Python's round, half to even.
    """
    top = int(round((image.height - size) / 2.0))
    left = int(round((image.width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def to_normalized_array(
    image: Image.Image, mean: Sequence[float] = IMAGE_MEAN, std: Sequence[float] = IMAGE_STD,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``(3, H, W) float32``: ``/255`` then ``(x - mean) / std``, in float32 like torchvision.

    Channel by channel, straight into ``out`` (a ``(3, H, W) float32`` view, e.g. a row of the batch): the same
    float32 operations in the same order, so the same bits, without broadcasting over a last axis of 3 (9x slower).
    """
    pixels = np.asarray(image, dtype=np.uint8)
    if out is None:
        out = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
    for c in range(3):
        channel = out[c]
        np.divide(pixels[:, :, c], np.float32(255), out=channel, dtype=np.float32)
        np.subtract(channel, np.float32(mean[c]), out=channel)
        np.divide(channel, np.float32(std[c]), out=channel)
    return out


def preprocess_image(
    image: ImageInput, size: int, mean: Sequence[float] = IMAGE_MEAN, std: Sequence[float] = IMAGE_STD,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """One image (path or PIL image) -> ``(3, size, size) float32`` model input (written into ``out`` if given).

    A path is read like a row of a run (:func:`decode_image`); a PIL image's resize is bounded like a row's.
    """
    if not isinstance(image, Image.Image):
        return decode_image(image, size, mean, std, out=out)
    if min(image.size) >= 1:  # already decoded: only its resize is left to bound
        _check_resized(*image.size, size, MAX_PIXELS, "PIL image")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return to_normalized_array(center_crop(resize(image, size), size), mean, std, out)


def preprocess_images(
    images: Sequence[ImageInput], size: int, mean: Sequence[float] = IMAGE_MEAN, std: Sequence[float] = IMAGE_STD
) -> np.ndarray:
    """Paths or PIL images -> ``(N, 3, size, size) float32`` batch.

    >>> preprocess_images([Image.new("RGB", (50, 30))], 16).shape
    (1, 3, 16, 16)
    """
    batch = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, image in enumerate(images):
        preprocess_image(image, size, mean, std, out=batch[i])
    return batch
