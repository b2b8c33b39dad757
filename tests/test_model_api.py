"""The public ``LongCLIP`` API as a user calls it: one item where one is given, every accepted image type, the
CLI's reason codes for what the CLI refuses, ``similarity``, and one model shared by threads."""

import io
import threading

import numpy as np
import pytest
from PIL import Image

from conftest import GOLDENS
from longclip.runtime import ImageError, LongCLIP, TextError

IMAGES = [GOLDENS / "images" / n for n in ("rgb_333x517.png", "small_41x97.jpg", "rgba_61x45.png")]
TEXTS = ["a photo of a cat", "A long caption " * 40, "x"]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return LongCLIP(tiny_model_dir, device="cpu")


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_an_empty_text_is_the_clis_empty_text_not_a_score(model, text):
    for call in (lambda: model.score(IMAGES[:1], [text]), lambda: model.encode_texts(["a cat", text]),
                 lambda: model.similarity(IMAGES[:1], text)):
        with pytest.raises(TextError) as info:
            call()
        assert info.value.code == "empty_text"


def test_a_null_or_non_string_text_has_its_code(model):
    with pytest.raises(TextError) as info:
        model.encode_texts([None])
    assert info.value.code == "null_text"
    with pytest.raises(TextError) as info:
        model.encode_texts([3])
    assert info.value.code == "not_text"


@pytest.mark.parametrize("one", [str(IMAGES[0]), IMAGES[0]], ids=["str", "Path"])
def test_one_path_is_one_image_not_its_characters(model, one):
    want = model.encode_images([IMAGES[0]])
    got = model.encode_images(one)
    assert got.shape == (1, model.manifest.embed_dim)
    np.testing.assert_array_equal(got, want)


def test_one_image_and_one_text_score_one_pair(model):
    got = model.score(str(IMAGES[1]), "a photo of a cat")
    assert got.shape == (1,) and got.dtype == np.float32
    np.testing.assert_array_equal(got, model.score([IMAGES[1]], ["a photo of a cat"]))
    assert model.encode_texts("a photo of a cat").shape == (1, model.manifest.embed_dim)


def test_encoded_bytes_and_files_equal_the_path(model):
    data = IMAGES[1].read_bytes()
    want = model.encode_images([IMAGES[1]])
    for given in (data, bytearray(data), io.BytesIO(data), [data], [io.BytesIO(data)]):
        np.testing.assert_array_equal(model.encode_images(given), want)


def test_numpy_rgb_and_grayscale_arrays_equal_their_pil_images(model):
    rgb = np.asarray(Image.open(IMAGES[0]).convert("RGB"))
    gray = np.asarray(Image.open(IMAGES[1]).convert("L"))
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and gray.ndim == 2
    np.testing.assert_array_equal(model.encode_images(rgb), model.encode_images([Image.open(IMAGES[0])]))
    np.testing.assert_array_equal(model.encode_images([gray, rgb])[0],
                                  model.encode_images([Image.open(IMAGES[1]).convert("L")])[0])
    # a list of arrays is a batch; one (H, W, 3) array is one image, never its rows
    assert model.encode_images([rgb, rgb, gray]).shape[0] == 3


@pytest.mark.parametrize("array, said", [
    (np.zeros((32, 32, 3), dtype=np.float32), "float32 (32, 32, 3)"),
    (np.zeros((3, 32, 32), dtype=np.uint8), "uint8 (3, 32, 32)"),
    (np.zeros((32, 32, 4), dtype=np.uint8), "uint8 (32, 32, 4)"),
    (np.zeros((0, 32, 3), dtype=np.uint8), "(0, 32, 3)"),
])
def test_a_wrong_array_is_one_line_naming_its_dtype_and_shape(model, array, said):
    with pytest.raises(ImageError) as info:
        model.encode_images(array)
    assert info.value.code == "not_an_image"
    assert said in str(info.value) and "\n" not in str(info.value)


def test_similarity_cells_are_the_pairs_scores_bit_for_bit(model):
    got = model.similarity(IMAGES, TEXTS[:2])
    assert got.shape == (3, 2) and got.dtype == np.float32
    for i, image in enumerate(IMAGES):
        for j, text in enumerate(TEXTS[:2]):
            assert got[i, j] == model.score([image], [text])[0], (i, j)
    assert model.similarity(IMAGES[0], TEXTS[0]).shape == (1, 1)
    assert ((got >= 0) & (got <= 1)).all() and len(np.unique(got)) == 6


def test_score_of_unequal_lengths_points_at_similarity(model):
    with pytest.raises(ValueError, match="similarity"):
        model.score(IMAGES, TEXTS[:2])


def test_four_threads_on_one_model_equal_one_thread(model):
    jobs = [(IMAGES[i % 3 :] + IMAGES[: i % 3], [f"caption {i} " * (1 + 7 * i)] * 3) for i in range(8)]
    want = [model.score(images, texts) for images, texts in jobs]
    got: dict[int, np.ndarray] = {}
    start = threading.Barrier(4)

    def work(worker: int) -> None:
        start.wait()
        for k in range(worker, len(jobs), 4):
            for _ in range(3):  # repeated, so calls of the four threads overlap
                got[(k, _)] = model.score(*jobs[k])

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
        assert not thread.is_alive(), "a scoring thread did not finish in 5 minutes"
    assert len(got) == 3 * len(jobs)
    for (k, _), scores in got.items():
        np.testing.assert_array_equal(scores, want[k])
