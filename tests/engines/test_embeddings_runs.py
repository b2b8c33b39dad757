"""longclip-run --embeddings DIR: every embedding computed is kept (unit norm, the model's own), and DIR is a cache:
a second run with new captions decodes and encodes no image again and scores exactly as a cold run; a changed
image is encoded again; another model's folder is refused."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from conftest import GOLDENS

IMG = GOLDENS / "images"
NAMES = ["rgb_333x517.png", "small_41x97.jpg", "rgba_61x45.png", "gray_64x50.png", "animated_50x70.gif"]
SCRIPT = Path(sys.executable).with_name("longclip-run")

COUNT_VISION = """
import os
import onnxruntime as ort

_run = ort.InferenceSession.run


def run(self, output_names, input_feed, run_options=None):
    if "pixel_values" in input_feed:
        with open(os.environ["LONGCLIP_TEST_COUNT"], "a") as f:
            f.write(f"{len(input_feed['pixel_values'])}\\n")
    return _run(self, output_names, input_feed, run_options)


ort.InferenceSession.run = run
"""


def _rows(folder: Path, captions: str) -> Path:
    for name in NAMES:
        shutil.copy(IMG / name, folder / name)
    rows = [{"image_path": NAMES[i % len(NAMES)], "text": f"{captions} {i}"} for i in range(10)]
    rows.append({"image_path": NAMES[0], "text": ""})  # a text fault: its image is still embedded
    path = folder / f"{captions}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(folder: Path, model: Path, data: Path, out: str, *extra: str):
    hook = folder / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(COUNT_VISION)
    counts = folder / f"{out}.count"
    env = {**os.environ, "PYTHONPATH": str(hook), "LONGCLIP_TEST_COUNT": str(counts)}
    output = ["-o", out] if out else []
    proc = subprocess.run([str(SCRIPT), data.name, "-m", str(model), *output, "--device", "cpu", *extra],
                          cwd=folder, capture_output=True, text=True, timeout=300, env=env)
    images = sum(int(n) for n in counts.read_text().split()) if counts.exists() else 0
    return proc, images


def test_embeddings_are_kept_and_reused(tmp_path, tiny_model_dir):
    from longclip.runtime import LongCLIP

    first = _rows(tmp_path, "first caption")
    proc, encoded = _run(tmp_path, tiny_model_dir, first, "a.parquet", "--embeddings", "emb")
    assert proc.returncode == 0, proc.stderr
    assert encoded == len(NAMES)
    images = pd.read_parquet(tmp_path / "emb" / "images")
    texts = pd.read_parquet(tmp_path / "emb" / "texts")
    assert sorted(images["image_path"]) == sorted(NAMES) and len(texts) == 10
    assert set(images["resolved_path"]) == set(NAMES) and (images["size"] > 0).all()
    vectors = np.stack(images["embedding"].to_numpy())
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    model = LongCLIP(tiny_model_dir, device="cpu")
    want = model.encode_images([str(IMG / p) for p in images["image_path"]])
    assert (np.sum(vectors * want, axis=1) >= 0.99999).all()
    meta = json.loads((tmp_path / "emb" / "model.json").read_text())
    assert meta["precision"] == "fp32" and meta["embed_dim"] == vectors.shape[1]

    second = _rows(tmp_path, "second caption")
    proc, encoded = _run(tmp_path, tiny_model_dir, second, "warm.parquet", "--embeddings", "emb")
    assert proc.returncode == 0, proc.stderr
    assert encoded == 0, "no image may be encoded again"
    assert "from the embeddings folder: 5 images" in proc.stderr
    cold, _ = _run(tmp_path, tiny_model_dir, second, "cold.parquet")
    assert cold.returncode == 0, cold.stderr
    warm_scores = pd.read_parquet(tmp_path / "warm.parquet")["longclip_score"].to_numpy()
    cold_scores = pd.read_parquet(tmp_path / "cold.parquet")["longclip_score"].to_numpy()
    np.testing.assert_array_equal(warm_scores, cold_scores)  # bit for bit
    assert len(pd.read_parquet(tmp_path / "emb" / "texts")) == 20  # the new captions were added

    shutil.copy(IMG / "cmyk_80x60.jpg", tmp_path / NAMES[1])  # the same path, other bytes
    proc, encoded = _run(tmp_path, tiny_model_dir, second, "changed.parquet", "--embeddings", "emb")
    assert proc.returncode == 0, proc.stderr
    assert encoded == 1  # only the changed image


def test_another_models_folder_and_a_second_writer_are_refused(tmp_path, tiny_model_dir, other_model_dir):
    data = _rows(tmp_path, "caption")
    proc, _ = _run(tmp_path, tiny_model_dir, data, "a.jsonl", "--embeddings", "emb")
    assert proc.returncode == 0, proc.stderr
    proc, encoded = _run(tmp_path, other_model_dir, data, "b.jsonl", "--embeddings", "emb")
    assert proc.returncode == 1 and encoded == 0
    assert len(proc.stderr.strip().splitlines()) == 1 and "emb" in proc.stderr, proc.stderr
    assert not (tmp_path / "b.jsonl").exists()
    from longclip.runtime.outputs.lock import OutputLock

    with OutputLock(tmp_path / "emb", what="embeddings folder"):
        proc, _ = _run(tmp_path, tiny_model_dir, data, "c.jsonl", "--embeddings", "emb")
    assert proc.returncode == 1 and "is being written by another run" in proc.stderr, proc.stderr


def test_embed_only_a_table_of_images_then_score_from_the_folder(tmp_path, tiny_model_dir):
    for name in NAMES:
        shutil.copy(IMG / name, tmp_path / name)
    (tmp_path / "images.csv").write_text("image_path\n" + "".join(f"{n}\n" for n in NAMES + NAMES[:2]))
    proc, encoded = _run(tmp_path, tiny_model_dir, tmp_path / "images.csv", "", "--embeddings", "emb", "--embed-only")
    assert proc.returncode == 0 and encoded == len(NAMES), proc.stderr
    assert "embedded, nothing scored" in proc.stderr and "5 images and 0 texts added" in proc.stderr
    assert sorted(pd.read_parquet(tmp_path / "emb" / "images")["image_path"]) == sorted(NAMES)
    proc, encoded = _run(tmp_path, tiny_model_dir, _rows(tmp_path, "caption"), "s.jsonl", "--embeddings", "emb")
    assert proc.returncode == 0 and encoded == 0, proc.stderr
    wrong = subprocess.run([str(SCRIPT), "images.csv", "-m", str(tiny_model_dir), "--embed-only"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert wrong.returncode == 2 and "--embed-only takes --embeddings DIR" in wrong.stderr


def test_an_image_met_in_many_chunks_or_under_two_paths_is_recorded_once(tmp_path, tiny_model_dir):
    for name in NAMES[:2]:
        shutil.copy(IMG / name, tmp_path / name)
    shutil.copy(IMG / NAMES[0], tmp_path / "same_bytes.png")  # another path, the same bytes
    rows = [{"image_path": p, "text": f"caption {i % 3}"}
            for i, p in enumerate([NAMES[0], "same_bytes.png", NAMES[1]] * 6)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc, _ = _run(tmp_path, tiny_model_dir, data, "out.parquet", "--embeddings", "emb", "--chunk-rows", "2")
    assert proc.returncode == 0, proc.stderr
    images = pd.read_parquet(tmp_path / "emb" / "images")
    texts = pd.read_parquet(tmp_path / "emb" / "texts")
    assert sorted(images["sha256"].value_counts().tolist()) == [1, 1]  # 2 distinct contents over 9 chunks
    assert sorted(texts["text"]) == ["caption 0", "caption 1", "caption 2"]
