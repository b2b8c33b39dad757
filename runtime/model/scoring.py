"""L2 normalization, cosine similarity and the spec's ``(cos + 1) / 2`` score, in numpy."""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, ``(N, D) float32``.

    >>> l2_normalize(np.array([[3.0, 4.0]], dtype=np.float32)).tolist()
    [[0.6000000238418579, 0.800000011920929]]

    A row whose squares overflow float32 (values past ~1.8e19) or underflow to 0 is scaled by its largest value first,
    and still comes out a unit vector; every other row is divided by its norm, bit for bit as always. A row of NaN,
    inf or zeros has no direction: it comes out with NaN in it (the pipeline's ``non_finite_embedding``).

    >>> l2_normalize(np.array([[3e30, 4e30]], dtype=np.float32)).tolist()
    [[0.5999999642372131, 0.800000011920929]]
    """
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        norms = np.linalg.norm(x, axis=-1, keepdims=True)
        out = x / norms
        lost = ~((norms > 0) & np.isfinite(norms))[..., 0] & np.isfinite(x).all(axis=-1)
        if lost.any():  # rare: only these rows pay for the second pass
            scaled = x[lost] / np.abs(x[lost]).max(axis=-1, keepdims=True)
            out[lost] = scaled / np.linalg.norm(scaled, axis=-1, keepdims=True)
    return out


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two ``(N, D)`` arrays -> ``(N,)``."""
    return np.einsum("nd,nd->n", l2_normalize(a), l2_normalize(b))


def to_score(cosine: np.ndarray) -> np.ndarray:
    """Map cosine in ``[-1, 1]`` to the spec's score in ``[0, 1]``.

    >>> to_score(np.array([-1.0, 0.0, 1.0])).tolist()
    [0.0, 0.5, 1.0]
    """
    return (np.asarray(cosine) + 1.0) / 2.0


def score_rows(image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
    """Row-wise ``(cos + 1) / 2`` of (unnormalized or normalized) embeddings -> ``(N,) float32``."""
    return to_score(cosine_rows(image_embeds, text_embeds)).astype(np.float32)


def score_matrix(image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
    """Every image against every text -> ``(N, M) float32``; row ``i`` is :func:`score_rows` of image ``i`` repeated
    against the texts, so each cell is bit for bit that pair's row-wise score (a matmul sums in another order).

    >>> score_matrix(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])).tolist()
    [[1.0, 0.5, 0.0]]
    """
    image_embeds, text_embeds = np.asarray(image_embeds), np.asarray(text_embeds)
    out = np.empty((len(image_embeds), len(text_embeds)), dtype=np.float32)
    for i, image in enumerate(image_embeds):
        out[i] = score_rows(np.repeat(image[None, :], len(text_embeds), axis=0), text_embeds)
    return out
