"""A folder of files as INPUT: img2dataset's ``files`` layout scores as the same files packed in a WebDataset tar
(rows, reasons, scores), and a folder of images alone is embedded by --embed-only."""

import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd

from conftest import GOLDENS
from longclip.runtime.inputs.tables import read_table

IMG = GOLDENS / "images"
SCRIPT = Path(sys.executable).with_name("longclip-run")


def _cli(*args, cwd):
    return subprocess.run([str(SCRIPT), *map(str, args), "--decode-workers", "0"], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def _img2dataset_files(root: Path) -> Path:
    """img2dataset's ``files`` output: a folder per shard, ``<key>.jpg`` + ``.txt`` + ``.json``, and its stats and
    parquet beside them; plus the faults a crawl leaves."""
    shard = root / "data" / "00000"
    (shard / "deeper").mkdir(parents=True)
    shutil.copy(IMG / "small_41x97.jpg", shard / "000000000.jpg")
    (shard / "000000000.txt").write_text("a man and a woman in a car")
    (shard / "000000000.json").write_text(json.dumps({"url": "http://x/0.jpg"}))
    shutil.copy(IMG / "rgb_333x517.png", shard / "000000001.png")
    (shard / "000000001.txt").write_text("Stripes. " * 60)
    (shard / "000000002.txt").write_text("a caption whose image failed to download")
    shutil.copy(IMG / "rgba_61x45.png", shard / "000000003.png")  # no caption
    (shard / "000000004.jpg").write_bytes(b"not an image")
    (shard / "000000004.txt").write_text("broken image")
    shutil.copy(IMG / "small_41x97.jpg", shard / "deeper" / "000000005.jpg")
    (shard / "deeper" / "000000005.txt").write_text("")
    (root / "data" / "00000_stats.json").write_text(json.dumps({"count": 6}))
    pd.DataFrame({"key": ["000000000"]}).to_parquet(root / "data" / "00000.parquet")
    return root / "data"


def test_img2dataset_files_score_as_the_same_files_in_a_tar(tmp_path, tiny_model_dir):
    folder = _img2dataset_files(tmp_path)
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:  # the same samples as members, as img2dataset tars them
        for path in sorted((folder / "00000").rglob("*"), key=lambda p: (p.parent != folder / "00000", str(p))):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(folder)))
    from_folder = _cli("data", "-m", tiny_model_dir, "-o", "folder.jsonl", cwd=tmp_path)
    from_tar = _cli("shard.tar", "-m", tiny_model_dir, "-o", "tar.jsonl", cwd=tmp_path)
    assert from_folder.returncode == 0 and from_tar.returncode == 0, from_folder.stderr + from_tar.stderr
    got, want = read_table(tmp_path / "folder.jsonl"), read_table(tmp_path / "tar.jsonl")
    assert got["__key__"].tolist() == ["00000/deeper/000000005", "00000/000000000", "00000/000000001",
                                       "00000/000000002", "00000/000000003", "00000/000000004"]
    codes = [r.split(":")[0] for r in got["longclip_score_error"]]
    assert codes == ["empty_text", "", "", "missing_file", "null_text", "not_an_image"]
    want = want.set_index("__key__").loc[got["__key__"]].reset_index()
    assert [r.split(":")[0] for r in want["longclip_score_error"]] == codes
    pd.testing.assert_series_equal(got["longclip_score"], want["longclip_score"])  # bit for bit
    assert got["image_path"].tolist()[1:3] == ["00000/000000000.jpg", "00000/000000001.png"]
    assert (got["__shard__"] == "data").all()
    report = subprocess.run([str(SCRIPT.with_name("longclip-report")), "folder.jsonl", "-o", "r.html"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    shown = int(re.search(r"(\d+) thumbnails embedded", report.stdout + report.stderr)[1])
    assert shown == (tmp_path / "r.html").read_text().count("data:image/") and shown >= 2  # read from the folder


def test_a_folder_of_images_alone_is_embedded(tmp_path, tiny_model_dir):
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    shutil.copy(IMG / "small_41x97.jpg", tmp_path / "photos" / "a.jpg")
    shutil.copy(IMG / "rgb_333x517.png", tmp_path / "photos" / "sub" / "b.png")
    (tmp_path / "photos" / "sub" / "c.jpg").write_bytes(b"not an image")
    (tmp_path / "photos" / ".hidden.jpg").write_bytes(b"skipped")
    proc = _cli("photos", "-m", tiny_model_dir, "--embeddings", "emb", "--embed-only", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "rows 3: embedded, nothing scored (--embed-only); rows with a failed image or text 1 (not_an_image 1)" \
        in proc.stderr
    assert "2 images and 0 texts added" in proc.stderr
    assert len(pd.read_parquet(tmp_path / "emb" / "images")) == 2


def test_a_file_that_cannot_be_opened_costs_its_own_row(tmp_path, tiny_model_dir, monkeypatch):
    """A permission-denied image (or caption) in a folder INPUT is that row's unreadable (null_text), as a path
    row's would be; the other rows score, and the run is not refused."""
    import os

    from longclip.runtime import LongCLIP
    from longclip.runtime.engines.local import run_file
    from longclip.runtime.engines.options import RunOptions

    folder = tmp_path / "data"
    folder.mkdir()
    for key in ("a", "b", "c"):
        shutil.copy(IMG / "small_41x97.jpg", folder / f"{key}.jpg")
        (folder / f"{key}.txt").write_text(f"caption {key}")
    locked = {str(folder / "b.jpg"), str(folder / "c.txt")}
    for path in locked:
        os.chmod(path, 0)
    if os.access(folder / "b.jpg", os.R_OK):  # root reads it anyway: the system's answer to anyone else
        real = os.open

        def denied(path, flags, *args, **kwargs):
            if str(path) in locked:
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", denied)
    summary = run_file(LongCLIP(tiny_model_dir, device="cpu"), folder, tmp_path / "out.jsonl", RunOptions(),
                       progress=False)
    out = read_table(tmp_path / "out.jsonl")
    assert out["__key__"].tolist() == ["a", "b", "c"] and summary.scored == 1
    assert out["longclip_score_error"].tolist() == [
        "", f"unreadable: member 'b.jpg' of {str(folder)!r} cannot be read (Permission denied)",
        f"null_text: member 'c.txt' of {str(folder)!r} cannot be read (Permission denied)"]
