"""LongCLIP: scores equal the PyTorch reference, batching is exact, TensorRT profiles follow the batch size, and a
damaged model folder is one line, never a traceback or wrong scores."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import GOLDENS, copy_model, needs_torch
from longclip.runtime import LongCLIP, ModelDirError
from longclip.runtime.contract.manifest import read_manifest, sha256_file

IMAGES = [GOLDENS / "images" / n for n in ("rgb_333x517.png", "small_41x97.jpg", "rgba_61x45.png")]
TEXTS = ["a photo of a cat", "A long caption " * 40, " ".join(["a"] * 19)]


@needs_torch
def test_scores_match_pytorch_reference(tiny_model_dir, tiny_reference):
    import torch

    from longclip.runtime.decode.preprocess import preprocess_images
    from longclip.runtime.decode.tokenizer import tokenize

    model = LongCLIP(tiny_model_dir, device="cpu")
    with torch.no_grad():
        img = tiny_reference.encode_image(torch.from_numpy(preprocess_images(IMAGES, 32))).numpy()
        txt = tiny_reference.encode_text(torch.from_numpy(tokenize(TEXTS))).numpy()
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    want = (np.sum(img * txt, axis=1) + 1) / 2
    got = model.score(IMAGES, TEXTS)
    assert got.dtype == np.float32 and got.shape == (3,)
    assert np.abs(got - want).max() < 1e-5
    assert ((got >= 0) & (got <= 1)).all()
    np.testing.assert_allclose(np.linalg.norm(model.encode_texts(TEXTS), axis=1), 1.0, rtol=1e-6)


def test_bucketed_text_batches_equal_one_by_one(tiny_model_dir):
    model = LongCLIP(tiny_model_dir, device="cpu")
    texts = ["short", "word " * 300, "a medium length caption about a dog", "x", "y z " * 20]
    together = model.encode_texts(texts, batch_size=2)
    alone = np.concatenate([model.encode_texts([t]) for t in texts])
    np.testing.assert_array_equal(together, alone)


def test_pil_images_and_paths_agree(tiny_model_dir):
    model = LongCLIP(tiny_model_dir)
    np.testing.assert_array_equal(model.encode_images([Image.open(IMAGES[0])]), model.encode_images(IMAGES[:1]))


def test_model_dir_errors(tmp_path):
    with pytest.raises(ModelDirError, match=r"nope' does not exist; pass an exported folder \(longclip-export "):
        LongCLIP(tmp_path / "nope")
    with pytest.raises(ModelDirError, match="is a folder without manifest.json or a .pt/.bin/.ckpt/.safetensors file"):
        LongCLIP(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(ModelDirError, match="re-export"):
        LongCLIP(tmp_path)


def test_runtime_never_imports_torch(tiny_model_dir):
    code = (
        "import sys\n"
        "from longclip.runtime import LongCLIP, ImageLongCLIPEvaluator, tokenize\n"
        f"m = LongCLIP({str(tiny_model_dir)!r})\n"
        f"s = m.score([{str(IMAGES[0])!r}], ['a cat'])\n"
        "assert 0 <= s[0] <= 1, s\n"
        "bad = [n for n in sys.modules if n == 'torch' or n.startswith(('torch.', 'longclip.export'))]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_model_builds_profiles_from_its_manifest(tiny_model_dir, monkeypatch, tmp_path):
    from longclip.runtime.model import longclip as model_module

    seen = {}

    def fake_session(path, device, threads, trt, spin=True, model_dir=None):
        seen[path.name] = trt
        return None

    monkeypatch.setenv("LONGCLIP_CACHE", str(tmp_path))
    monkeypatch.setattr(model_module, "create_session", fake_session)
    monkeypatch.setattr(model_module, "check_io", lambda *args: None)  # no sessions to check
    model_module.LongCLIP(tiny_model_dir, device="tensorrt", max_batch=16)
    vision, text = seen["vision.onnx"], seen["text.onnx"]
    assert (vision.min_shape, vision.opt_shape, vision.max_shape) == ((1, 3, 32, 32), (16, 3, 32, 32), (16, 3, 32, 32))
    assert (text.min_shape, text.max_shape) == ((1, 1), (16, 248))
    assert vision.cache_dir.parent == tmp_path / "tensorrt"


def test_short_texts_never_run_at_a_long_texts_length(tiny_model_dir, monkeypatch):
    from longclip.runtime.model import longclip as model_module

    model = LongCLIP(tiny_model_dir, device="cpu")
    lengths = []
    real = model_module.run_one
    monkeypatch.setattr(model_module, "run_one", lambda s, name, batch, *rest: lengths.append(batch.shape) or real(s, name, batch, *rest))
    texts = ["a cat", "a dog on grass", "word " * 300, "a red car", "stripes " * 50]
    together = model.encode_texts(texts, batch_size=64)
    assert sorted(lengths) == [(1, 64), (1, 248), (3, 8)]  # three buckets, each at its bucket's upper bound
    alone = np.concatenate([model.encode_texts([t]) for t in texts])
    np.testing.assert_array_equal(together, alone)  # bit for bit: a row's length is its bucket's, never its batch's



def test_provider_names_the_execution_provider(tiny_model_dir):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a GPU onnxruntime is installed")
    assert LongCLIP(tiny_model_dir, device=None).provider == "CPUExecutionProvider"
    assert LongCLIP(tiny_model_dir, device="cpu").provider == "CPUExecutionProvider"


@pytest.mark.parametrize("batch_size", [8, 128])
def test_batch_size_reaches_both_graphs_as_given(tiny_model_dir, monkeypatch, batch_size):
    from longclip.runtime.model import longclip as model_module

    model = LongCLIP(tiny_model_dir, device="cpu")
    shapes = []
    real = model_module.run_one
    monkeypatch.setattr(model_module, "run_one", lambda s, name, batch, *rest: shapes.append((name, len(batch))) or
                        real(s, name, batch))
    model.embed_pixels(np.zeros((130, 3, 32, 32), np.float32), batch_size)
    model.embed_ids(model.tokenizer([f"caption {i}" for i in range(130)]), batch_size)
    full, rest = divmod(130, batch_size)
    want = [batch_size] * full + [rest]
    assert [n for name, n in shapes if name == "pixel_values"] == want
    assert [n for name, n in shapes if name == "input_ids"] == want


def test_tensorrt_profiles_cover_a_batch_size_above_64(tiny_model_dir, monkeypatch, tmp_path):
    from longclip.runtime.model import longclip as model_module

    seen = {}
    monkeypatch.setenv("LONGCLIP_CACHE", str(tmp_path))
    monkeypatch.setattr(model_module, "create_session", lambda path, device, threads, trt, spin=True, model_dir=None: seen.update({path.name: trt}))
    monkeypatch.setattr(model_module, "check_io", lambda *args: None)  # no sessions to check
    model_module.LongCLIP(tiny_model_dir, device="tensorrt", max_batch=128)
    assert seen["vision.onnx"].max_shape == (128, 3, 32, 32) and seen["text.onnx"].max_shape == (128, 248)
    assert seen["vision.onnx"].opt_shape == (32, 3, 32, 32) and seen["text.onnx"].opt_shape == (32, 77)


def _damaged(tiny_model_dir, tmp_path, damage, edit=None):
    """A copy of the tiny model, its files changed by ``damage(folder)`` (and its manifest by ``edit``)."""
    folder = copy_model(tiny_model_dir, tmp_path / "tiny", edit)
    damage(folder)
    return folder


def _truncate(folder, name="text.onnx"):
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2])


def _swap(folder):
    os.replace(folder / "text.onnx", folder / "t")
    os.replace(folder / "vision.onnx", folder / "text.onnx")
    os.replace(folder / "t", folder / "vision.onnx")


def _rehash(damage):
    """``damage``, then a manifest that records the damaged file's sha256: only ONNX Runtime can tell."""
    def both(folder):
        damage(folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["graphs"]["text"]["sha256"] = sha256_file(folder / "text.onnx")
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return both


def _swap_entries(manifest):
    manifest["graphs"]["vision"], manifest["graphs"]["text"] = manifest["graphs"]["text"], manifest["graphs"]["vision"]


def _flip_last_byte(folder):
    data = bytearray((folder / "vision.onnx").read_bytes())
    data[-1] ^= 0xFF
    (folder / "vision.onnx").write_bytes(bytes(data))


SHA_SAYS = "the manifest says {}: the folder {!r} was modified or is incomplete; re-export or re-download it"
DISAGREE = "graph and manifest disagree (graphs swapped, or another model's); re-export with `longclip-export"


@pytest.mark.parametrize(("damage", "edit", "message"), [
    (_truncate, None, "graph text.onnx's sha256 is "),
    (_swap, None, "graph vision.onnx's sha256 is {text}, " + SHA_SAYS.format("{vision}", "{folder}")),
    (_flip_last_byte, None, "graph vision.onnx's sha256 is "),
    # refused by the external-data walk, before ONNX Runtime parses them
    (_rehash(_truncate), None, "graph '{folder}/text.onnx' is not a readable ONNX file (a field of "),
    (_rehash(lambda f: (f / "text.onnx").write_bytes(b"not onnx")), None, "is not a readable ONNX file (wire type 6 "),
    (_rehash(lambda f: (f / "text.onnx").write_bytes(b"")), None, "(INVALID_ARGUMENT: No graph was found"),
    (lambda f: None, _swap_entries, "graph '{folder}/text.onnx' has input 'input_ids' int64 (batch, length), its "
                                    "manifest declares 'pixel_values' float32 (N, 3, 32, 32): " + DISAGREE),
    (lambda f: None, lambda m: m.update(embed_dim=64), "graph '{folder}/vision.onnx' has output 'image_embeds' "
                                                      "float32 (batch, 32), its manifest declares 'image_embeds' "
                                                      "float32 (N, 64): " + DISAGREE),
    (lambda f: None, lambda m: m["image"].update(size=64), "has input 'pixel_values' float32 (batch, 3, 32, 32), its "
                                                          "manifest declares 'pixel_values' float32 (N, 3, 64, 64)"),
], ids=["truncated", "swapped-files", "flipped-byte", "truncated-rehashed", "garbage", "empty", "swapped-entries",
        "embed-dim", "image-size"])
def test_damaged_graphs_are_one_line_errors(tiny_model_dir, tmp_path, damage, edit, message):
    folder = _damaged(tiny_model_dir, tmp_path, damage, edit)
    hashes = {tower: sha256_file(tiny_model_dir / f"{tower}.onnx") for tower in ("vision", "text")}
    with pytest.raises(ModelDirError) as err:
        LongCLIP(folder, device="cpu")
    assert message.format(folder=folder, **hashes) in str(err.value)
    assert len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize(("damage", "edit", "message"), [
    (lambda f: (f / "manifest.json").write_text("[]"), None, "manifest.json is [], expected a JSON object"),
    (lambda f: None, lambda m: m["image"].update(std=[0, 0, 0]), "image.std is [0, 0, 0], expected 3 finite numbers"),
    (_truncate, None, "graph text.onnx's sha256 is "),
    (lambda f: None, _swap_entries, "has input 'input_ids' int64 (batch, length), its manifest declares"),
], ids=["list", "std-0", "truncated", "swapped-entries"])
def test_cli_refuses_a_damaged_folder_with_one_line(tiny_model_dir, tmp_path, damage, edit, message):
    folder = _damaged(tiny_model_dir, tmp_path, damage, edit)
    shutil.copy(IMAGES[1], tmp_path / "a.jpg")
    (tmp_path / "in.jsonl").write_text(json.dumps({"image_path": "a.jpg", "text": "a cat"}) + "\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = subprocess.run([sys.executable, "-m", "longclip.runtime.cli.run", "in.jsonl", "-m", str(folder), "-o",
                           "out.jsonl", "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("longclip-run: error: ") and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before and proc.stdout == ""


@needs_torch
def test_damaged_external_data_is_caught(tmp_path, tiny_checkpoint, monkeypatch):
    from longclip.export import build, onnx_export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)
    folder = build.export_model(tiny_checkpoint, tmp_path / "ext").model_dir
    graph = read_manifest(folder).graphs["text"]
    assert graph.files == (folder / "text.onnx", folder / "text.onnx.data")
    assert graph.sha256[folder / "text.onnx.data"] == sha256_file(folder / "text.onnx.data")
    assert LongCLIP(folder, device="cpu").encode_texts(["a cat"]).shape == (1, 32)
    data = bytearray((folder / "text.onnx.data").read_bytes())
    data[100] ^= 0xFF
    (folder / "text.onnx.data").write_bytes(bytes(data))
    with pytest.raises(ModelDirError, match=r"graph text.onnx.data's sha256 is [0-9a-f]{64}, the manifest says"):
        LongCLIP(folder, device="cpu")
    (folder / "text.onnx.data").unlink()
    with pytest.raises(ModelDirError, match="names 'text.onnx.data', which is not a file in the folder"):
        LongCLIP(folder, device="cpu")


def test_a_texts_embedding_does_not_depend_on_its_batch(tiny_model_dir):
    # Padding to the batch's longest text changed last bits (9ea28ed): a text now runs at its own bucket's length.
    model = LongCLIP(tiny_model_dir, device="cpu")
    words = "cat dog car tree house bird boat lamp".split() * 3
    texts = [f"a {w} number {i} " * (1 + i % 9) for i, w in enumerate(words)]  # 22 of 24 differed at batch 64
    alone = np.concatenate([model.encode_texts([t]) for t in texts])
    for batch_size in (1, 2, 64):
        np.testing.assert_array_equal(model.encode_texts(texts, batch_size=batch_size), alone)  # bit for bit
    np.testing.assert_array_equal(model.encode_texts(texts[::-1]), alone[::-1])


def test_score_items_keeps_the_row_contract(tiny_model_dir, tmp_path):
    model = LongCLIP(tiny_model_dir, device="cpu")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    images = [IMAGES[0], "missing.png", IMAGES[1].read_bytes(), tmp_path / "bad.jpg", IMAGES[2], None]
    texts = ["a cat", "a dog", "word " * 300, "x", "   ", "y"]
    out = model.score_items(images, texts)
    assert out.scores.dtype == np.float32 and out.truncated.dtype == bool
    assert [e.split(":")[0] for e in out.errors] == ["", "missing_file", "", "not_an_image", "empty_text",
                                                     "null_path"]
    assert np.isnan(out.scores[[1, 3, 4, 5]]).all() and out.truncated.tolist() == [False, False, True, False,
                                                                                   False, False]
    np.testing.assert_array_equal(out.scores[[0, 2]], model.score([IMAGES[0], IMAGES[1]], [texts[0], texts[2]]))
    alone = model.score_items([IMAGES[1].read_bytes()], [texts[2]])  # an item's score is its own, bit for bit
    assert alone.scores[0] == out.scores[2] and alone.errors == [""]
    relative = model.score_items([IMAGES[0].name], ["a cat"], image_root=IMAGES[0].parent)
    assert relative.scores[0] == out.scores[0]
    with pytest.raises(ValueError, match="as many images as texts, got 1 and 2"):
        model.score_items([IMAGES[0]], ["a", "b"])
    with pytest.raises(TypeError, match="wrap it in a list"):
        model.score_items(str(IMAGES[0]), ["a"])


def test_the_runtime_never_imports_the_service_framework():
    code = ("import sys; import longclip.runtime as r; r.LongCLIP; import longclip.runtime.engines.local, "
            "longclip.runtime.cli.run; assert not {'starlette', 'uvicorn', 'prometheus_client'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
