"""torchvision's ``Resize(n, BICUBIC)`` -> ``CenterCrop(n)`` -> ``ToTensor()`` -> ``Normalize(mean, std)`` on a PIL
image: every step plain float32 arithmetic in the same order as torchvision, so pixels agree bit for bit (under
the same Pillow: Pillow 13 changed a resize pass order, and goldens belong to a Pillow version)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from ..contract.constants import IMAGE_MEAN, IMAGE_STD


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
