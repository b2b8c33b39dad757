"""L2 normalization, cosine similarity and the spec's ``(cos + 1) / 2`` score, in numpy."""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, ``(N, D) float32``.

    >>> l2_normalize(np.array([[3.0, 4.0]], dtype=np.float32)).tolist()
    [[0.6000000238418579, 0.800000011920929]]
    """
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


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
