"""fp16 and int8 variants of the fp32 graphs, each with its own accuracy gate (see ``parity.TOLERANCES``).

- ``int8`` (CPU): exported with attention fused into ONNX Runtime's ``com.microsoft.Attention`` (which stays
  fp32), then every weight MatMul/Gemm quantized: weights int8 per output channel, activations int8 with one
  scale per row (token), so a row's result never depends on its batch (:mod:`.quantize`). The patch Conv stays
  fp32 (about 1% of the FLOPs).
- ``fp16`` (GPU): every float op in half precision except LayerNormalization (and Softmax, where attention is
  explicit), which stays fp32; the graphs keep fp32 inputs and outputs, and the EOT argmax runs on the int64
  ids as before. Attention is fused by default too: ONNX Runtime's CUDA kernels for it (flash or
  memory-efficient attention) accumulate the softmax in fp32 and never write the score matrix out.

Graphs with fused attention need ONNX Runtime (contrib ops); ``attention="explicit"`` keeps plain ONNX (for
TensorRT, which has no kernel for ``com.microsoft.Attention``). fp32 graphs are plain ONNX by default.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from longclip.runtime.contract.constants import ATTENTIONS, PRECISIONS

log = logging.getLogger(__name__)

ATTENTION = ("auto", *ATTENTIONS)
FP32_OPS = ["LayerNormalization", "Softmax"]


def to_int8(path: Path) -> None:
    """Quantize ``path`` in place, one activation scale per row (:mod:`.quantize`): row-invariant int8 (int8
    graphs are a quarter of the size: always one file)."""
    from .quantize import quantize_rowwise

    tmp = path.with_name(f"{path.stem}.int8.onnx")
    count = quantize_rowwise(path, tmp, "fused-u8")  # int8 activations missed the fast kernels: 2.9x slower (B/16)
    log.info("%s: %d weight GEMMs quantized per row", path.name, count)
    path.with_name(f"{path.name}.data").unlink(missing_ok=True)
    tmp.replace(path)


def to_fp16(path: Path, external_data: bool) -> None:
    """Convert ``path`` in place to fp16 (fp32 I/O, LayerNorm and Softmax kept fp32)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True, op_block_list=FP32_OPS)
    path.with_name(f"{path.name}.data").unlink(missing_ok=True)
    onnx.save(model, str(path), save_as_external_data=external_data, location=f"{path.name}.data")


def convert(path: Path, precision: str, external_data: bool) -> None:
    """Rewrite the fp32 graph ``path`` in place as ``precision``; its file name is the public contract."""
    log.info("converting %s to %s", path.name, precision)
    if precision == "int8":
        to_int8(path)
    elif precision == "fp16":
        to_fp16(path, external_data)
    else:
        raise ValueError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
