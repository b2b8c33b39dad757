"""ONNX Runtime sessions on the requested device; loud when a requested provider does not run."""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import importlib.metadata
import logging
import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from .constants import DEVICES
from .errors import DeviceUnavailableError, ModelDirError
from .manifest import REEXPORT

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
_PRIMARY = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT}


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


@dataclass(frozen=True)
class TrtProfile:
    """TensorRT's shape range for one graph input, plus where its engines are cached.

    Engines are specific to the graph and to the shape range, so the cache folder is keyed by both.
    """

    input_name: str
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    graph_sha256: str
    cache_root: Path

    @property
    def cache_dir(self) -> Path:
        shapes = "_".join("x".join(map(str, s)) for s in (self.min_shape, self.opt_shape, self.max_shape))
        key = hashlib.sha256(f"{self.graph_sha256}:{shapes}:ort{ort.__version__}".encode()).hexdigest()[:24]
        return self.cache_root / key

    def options(self) -> dict[str, str]:
        def spec(shape: tuple[int, ...]) -> str:
            return f"{self.input_name}:{'x'.join(map(str, shape))}"

        cache = str(self.cache_dir)
        return {
            "trt_fp16_enable": "True",
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": cache,
            "trt_profile_min_shapes": spec(self.min_shape),
            "trt_profile_opt_shapes": spec(self.opt_shape),
            "trt_profile_max_shapes": spec(self.max_shape),
        }


def provider_chain(kind: str, device_id: int = 0, trt: TrtProfile | None = None
                   ) -> list[str | tuple[str, dict[str, str]]]:
    """Providers to ask ORT for, best first, always ending on CPU.

    CUDA runs fp32 as fp32: ONNX Runtime would otherwise round fp32 MatMul inputs to TF32 (a 10-bit mantissa), and
    an fp32 model is the exact reference. The fp16 graphs are the fast path on a GPU. Its memory arena grows by what
    is asked for, not to the next power of two: L/14-336 fp16 images at batch 128 hold 7.2 GB instead of 9.9 GB, at
    the same speed (H100).

    >>> provider_chain("cuda", 1)[0]
    ('CUDAExecutionProvider', {'device_id': '1', 'use_tf32': '0', 'arena_extend_strategy': 'kSameAsRequested'})
    """
    gpu_opts = {"device_id": str(device_id)}
    cuda = (CUDA, {**gpu_opts, "use_tf32": "0", "arena_extend_strategy": "kSameAsRequested"})
    if kind == "cpu":
        return [CPU]
    if kind == "cuda":
        return [cuda, CPU]
    trt_opts = {**gpu_opts, **(trt.options() if trt is not None else {})}
    return [(TENSORRT, trt_opts), cuda, CPU]


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


def wants_gpu(device: str | None) -> bool:
    """Whether ``device`` will run on a GPU: asked for by name, or ``auto`` with the GPU wheel and a GPU here.
    For sizing what runs beside the model; the session itself decides for real."""
    kind = parse_device(device)[0]
    if kind in ("cuda", "tensorrt"):
        return True
    return kind == "auto" and CUDA in ort.get_available_providers() and nvidia_devices() != []


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


def _options(threads: int | None, spin: bool = True) -> ort.SessionOptions:
    """``spin=False``: intra-op threads sleep between runs instead of spinning; where decode workers share the cores,
    a spinning thread takes the CPU they need (decode-bound runs measured 14 % faster without it, 2 cores)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


_GRAPH_ERRORS = tuple(getattr(_ort_state, name) for name in (
    "Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoModel", "NoSuchFile", "NotFound",
    "NotImplemented") if hasattr(_ort_state, name))
"""What ONNX Runtime raises for a graph file it cannot load (truncated, garbage, missing external data, unknown
ops); a device that does not initialize is caught after the session is built, by its providers."""


def _load_error(path: str | os.PathLike[str], exc: Exception) -> ModelDirError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    innermost = first.rsplit("[ONNXRuntimeError] : ", 1)[-1]  # ORT nests its errors: "... [ONNXRuntimeError] : 1 : ..."
    reason = re.sub(r"^\d+ : (\w+) : (Load model from .* failed:)?", r"\1: ", innermost)
    return ModelDirError(f"cannot load graph {os.fspath(path)!r} ({reason}): the file is damaged or incomplete, or "
                         f"not for onnxruntime {ort.__version__}; {REEXPORT}")


def create_session(
    path: str | os.PathLike[str], device: str | None = None, threads: int | None = None,
    trt: TrtProfile | None = None, spin: bool = True,
) -> ort.InferenceSession:
    """An ``InferenceSession`` for ``path``.

    ``device=None``/``"auto"`` takes CUDA when its provider really initializes, else the CPU (at once, and quietly,
    where the GPU wheel finds no GPU). TensorRT is only used when asked for: its first run builds engines for
    minutes. An explicit ``"cuda"`` or ``"tensorrt"`` that cannot run raises :class:`DeviceUnavailableError`
    saying why, instead of quietly running on the CPU; a graph that ONNX Runtime cannot load raises
    :class:`ModelDirError`.
    """
    kind, device_id = parse_device(device)
    available = ort.get_available_providers()
    no_gpu_here = nvidia_devices() == []
    gpu = CUDA in available and not no_gpu_here
    wanted = ("cuda" if gpu else "cpu") if kind == "auto" else kind
    primary = _PRIMARY[wanted]
    if primary not in available:
        raise not_offered(device, primary, available)
    if wanted != "cpu" and no_gpu_here:
        raise no_gpu(device, primary)
    if wanted != "cpu":
        load_gpu_libraries()
    chain = provider_chain(wanted, device_id, trt)
    if trt is not None and wanted == "tensorrt":
        trt.cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        session = ort.InferenceSession(str(path), sess_options=_options(threads, spin), providers=chain)
    except _GRAPH_ERRORS as exc:
        raise _load_error(path, exc) from None
    active = session.get_providers()
    if active[0] != primary:
        if kind != "auto":
            raise not_initialized(device, primary, device_id)
        log.warning("%s did not initialize; running %s on %s", primary, os.fspath(path), active[0])
    log.debug("session %s on %s", os.path.basename(os.fspath(path)), session.get_providers()[0])
    return session


@dataclass(frozen=True)
class TensorSpec:
    """A declared graph input or output: name, numpy dtype, and dims (a name such as ``"N"``: a dynamic axis)."""

    name: str
    dtype: str
    dims: tuple[int | str, ...]

    def __str__(self) -> str:
        return f"{self.name!r} {self.dtype} ({', '.join(map(str, self.dims))})"


_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
           "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8"}


def _found(arg: ort.NodeArg) -> TensorSpec:
    dims = tuple(d if isinstance(d, (int, str)) else "?" for d in arg.shape)  # None: a dim ONNX leaves unnamed
    return TensorSpec(arg.name, _DTYPES.get(arg.type, arg.type), dims)


def _matches(found: list[TensorSpec], want: TensorSpec) -> bool:
    if len(found) != 1:
        return False
    (got,) = found
    if (got.name, got.dtype, len(got.dims)) != (want.name, want.dtype, len(want.dims)):
        return False
    return all(isinstance(g, str) or isinstance(w, str) or g == w for g, w in zip(got.dims, want.dims))


def check_io(session: ort.InferenceSession, path: str | os.PathLike[str], want_input: TensorSpec,
             want_output: TensorSpec) -> None:
    """:class:`ModelDirError` unless ``session`` has exactly one input and one output as declared: names, dtypes,
    ranks, and each size that both the graph and the declaration fix."""
    for kind, args, want in (("input", session.get_inputs(), want_input),
                             ("output", session.get_outputs(), want_output)):
        found = [_found(arg) for arg in args]
        if not _matches(found, want):
            raise ModelDirError(f"graph {os.fspath(path)!r} has {kind} {', '.join(map(str, found)) or 'none'}, its "
                                f"manifest declares {want}: graph and manifest disagree (graphs swapped, or another "
                                f"model's); {REEXPORT}")


def run_one(session: ort.InferenceSession, input_name: str, array: np.ndarray,
            run_options: ort.RunOptions | None = None) -> np.ndarray:
    """``session``'s single output for one input. On CUDA the output is bound with IO binding so ORT copies it
    to the host once, synchronously, without an intermediate allocation on the default stream. ``run_options``:
    setting its ``terminate`` from another thread stops the run (Ctrl-C during a long batch)."""
    if session.get_providers()[0] != CUDA:
        return session.run(None, {input_name: array}, run_options)[0]
    binding = session.io_binding()
    binding.bind_cpu_input(input_name, array)
    binding.bind_output(session.get_outputs()[0].name, "cuda")
    session.run_with_iobinding(binding, run_options)
    return binding.copy_outputs_to_cpu()[0]
