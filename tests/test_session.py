"""Sessions on the requested device: loud when a requested provider does not run, never a silent CPU fallback."""

import sys
import threading
import time

import pytest

from longclip.runtime import DeviceUnavailableError
from longclip.runtime.model.session import create_session, parse_device


@pytest.mark.parametrize("device", ["cuda", "tensorrt", "cuda:1"])
def test_explicit_gpu_without_gpu_raises(tiny_model_dir, device):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a GPU onnxruntime is installed")
    with pytest.raises(DeviceUnavailableError) as caught:
        create_session(tiny_model_dir / "vision.onnx", device)
    message = str(caught.value)
    assert message.startswith(f"device {device!r} needs ") and " which the CPU wheel (onnxruntime " in message, message
    assert message.endswith("pip install onnxruntime-gpu (README, 'GPU'), or pass --device cpu (Python: "
                            "device='cpu')"), message


def test_gpu_libraries_load_once_quietly_and_never_for_cpu(tiny_model_dir, monkeypatch, capsys):
    import onnxruntime as ort

    from longclip.runtime.model import device as policy

    calls = []

    def preload():
        calls.append(print("loading CUDA"))
        time.sleep(0.05)  # long enough for a second thread to arrive while the first is loading

    monkeypatch.setattr(ort, "preload_dlls", preload, raising=False)
    policy._preload_once.cache_clear()
    create_session(tiny_model_dir / "vision.onnx", "cpu")
    assert calls == []
    stdout = sys.stdout
    threads = [threading.Thread(target=policy.load_gpu_libraries) for _ in range(2)]  # as LongCLIP's two sessions
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    policy.load_gpu_libraries()
    out = capsys.readouterr()
    assert calls == [None] and out.out == "" and "loading CUDA" in out.err  # stdout stays the data's
    assert sys.stdout is stdout
    policy._preload_once.cache_clear()


def test_parse_device():
    assert parse_device(None) == ("auto", 0)
    assert parse_device("CUDA:2") == ("cuda", 2)
    for bad in ("gpu", "cuda:x", "cpu:1"):
        with pytest.raises(DeviceUnavailableError, match="unknown device"):
            parse_device(bad)


def test_tensorrt_options_profiles_and_cache_key(tmp_path):
    from longclip.runtime.model.providers import TrtProfile, provider_chain

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


class _FakeSession:
    """An InferenceSession that, like ORT after a failed GPU provider, runs on the CPU whatever was asked."""

    def __init__(self, path, sess_options=None, providers=None):
        self.asked = providers

    def get_providers(self):
        return ["CPUExecutionProvider"]


def _gpu_wheel(monkeypatch, gpus):
    """As if onnxruntime-gpu were installed, on a machine whose driver shows ``gpus``; every session runs on the
    CPU, as ORT's do after a GPU provider fails."""
    import onnxruntime as ort

    from longclip.runtime.model import device as policy

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                                 "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", _FakeSession)
    monkeypatch.setattr(policy, "load_gpu_libraries", lambda: None)
    monkeypatch.setattr(policy, "nvidia_devices", lambda: gpus)


@pytest.mark.parametrize("device", ["cuda", "tensorrt:1"])
def test_the_gpu_wheel_without_a_gpu_says_so_before_onnxruntime_tries(tiny_model_dir, monkeypatch, device):
    import onnxruntime as ort

    _gpu_wheel(monkeypatch, [])
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: pytest.fail("ONNX Runtime must not try (and print)"))
    with pytest.raises(DeviceUnavailableError) as caught:
        create_session(tiny_model_dir / "vision.onnx", device)
    assert str(caught.value).startswith(f"device {device!r} needs a GPU for ")
    assert str(caught.value).endswith("and this machine has no NVIDIA GPU or driver (no /dev/nvidia*): run on a GPU "
                                      "machine, or pass --device cpu (Python: device='cpu')")


def test_auto_with_the_gpu_wheel_and_no_gpu_takes_the_cpu_at_once(tiny_model_dir, monkeypatch, caplog):
    _gpu_wheel(monkeypatch, [])
    assert create_session(tiny_model_dir / "vision.onnx", None).asked == ["CPUExecutionProvider"]
    assert "did not initialize" not in caplog.text


@pytest.mark.parametrize(("gpus", "device", "why"), [
    (["/dev/nvidia0"], "cuda:1", "there is no GPU 1 here (1 found: /dev/nvidia0): pass another index"),
    (["/dev/nvidia0"], "cuda", "the GPU is there, so CUDA or cuDNN libraries are missing: onnxruntime-gpu 1.31+ "
     "needs CUDA 13 and cuDNN 9"),
    (["/dev/nvidia0", "/dev/nvidia1"], "tensorrt:1", "the GPU is there, so CUDA or cuDNN libraries are missing"),
    (None, "cuda", "no GPU is visible, or CUDA or cuDNN libraries are missing (nvidia-smi tells which)"),  # WSL
])
def test_explicit_gpu_that_does_not_initialize_says_why(tiny_model_dir, monkeypatch, gpus, device, why):
    """The GPU wheel's provider is there and so is a GPU, but it does not start: no such GPU, or no libraries."""
    _gpu_wheel(monkeypatch, gpus)
    with pytest.raises(DeviceUnavailableError) as caught:
        create_session(tiny_model_dir / "vision.onnx", device)
    message = str(caught.value)
    assert message.startswith(f"device {device!r}: ") and " did not initialize: " in message, message
    assert why in message and message.endswith(", or pass --device cpu (Python: device='cpu')"), message


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "tensorrt"])
def test_explicit_gpu_that_does_not_initialize_raises(tiny_model_dir, monkeypatch, device):
    import onnxruntime as ort

    from longclip.runtime.model import device as policy

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                                 "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", _FakeSession)
    monkeypatch.setattr(policy, "load_gpu_libraries", lambda: None)
    monkeypatch.setattr(policy, "nvidia_devices", lambda: ["/dev/nvidia0", "/dev/nvidia1"])
    with pytest.raises(DeviceUnavailableError, match="did not initialize"):
        create_session(tiny_model_dir / "vision.onnx", device)


def test_auto_falls_back_to_the_cpu_with_a_warning(tiny_model_dir, monkeypatch, caplog):
    import onnxruntime as ort

    from longclip.runtime.model import device as policy

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", _FakeSession)
    monkeypatch.setattr(policy, "load_gpu_libraries", lambda: None)
    monkeypatch.setattr(policy, "nvidia_devices", lambda: ["/dev/nvidia0"])
    made = create_session(tiny_model_dir / "vision.onnx", None)
    assert made.asked[0][0] == "CUDAExecutionProvider" and made.get_providers() == ["CPUExecutionProvider"]
    assert "did not initialize" in caplog.text


def test_auto_on_a_cpu_onnxruntime_runs_on_the_cpu(tiny_model_dir):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a GPU onnxruntime is installed")
    assert create_session(tiny_model_dir / "vision.onnx", None).get_providers() == ["CPUExecutionProvider"]
