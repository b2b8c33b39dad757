import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import GOLDENS, needs_torch
from longclip.runtime import DeviceUnavailableError, LongCLIP, ModelDirError
from longclip.runtime.session import create_session, parse_device

IMAGES = [GOLDENS / "images" / n for n in ("rgb_333x517.png", "small_41x97.jpg", "rgba_61x45.png")]
TEXTS = ["a photo of a cat", "A long caption " * 40, " ".join(["a"] * 19)]


@needs_torch
def test_scores_match_pytorch_reference(tiny_model_dir, tiny_reference):
    import torch

    from longclip.runtime.preprocess import preprocess_images
    from longclip.runtime.tokenizer import tokenize

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
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)


def test_pil_images_and_paths_agree(tiny_model_dir):
    model = LongCLIP(tiny_model_dir)
    np.testing.assert_array_equal(model.encode_images([Image.open(IMAGES[0])]), model.encode_images(IMAGES[:1]))


@pytest.mark.parametrize("device", ["cuda", "tensorrt", "cuda:1"])
def test_explicit_gpu_without_gpu_raises(tiny_model_dir, device):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a GPU onnxruntime is installed")
    with pytest.raises(DeviceUnavailableError, match="onnxruntime-gpu"):
        create_session(tiny_model_dir / "vision.onnx", device)


def test_gpu_libraries_load_once_quietly_and_never_for_cpu(tiny_model_dir, monkeypatch, capsys):
    import onnxruntime as ort

    from longclip.runtime import session

    import sys
    import threading
    import time

    calls = []

    def preload():
        calls.append(print("loading CUDA"))
        time.sleep(0.05)  # long enough for a second thread to arrive while the first is loading

    monkeypatch.setattr(ort, "preload_dlls", preload, raising=False)
    session._preload_once.cache_clear()
    create_session(tiny_model_dir / "vision.onnx", "cpu")
    assert calls == []
    stdout = sys.stdout
    threads = [threading.Thread(target=session.load_gpu_libraries) for _ in range(2)]  # as LongCLIP's two sessions
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    session.load_gpu_libraries()
    out = capsys.readouterr()
    assert calls == [None] and out.out == "" and "loading CUDA" in out.err  # stdout stays the data's
    assert sys.stdout is stdout
    session._preload_once.cache_clear()


def test_auto_picks_a_provider_that_runs(tiny_model_dir):
    model = LongCLIP(tiny_model_dir, device=None)
    assert model.provider in model.vision.get_providers()


def test_parse_device():
    assert parse_device(None) == ("auto", 0)
    assert parse_device("CUDA:2") == ("cuda", 2)
    for bad in ("gpu", "cuda:x", "cpu:1"):
        with pytest.raises(DeviceUnavailableError, match="unknown device"):
            parse_device(bad)


def test_model_dir_errors(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist: run `longclip-export"):
        LongCLIP(tmp_path / "nope")
    with pytest.raises(ModelDirError, match="no manifest.json"):
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


def test_tensorrt_options_profiles_and_cache_key(tmp_path):
    from longclip.runtime.session import TrtProfile, provider_chain

    profile = TrtProfile("input_ids", (1, 1), (32, 77), (64, 248), "ab" * 32, tmp_path)
    (name, opts), (cuda, cuda_opts), cpu = provider_chain("tensorrt", 2, profile)
    assert (name, cuda, cpu) == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    assert opts["device_id"] == "2" and cuda_opts == {"device_id": "2", "use_tf32": "0", "arena_extend_strategy": "kSameAsRequested"}
    assert opts["trt_fp16_enable"] == "True" and opts["trt_engine_cache_enable"] == "True"
    assert opts["trt_profile_min_shapes"] == "input_ids:1x1"
    assert opts["trt_profile_opt_shapes"] == "input_ids:32x77"
    assert opts["trt_profile_max_shapes"] == "input_ids:64x248"
    assert opts["trt_engine_cache_path"] == opts["trt_timing_cache_path"] == str(profile.cache_dir)
    assert profile.cache_dir.parent == tmp_path
    other_graph = TrtProfile("input_ids", (1, 1), (32, 77), (64, 248), "cd" * 32, tmp_path)
    other_shapes = TrtProfile("input_ids", (1, 1), (32, 77), (128, 248), "ab" * 32, tmp_path)
    assert len({profile.cache_dir, other_graph.cache_dir, other_shapes.cache_dir}) == 3


def test_model_builds_profiles_from_its_manifest(tiny_model_dir, monkeypatch, tmp_path):
    from longclip.runtime import model as model_module

    seen = {}

    def fake_session(path, device, threads, trt):
        seen[path.name] = trt
        return None

    monkeypatch.setenv("LONGCLIP_CACHE", str(tmp_path))
    monkeypatch.setattr(model_module, "create_session", fake_session)
    model_module.LongCLIP(tiny_model_dir, device="tensorrt", max_batch=16)
    vision, text = seen["vision.onnx"], seen["text.onnx"]
    assert (vision.min_shape, vision.opt_shape, vision.max_shape) == ((1, 3, 32, 32), (16, 3, 32, 32), (16, 3, 32, 32))
    assert (text.min_shape, text.max_shape) == ((1, 1), (16, 248))
    assert vision.cache_dir.parent == tmp_path / "tensorrt"


def test_short_texts_never_run_at_a_long_texts_length(tiny_model_dir, monkeypatch):
    from longclip.runtime import model as model_module

    model = LongCLIP(tiny_model_dir, device="cpu")
    lengths = []
    real = model_module.run_one
    monkeypatch.setattr(model_module, "run_one", lambda s, name, batch: lengths.append(batch.shape) or real(s, name, batch))
    texts = ["a cat", "a dog on grass", "word " * 300, "a red car", "stripes " * 50]
    together = model.encode_texts(texts, batch_size=64)
    assert sorted(lengths) == [(1, 52), (1, 248), (3, 6)]  # three buckets, each at its own longest length
    alone = np.concatenate([model.encode_texts([t]) for t in texts])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
