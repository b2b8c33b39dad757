"""scoring: cosines and scores of embeddings as the model returns them (not unit length), both sides normalized."""

import numpy as np

from longclip.runtime.model.scoring import cosine_rows, l2_normalize, score_rows


def test_cosine_rows_normalizes_both_arguments():
    images = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]], np.float32)
    texts = np.array([[0.0, 10.0], [-5.0, 0.0], [7.0, 0.0]], np.float32)
    np.testing.assert_allclose(cosine_rows(images, texts), [0.8, -1.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(cosine_rows(texts, images), [0.8, -1.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(score_rows(images, texts), [0.9, 0.0, 0.5], atol=1e-7)


def test_scores_do_not_depend_on_the_embeddings_lengths():
    rng = np.random.default_rng(0)
    images, texts = rng.normal(size=(5, 16)).astype(np.float32), rng.normal(size=(5, 16)).astype(np.float32)
    scaled = score_rows(images * np.float32(40.0), texts * np.float32(0.01))
    np.testing.assert_allclose(scaled, score_rows(l2_normalize(images), l2_normalize(texts)), atol=1e-6)
