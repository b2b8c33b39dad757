"""``l2_normalize``: bit for bit the plain division wherever float32 holds the norm, a unit vector where it does
not (squares past float32's range or below it), NaN where a row has no direction; cosines and scores of embeddings
as the model returns them (not unit length), both sides normalized."""

import numpy as np
import pytest

from longclip.runtime.model.scoring import cosine_rows, l2_normalize, score_rows


def test_ordinary_rows_are_divided_by_their_norm_bit_for_bit():
    rows = np.random.default_rng(0).normal(scale=3.0, size=(64, 96)).astype(np.float32)
    rows[5] *= np.float32(1e17)  # large, but the squares still fit
    np.testing.assert_array_equal(l2_normalize(rows), rows / np.linalg.norm(rows, axis=-1, keepdims=True))


@pytest.mark.parametrize("scale", [1e20, 1e30, 3.4e38, 1e-25, 1e-40])
def test_rows_whose_squares_leave_float32_come_out_unit_vectors(scale):
    base = np.random.default_rng(1).normal(size=(3, 96)).astype(np.float32)
    rows = base.copy()
    rows[1] = base[1] / np.abs(base[1]).max() * np.float32(scale)
    out = l2_normalize(rows)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out.astype(np.float64), axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[1], l2_normalize(base)[1], rtol=1e-5, atol=1e-6 if scale > 1e-39 else 1e-3)
    np.testing.assert_array_equal(out[[0, 2]], l2_normalize(base)[[0, 2]])  # the batch's other rows untouched
    assert score_rows(rows[1:2], rows[1:2])[0] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("row", [[0.0, 0.0, 0.0], [np.nan, 1.0, 1.0], [np.inf, 0.0, 0.0], [-np.inf, np.inf, 1.0]])
def test_a_row_with_no_direction_does_not_come_out_finite(row):
    out = l2_normalize(np.array([[1.0, 2.0, 2.0], row], dtype=np.float32))
    assert not np.isfinite(out[1]).all() and out[0].tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3])


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
