"""Image preprocessing identical to the spec'd operator: ``Image.open(p, formats=ALLOWED).convert("RGB")`` then
torchvision's ``Resize(n, BICUBIC)`` -> ``CenterCrop(n)`` -> ``ToTensor()`` -> ``Normalize(mean, std)``.

One row's image goes through :func:`decode_image` (a path, ``bytes`` or an open binary file): opened and bounded
by :mod:`.images` (every problem the row's :class:`ImageError`), transformed by :mod:`.transforms` (bit for bit
torchvision's). :func:`preprocess_images` takes everything ``LongCLIP.encode_images`` accepts (:data:`ImageInput`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import BinaryIO, Union

import numpy as np
from PIL import Image

from ..contract.constants import IMAGE_MEAN, IMAGE_STD, MAX_PIXELS
from ..contract.errors import NOT_AN_IMAGE, ImageError
from .images import check_pixels, check_resized, image_errors, open_allowed, open_image_file
from .transforms import center_crop, resize, to_normalized_array

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO, Image.Image, np.ndarray]
"""What ``LongCLIP.encode_images`` takes as one image: a path, encoded bytes or a binary file (read from its start),
a PIL image, or a decoded ``(H, W, 3) uint8`` RGB / ``(H, W) uint8`` grayscale array."""
ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO]



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
    with image_errors(name, file):
        with open_allowed(file) as image:
            check_pixels(*image.size, size, max_pixels, name)  # the header's size: nothing is decoded yet
            rgb = image.convert("RGB")
        check_pixels(*rgb.size, size, max_pixels, name)  # a few formats (ICO) learn their true size by decoding
        return to_normalized_array(center_crop(resize(rgb, size), size), mean, std, out)


def one_or_many(images: ImageInput | Sequence[ImageInput]) -> Sequence[ImageInput]:
    """``images`` as a sequence: one image given alone (a path, bytes, a file, a PIL image, an array) is a list of
    one, never iterated (a ``str`` would be its characters, an array its rows).

    >>> one_or_many("cat.jpg"), len(one_or_many(["a.jpg", "b.jpg"]))
    (['cat.jpg'], 2)
    """
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray)):
        return [images]
    if hasattr(images, "read"):  # a binary file object
        return [images]  # type: ignore[list-item]
    return images  # type: ignore[return-value]


def from_array(array: np.ndarray) -> Image.Image:
    """A decoded ``(H, W, 3) uint8`` RGB or ``(H, W) uint8`` grayscale array as a PIL image; anything else is
    :class:`ImageError` ``not_an_image`` saying what was given and how to convert it.

    >>> from_array(np.zeros((4, 6, 3), dtype=np.uint8)).size
    (6, 4)
    """
    shape = tuple(array.shape)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and shape[2] == 3)):
        raise ImageError(NOT_AN_IMAGE, f"a numpy image must be (H, W, 3) uint8 RGB or (H, W) uint8 grayscale, got "
                         f"{array.dtype} {shape}: convert it (e.g. CHW -> arr.transpose(1, 2, 0); RGBA -> "
                         "arr[..., :3]; floats in [0, 1] -> (arr * 255).round().astype(np.uint8))")
    if min(shape[:2]) < 1:
        raise ImageError(NOT_AN_IMAGE, f"a numpy image must have pixels, got shape {shape}")
    return Image.fromarray(np.ascontiguousarray(array))  # uint8 (H, W, 3): RGB; (H, W): L


def preprocess_image(
    image: ImageInput, size: int, mean: Sequence[float] = IMAGE_MEAN, std: Sequence[float] = IMAGE_STD,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """One image (any :data:`ImageInput`) -> ``(3, size, size) float32`` model input (written into ``out`` if
    given).

    A path, bytes or file is read like a row of a run (:func:`decode_image`); a PIL image's (or array's) resize is
    bounded like a row's.
    """
    if isinstance(image, np.ndarray):
        image = from_array(image)
    if not isinstance(image, Image.Image):
        return decode_image(image, size, mean, std, out=out)
    if min(image.size) >= 1:  # already decoded: only its resize is left to bound
        check_resized(*image.size, size, MAX_PIXELS, "PIL image")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return to_normalized_array(center_crop(resize(image, size), size), mean, std, out)


def preprocess_images(
    images: Sequence[ImageInput], size: int, mean: Sequence[float] = IMAGE_MEAN, std: Sequence[float] = IMAGE_STD
) -> np.ndarray:
    """Images (each any :data:`ImageInput`) -> ``(N, 3, size, size) float32`` batch.

    >>> preprocess_images([Image.new("RGB", (50, 30))], 16).shape
    (1, 3, 16, 16)
    """
    batch = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, image in enumerate(images):
        preprocess_image(image, size, mean, std, out=batch[i])
    return batch
