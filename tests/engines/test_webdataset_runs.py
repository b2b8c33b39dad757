"""longclip-run on WebDataset shards: the same scores, bit for bit, as the same images as files; __key__ and
__shard__ first; hostile samples cost only their rows; json fields kept; --resume by the shards' bytes; the report
reads its thumbnails from the shards."""

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd

from conftest import GOLDENS

IMG = GOLDENS / "images"
NAMES = ["rgb_333x517.png", "small_41x97.jpg", "rgba_61x45.png", "gray_64x50.png", "cmyk_80x60.jpg"]
SCRIPT = Path(sys.executable).with_name("longclip-run")


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _shard(path: Path, samples: list[dict[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            for name, data in sample.items():
                _member(tar, name, data)
    return path


def _samples(start: int, n: int) -> list[dict[str, bytes]]:
    out = []
    for i in range(start, start + n):
        image = NAMES[i % len(NAMES)]
        ext = "jpg" if image.endswith(".jpg") else "png"
        out.append({f"{i:06d}.{ext}": (IMG / image).read_bytes(), f"{i:06d}.txt": f"caption number {i}".encode(),
                    f"{i:06d}.json": json.dumps({"caption": f"json caption {i}", "width": 100 + i}).encode()})
    return out


def _run(*args, cwd):
    return subprocess.run([str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_shards_score_as_the_same_images_as_files(tmp_path, tiny_model_dir):
    (tmp_path / "shards").mkdir()
    _shard(tmp_path / "shards" / "00000.tar", _samples(0, 7))
    _shard(tmp_path / "shards" / "00001.tar", _samples(7, 6))
    rows = [{"image_path": str(IMG / NAMES[i % len(NAMES)]), "text": f"caption number {i}"} for i in range(13)]
    (tmp_path / "files.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["-m", tiny_model_dir, "--chunk-rows", "4", "--device", "cpu"]
    wds = _run("shards/{00000..00001}.tar", "-o", "wds.parquet", "--wds-keep", "width", *common, cwd=tmp_path)
    assert wds.returncode == 0, wds.stderr
    files = _run("files.jsonl", "-o", "files.parquet", *common, cwd=tmp_path)
    assert files.returncode == 0, files.stderr
    got, want = pd.read_parquet(tmp_path / "wds.parquet"), pd.read_parquet(tmp_path / "files.parquet")
    assert list(got.columns) == ["__key__", "__shard__", "image_path", "text", "width", "longclip_score",
                                 "longclip_score_error"]
    assert got["__key__"].tolist() == [f"{i:06d}" for i in range(13)]
    assert got["__shard__"].tolist() == ["shards/00000.tar"] * 7 + ["shards/00001.tar"] * 6
    assert got["width"].tolist() == [100 + i for i in range(13)]
    np.testing.assert_array_equal(got["longclip_score"].to_numpy(), want["longclip_score"].to_numpy())  # bit for bit
    by_json = _run("shards/00000.tar", "-o", "json.jsonl", "--wds-text", "json:caption", *common, cwd=tmp_path)
    assert by_json.returncode == 0, by_json.stderr
    texts = [json.loads(line)["text"] for line in (tmp_path / "json.jsonl").read_text().splitlines()]
    assert texts == [f"json caption {i}" for i in range(7)]


def test_hostile_samples_cost_only_their_rows(tmp_path, tiny_model_dir):
    good = _samples(0, 2)
    missing_image = {"000010.txt": b"no image here"}
    missing_text = {"000011.png": (IMG / NAMES[0]).read_bytes()}
    not_an_image = {"000012.jpg": b"this is text", "000012.txt": b"a caption"}
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        for sample in [good[0], missing_image, missing_text, not_an_image]:
            for name, data in sample.items():
                _member(tar, name, data)
        link = tarfile.TarInfo("000013.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        _member(tar, "000013.txt", b"a link")
        for name, data in good[1].items():
            _member(tar, name, data)
    data = (tmp_path / "bad.tar").read_bytes()
    with tarfile.open(tmp_path / "bad.tar") as tar:
        last = tar.getmembers()[-1]
    (tmp_path / "cut.tar").write_bytes(data[: last.offset_data + 3])  # ends inside the last sample's last member
    run = _run("bad.tar", "-o", "bad.jsonl", "-m", tiny_model_dir, "--device", "cpu", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    out = [json.loads(line) for line in (tmp_path / "bad.jsonl").read_text().splitlines()]
    codes = [r["longclip_score_error"].split(":")[0] for r in out]
    assert codes == ["", "missing_file", "null_text", "not_an_image", "not_a_file", ""]
    assert out[3]["longclip_score_error"] == "not_an_image: not an image file: 'bad.tar:000012.jpg'"
    cut = _run("cut.tar", "-o", "cut.jsonl", "-m", tiny_model_dir, "--device", "cpu", cwd=tmp_path)
    assert cut.returncode == 0, cut.stderr
    rows = [json.loads(line) for line in (tmp_path / "cut.jsonl").read_text().splitlines()]
    assert [r["longclip_score_error"].split(":")[0] for r in rows][:5] == codes[:5]
    assert rows[-1]["longclip_score_error"].split(":")[0] in ("undecodable", "corrupt_shard")


def test_a_changed_shard_refuses_resume_and_the_report_shows_member_thumbnails(tmp_path, tiny_model_dir):
    from longclip.runtime.report import ReportOptions, write_report

    _shard(tmp_path / "a.tar", _samples(0, 12))
    common = ["-m", tiny_model_dir, "--chunk-rows", "4", "--device", "cpu"]
    run = _run("a.tar", "-o", "out.jsonl", *common, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    data = write_report(tmp_path / "out.jsonl", tmp_path / "r.html", ReportOptions(image_root=str(tmp_path)))
    page = (tmp_path / "r.html").read_text()
    assert data.rows == 12 and page.count("data:image/jpeg;base64,") == 12  # every member, read from the shard
    work = tmp_path / ".again.jsonl.longclip-run"
    work.mkdir()
    (work / "state.json").write_text(json.dumps({"input_sha256": "0" * 64}))
    refused = _run("a.tar", "-o", "again.jsonl", *common, "--resume", cwd=tmp_path)
    assert refused.returncode == 1 and "cannot resume: input" in refused.stderr, refused.stderr
