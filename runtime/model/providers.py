"""The execution providers a session asks ONNX Runtime for, with their options: CUDA's, and TensorRT's shape profiles
and engine caches."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from .device import CPU, CUDA, TENSORRT


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
