"""ONNX Runtime sessions on the requested device (:mod:`.device` decides which; :mod:`.providers` with what
options); loud when a requested provider does not run."""

from __future__ import annotations

import logging
import os
import re

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from ..contract.errors import ModelDirError
from ..contract.manifest import REEXPORT
from . import device as device_policy
from .device import CUDA, PROVIDER_OF, no_gpu, not_initialized, not_offered, parse_device
from .providers import TrtProfile, provider_chain
from .verify import check_external_data

log = logging.getLogger(__name__)

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
    trt: TrtProfile | None = None, spin: bool = True, model_dir: str | os.PathLike[str] | None = None,
) -> ort.InferenceSession:
    """An ``InferenceSession`` for ``path``.

    ``device=None``/``"auto"`` takes CUDA when its provider really initializes, else the CPU (at once, and quietly,
    where the GPU wheel finds no GPU). TensorRT is only used when asked for: its first run builds engines for
    minutes. An explicit ``"cuda"`` or ``"tensorrt"`` that cannot run raises :class:`DeviceUnavailableError`
    saying why, instead of quietly running on the CPU; a graph that ONNX Runtime cannot load raises
    :class:`ModelDirError`, and so does one whose tensors keep data outside ``model_dir`` (default: the graph's
    folder), checked before ONNX Runtime reads the graph (:func:`.verify.check_external_data`).
    """
    kind, device_id = parse_device(device)
    available = ort.get_available_providers()
    no_gpu_here = device_policy.nvidia_devices() == []
    gpu = CUDA in available and not no_gpu_here
    wanted = ("cuda" if gpu else "cpu") if kind == "auto" else kind
    primary = PROVIDER_OF[wanted]
    if primary not in available:
        raise not_offered(device, primary, available)
    if wanted != "cpu" and no_gpu_here:
        raise no_gpu(device, primary)
    if wanted != "cpu":
        device_policy.load_gpu_libraries()
    chain = provider_chain(wanted, device_id, trt)
    if trt is not None and wanted == "tensorrt":
        trt.cache_dir.mkdir(parents=True, exist_ok=True)
    check_external_data(path, model_dir)  # before ONNX Runtime opens it: old versions follow any location
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
