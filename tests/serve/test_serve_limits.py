"""The service's request checks without a server: which inputs are images, which paths may be read (a path that
leads out of the image root is refused before anything opens it), and the 4xx each bad body gets."""

from __future__ import annotations

import base64
import os

import pytest

pytest.importorskip("starlette")

from longclip.runtime.contract.errors import ImageError  # noqa: E402
from longclip.runtime.serve.limits import Limits, RequestError, embedding_inputs, image_path, is_image_uri, score_pairs  # noqa: E402


@pytest.fixture
def root(tmp_path):
    (tmp_path / "root" / "sub").mkdir(parents=True)
    (tmp_path / "root" / "sub" / "a.png").write_bytes(b"png")
    (tmp_path / "secret.png").write_bytes(b"secret")
    (tmp_path / "root" / "out.png").symlink_to(tmp_path / "secret.png")
    (tmp_path / "root" / "in.png").symlink_to(tmp_path / "root" / "sub" / "a.png")
    (tmp_path / "root" / "dev.png").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "root" / "pipe.png")
    return (tmp_path / "root").resolve()


@pytest.mark.parametrize("value, code", [
    ("../secret.png", "bad_path"), ("sub/../../secret.png", "bad_path"), ("out.png", "bad_path"),
    ("dev.png", "bad_path"), ("/dev/zero", "bad_path"), ("http://example.com/a.png", "bad_path"),
    ("file:///etc/passwd", "bad_path"), ("a\0b.png", "bad_path"), ("pipe.png", "not_a_file"),
    ("sub", "directory"), ("nope.png", "missing_file"),
])
def test_a_path_is_read_only_as_a_regular_file_inside_the_root(root, monkeypatch, value, code):
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    with pytest.raises(ImageError) as error:
        image_path(value, root)
    assert error.value.code == code and opened == []  # refused from stat alone: nothing opened


def test_paths_inside_the_root_resolve_to_their_real_file(root):
    assert image_path("sub/a.png", root) == str(root / "sub" / "a.png")
    assert image_path("in.png", root) == str(root / "sub" / "a.png")  # a symlink that stays inside
    with pytest.raises(ImageError, match="start longclip-serve with --image-root"):
        image_path("sub/a.png", None)


def test_only_data_image_uris_are_images():
    assert is_image_uri("data:image/jpeg;base64,AAAA") and is_image_uri("DATA:image/webp;name=x;base64,AA")
    assert not is_image_uri("data:text/plain;base64,AAAA") and not is_image_uri("data:image/png,raw")
    assert not is_image_uri(" data:image/png;base64,AAAA")  # a text that mentions one


def test_embedding_inputs_and_their_errors():
    png = "data:image/png;base64," + base64.b64encode(b"bytes").decode()
    assert embedding_inputs({"input": ["a cat", png]}, Limits()) == (["a cat", b"bytes"], "float")
    assert embedding_inputs({"input": "a cat", "encoding_format": "base64"}, Limits()) == (["a cat"], "base64")
    for body, status, message in [({}, 400, "'input' must be a string or a list of strings, got NoneType"),
                                  ({"input": ["a", "b", "c"]}, 413, "'input' has 3 items, more than --max-items 2"),
                                  ({"input": ["a", [1, 2]]}, 400, "input[1] is token ids"),
                                  ({"input": ["a", ""]}, 400, "input[1] is empty"),
                                  ({"input": ["data:image/png;base64,"]}, 400, "input[0]: empty_file")]:
        with pytest.raises(RequestError) as error:
            embedding_inputs(body, Limits(max_items=2))
        assert error.value.status == status and str(error.value).startswith(message)


def test_score_pairs_keep_each_pairs_reason_and_refuse_a_malformed_body(root):
    images, texts, reasons = score_pairs({"pairs": [{"image": "sub/a.png", "text": "a"}, {"image": "../x", "text": 1},
                                                    {"text": "b"}]}, Limits(image_root=root))
    assert images == [str(root / "sub" / "a.png"), None, None] and texts == ["a", 1, "b"]
    assert reasons[0] == "" and reasons[1].startswith("bad_path: ") and reasons[2] == ""  # the pipeline: null_path
    with pytest.raises(RequestError, match=r"pairs\[0\] must be an object"):
        score_pairs({"pairs": [["a.png", "a"]]}, Limits())
