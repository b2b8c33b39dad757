"""Images open only in the allowed formats: an EPS row never reaches Ghostscript, on any decode path.

Pillow's EPS plugin renders with ``gs``, another program, so dataset bytes would be handed to it. Each path that
decodes an image is run in a fresh Python process (Pillow remembers its probe for ``gs`` per process) with a
stand-in ``gs`` first on PATH that appends each call to a file: the file must stay empty, and the row must be
``not_an_image`` naming EPS.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from longclip.runtime.contract import errors
from longclip.runtime.contract.constants import ALLOWED_IMAGE_FORMATS
from longclip.runtime.contract.errors import ImageError
from longclip.runtime.decode.images import allowed_formats
from longclip.runtime.decode.preprocess import decode_image

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\nshowpage\n%%EOF\n"
"""A minimal EPS that Pillow opens (8x8) and, on load, renders by running ``gs``."""

GS = '#!/bin/sh\necho "$@" >> "$GS_RECORD"\n[ "$1" = "--version" ] && echo 10.02.1\nexit 0\n'
"""The stand-in ``gs``: records every call (Pillow first asks ``gs --version``, then renders)."""

OPTIONAL = {"AVIF"}  # IDs a Pillow build may lack (AVIF: Pillow >= 11.2); allowed_formats() leaves them out


def test_every_allowed_format_is_a_pillow_format_id():
    Image.init()
    assert set(ALLOWED_IMAGE_FORMATS) - OPTIONAL <= set(Image.OPEN), set(ALLOWED_IMAGE_FORMATS) - set(Image.OPEN)
    assert allowed_formats() == tuple(f for f in ALLOWED_IMAGE_FORMATS if f in Image.OPEN)
    assert {"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"} <= set(allowed_formats())
    assert not {"EPS", "PS", "PDF", "WMF"} & set(ALLOWED_IMAGE_FORMATS)


def test_an_id_pillow_lacks_raises_so_it_is_left_out():
    with pytest.raises(KeyError):  # why allowed_formats() filters: Image.open does not skip an unknown ID
        Image.open(io.BytesIO(b"\x89PNG\r\n\x1a\n"), formats=["NO-SUCH-FORMAT", "PNG"])


def test_mpo_opens_as_jpeg():
    image = Image.new("RGB", (16, 12), (200, 10, 10))
    buffer = io.BytesIO()
    image.save(buffer, "MPO", save_all=True, append_images=[image])
    assert decode_image(buffer.getvalue(), 8).shape == (3, 8, 8)


@pytest.mark.parametrize(("data", "named"), [(EPS, "EPS"), (b"\xc5\xd0\xd3\xc6" + bytes(28), "EPS"),
                                             (b"8BPS" + bytes(30), "PSD"), (b"/* XPM */\n" + bytes(10), "(XBM or )?XPM")])
def test_another_format_is_not_an_image_naming_it(data, named):
    with pytest.raises(ImageError) as caught:
        decode_image(data, 8, name="row.png")
    assert caught.value.code == errors.NOT_AN_IMAGE
    # Pillow 13's XBM probe also claims "/*": every format whose probe claims the bytes is named
    assert re.match(f"not_an_image: 'row.png' is {named}, not an allowed image format \\(allowed: JPEG, PNG, GIF, "
                    "WEBP, BMP, TIFF, ", str(caught.value)), str(caught.value)


def test_broken_allowed_format_is_not_named_as_another():
    with pytest.raises(ImageError) as caught:
        decode_image(b"\x89PNG\r\n\x1a\n" + bytes(8), 8, name="cut.png")
    assert str(caught.value) == "not_an_image: not an image file: 'cut.png'"


HARNESS = textwrap.dedent('''
    import json, os, sys, tarfile, io
    from pathlib import Path
    import pandas as pd

    model_dir, work = sys.argv[1], Path(sys.argv[2])
    record = Path(os.environ["GS_RECORD"])
    eps = (work / "art.eps").read_bytes()
    results = {}

    def calls():
        return record.read_text().splitlines() if record.exists() else []

    def attempt(path, fn):
        before = len(calls())
        try:
            reason = fn()
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
        results[path] = {"reason": reason, "gs_calls": calls()[before:]}

    from longclip.runtime import LongCLIP
    from longclip.runtime.engines.chunk import score_frame
    from longclip.runtime.engines.local import run_file
    from longclip.runtime.engines.options import RunOptions
    from longclip.runtime.contract.errors import RowError
    from longclip.runtime.cli.operator import ImageLongCLIPEvaluator
    from longclip.runtime.report.page import thumbnail_uri
    from longclip.runtime.inputs.tables import read_table

    model = LongCLIP(model_dir, device="cpu")
    frame = pd.DataFrame({"image_path": [str(work / "art.eps")], "text": ["a drawing"]})

    def scored(src, dst):
        run_file(model, src, dst, RunOptions(), progress=False)
        return read_table(dst)["longclip_score_error"].tolist()[0]

    def file_row():
        return score_frame(model, frame, "image_path", "text", "longclip_score", image_root=None,
                           decode_workers=0)["longclip_score_error"].tolist()[0]

    def parquet_bytes():
        pd.DataFrame({"image_path": [eps], "text": ["a drawing"]}).to_parquet(work / "in.parquet")
        return scored(work / "in.parquet", work / "out.parquet")

    def webdataset_member():
        with tarfile.open(work / "shard.tar", "w") as tar:
            for name, data in (("0.jpg", eps), ("0.txt", b"a drawing")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return scored(work / "shard.tar", work / "wds.parquet")

    def decode_workers():
        return score_frame(model, frame, "image_path", "text", "longclip_score", image_root=None,
                           decode_workers=1)["longclip_score_error"].tolist()[0]

    def thumbnail():
        try:
            thumbnail_uri(eps)
        except RowError as exc:
            return str(exc)
        return "made a thumbnail"

    class Storage:
        def read(self, output_type):
            return frame.copy()

        def write(self, data):
            self.data = data

    def operator():
        storage = Storage()
        ImageLongCLIPEvaluator(model_dir, device="cpu").run(storage)
        return storage.data["longclip_score_error"].tolist()[0]

    def encode_images():
        model.encode_images([work / "art.eps"])
        return "encoded"

    for path, fn in [("file path row", file_row), ("parquet bytes column", parquet_bytes),
                     ("webdataset member", webdataset_member), ("decode worker pool", decode_workers),
                     ("report thumbnail", thumbnail), ("operator", operator), ("encode_images", encode_images)]:
        attempt(path, fn)
    print(json.dumps(results))
''')

PATHS = ["file path row", "parquet bytes column", "webdataset member", "decode worker pool", "report thumbnail",
         "operator", "encode_images"]


@pytest.fixture(scope="module")
def eps_everywhere(tiny_model_dir, tmp_path_factory):
    """Each decode path's result for an EPS image, in one fresh process with the stand-in ``gs`` on PATH."""
    work = tmp_path_factory.mktemp("eps")
    (work / "bin").mkdir()
    (work / "bin" / "gs").write_text(GS)
    (work / "bin" / "gs").chmod(0o755)
    (work / "art.eps").write_bytes(EPS)
    env = {**os.environ, "PATH": f"{work / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "GS_RECORD": str(work / "gs-calls.txt")}
    done = subprocess.run([sys.executable, "-c", HARNESS, str(tiny_model_dir), str(work)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.splitlines()[-1])
    assert sorted(results) == sorted(PATHS)
    return results, work / "gs-calls.txt"


def test_the_stand_in_gs_is_what_pillow_would_run(tmp_path):
    """The harness proves something: with every format allowed, Pillow does run the stand-in for these bytes."""
    (tmp_path / "gs").write_text(GS)
    (tmp_path / "gs").chmod(0o755)
    code = "import io, PIL.Image as I; I.open(io.BytesIO(%r)).load()" % EPS
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}",
           "GS_RECORD": str(tmp_path / "calls.txt")}
    subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=300)
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert "-dSAFER" in calls[-1] and "-dBATCH" in calls[-1]  # a render (Pillow 13 first asks `gs --version`)


@pytest.mark.parametrize("path", PATHS)
def test_eps_never_reaches_ghostscript(eps_everywhere, path):
    results, record = eps_everywhere
    assert results[path]["gs_calls"] == []
    assert "is EPS, not an allowed image format" in results[path]["reason"], results[path]["reason"]
    assert results[path]["reason"].startswith(("not_an_image: ", "ImageError: not_an_image: "))


def test_no_path_ran_ghostscript_at_all(eps_everywhere):
    _, record = eps_everywhere
    assert not record.exists()
