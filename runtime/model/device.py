"""The device policy, one home: what ``device`` means (``auto``, ``cpu``, ``cuda[:N]``, ``tensorrt[:N]``), whether a
run is on a GPU, the CUDA libraries pip installed, and why a GPU provider does not run (install diagnostics)."""

from __future__ import annotations

import contextlib
import functools
import glob
import importlib.metadata
import logging
import os
import sys
import threading

import onnxruntime as ort

from ..contract.constants import DEVICES
from ..contract.errors import DeviceUnavailableError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"


CUDA = "CUDAExecutionProvider"


TENSORRT = "TensorrtExecutionProvider"


PROVIDER_OF = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT}


def parse_device(device: str | None) -> tuple[str, int]:
    """``None``/``"auto"``/``"cpu"``/``"cuda"``/``"cuda:1"``/``"tensorrt"`` -> ``(kind, device_id)``.

    >>> parse_device("cuda:1")
    ('cuda', 1)
    """
    text = (device or "auto").strip().lower()
    kind, _, index = text.partition(":")
    if kind not in DEVICES or (index and not index.isdigit()) or (index and kind in ("auto", "cpu")):
        raise DeviceUnavailableError(f"unknown device {device!r}: use one of auto, cpu, cuda[:N], tensorrt[:N]")
    return kind, int(index or 0)


_GPU_LIBRARIES = threading.Lock()


def load_gpu_libraries() -> None:
    """Load the CUDA and cuDNN libraries that pip installed (``onnxruntime-gpu[cuda,cudnn]``, or a CUDA torch's),
    which ONNX Runtime does not find by itself. Runs once per process, only when a GPU provider is wanted;
    libraries from the system are found without it, and anything it prints goes to stderr.

    ``LongCLIP`` builds its two sessions on two threads: the lock lets one of them load while the other waits, so
    the process-wide ``sys.stdout`` swap below is never interleaved (two of them could leave stdout on stderr)."""
    with _GPU_LIBRARIES:
        _preload_once()


@functools.cache
def _preload_once() -> None:
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime >= 1.21
    if preload is None:
        return
    try:
        with contextlib.redirect_stdout(sys.stderr):
            preload()
    except Exception as exc:  # noqa: BLE001 - best effort: the session's own check below is the real test
        log.debug("onnxruntime.preload_dlls() failed: %s", exc)


CPU_FIX = "pass --device cpu (Python: device='cpu')"
"""The way out of every device error, in both interfaces' spelling: the session does not know which is in use."""


def _installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def ort_wheel() -> str:
    """The installed ONNX Runtime distribution and version, e.g. ``"the CPU wheel (onnxruntime 1.32.0)"``."""
    for name, what in (("onnxruntime-gpu", "the GPU wheel"), ("onnxruntime", "the CPU wheel")):
        if version := _installed(name):
            return f"{what} ({name} {version})"
    return f"onnxruntime {ort.__version__}"


def nvidia_devices() -> list[str] | None:
    """``/dev/nvidia0``, ``/dev/nvidia1``, ...: the GPUs an NVIDIA driver exposes. None where that cannot be told
    this way: off Linux, and under WSL, whose GPUs appear as ``/dev/dxg``."""
    if not sys.platform.startswith("linux") or os.path.exists("/dev/dxg"):
        return None
    return sorted(glob.glob("/dev/nvidia[0-9]*"), key=lambda p: int(p.removeprefix("/dev/nvidia")))


GPU_KINDS = ("cuda", "tensorrt")


def wants_gpu(device: str | None, gpus_here: bool | None = None) -> bool:
    """Whether ``device`` will run on a GPU: asked for by name, or ``auto`` where there are GPUs (``gpus_here``:
    e.g. a Ray cluster's resources; default: the GPU wheel and a GPU on this machine). The one place that decides
    it before a session exists, for sizing what runs beside the model; the session itself decides for real.

    >>> wants_gpu("cuda:1"), wants_gpu("cpu"), wants_gpu("auto", gpus_here=True), wants_gpu(None, gpus_here=False)
    (True, False, True, False)
    """
    kind = parse_device(device)[0]
    if kind in GPU_KINDS:
        return True
    if kind != "auto":
        return False
    if gpus_here is None:
        gpus_here = CUDA in ort.get_available_providers() and nvidia_devices() != []
    return gpus_here


def on_gpu(provider: str) -> bool:
    """Whether a session's ``provider`` (``LongCLIP.provider``) runs on a GPU, once it exists.

    >>> on_gpu(CPU), on_gpu(CUDA)
    (False, True)
    """
    return provider != CPU


def no_gpu(device: str | None, provider: str) -> DeviceUnavailableError:
    """The GPU wheel on a machine without an NVIDIA GPU or driver: said before ONNX Runtime tries (and prints)."""
    return DeviceUnavailableError(f"device {device!r} needs a GPU for {provider} of {ort_wheel()}, and this "
                                  "machine has no NVIDIA GPU or driver (no /dev/nvidia*): run on a GPU machine, or "
                                  f"{CPU_FIX}")


def not_offered(device: str | None, provider: str, available: list[str]) -> DeviceUnavailableError:
    """``provider`` is not in this ONNX Runtime build at all: the CPU wheel (or another build) is installed."""
    if CUDA not in available and _installed("onnxruntime-gpu") and _installed("onnxruntime"):
        fix = ("onnxruntime and onnxruntime-gpu are both installed and the CPU wheel's module won: pip uninstall -y "
               "onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu (README, 'GPU')")
    elif CUDA not in available:
        fix = "pip uninstall -y onnxruntime && pip install onnxruntime-gpu (README, 'GPU')"
    else:
        fix = "install an onnxruntime build that has it (README, 'GPU')"
    return DeviceUnavailableError(f"device {device!r} needs {provider}, which {ort_wheel()} does not "
                                  f"have (it offers {', '.join(available)}): {fix}, or {CPU_FIX}")


def not_initialized(device: str | None, provider: str, device_id: int) -> DeviceUnavailableError:
    """``provider`` is in this build and a GPU is here (or cannot be told), but it did not start: no such GPU, or
    missing CUDA / cuDNN libraries."""
    gpus = nvidia_devices()
    libraries = ("onnxruntime-gpu 1.31+ needs CUDA 13 and cuDNN 9, from the system or pip install "
                 "'onnxruntime-gpu[cuda,cudnn]' (README, 'GPU')")
    if gpus and device_id >= len(gpus):
        why = f"there is no GPU {device_id} here ({len(gpus)} found: {', '.join(gpus)}): pass another index"
    elif gpus:
        why = f"the GPU is there, so CUDA or cuDNN libraries are missing: {libraries}"
    else:  # cannot tell from here (not Linux, WSL)
        why = f"no GPU is visible, or CUDA or cuDNN libraries are missing (nvidia-smi tells which): {libraries}"
    return DeviceUnavailableError(f"device {device!r}: {provider} of {ort_wheel()} did not initialize: {why}, "
                                  f"or {CPU_FIX}")
