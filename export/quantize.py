"""Row-invariant int8: every weight GEMM quantized with one activation scale per row (per token), never per batch.

ONNX Runtime's dynamic quantization (``DynamicQuantizeLinear``, ``DynamicQuantizeMatMul``, ``QAttention``) computes
one activation scale over the whole input tensor: a row's int8 result then depends on every other row of its batch.
Here each row ``x`` of a GEMM's input gets its own symmetric scale ``max|x| / 127`` from standard ops, so a row's
result is a function of that row alone, whatever batch, padding or neighbours it runs with:

    scale = max(ReduceMax(|x|, last axis), tiny) / 127          # (..., 1)
    xq    = Cast<int8>(Round(x / scale))                          # (..., K) in [-127, 127]
    y     = MatMulIntegerToFloat(xq, wq, scale, w_scale) [+ bias] # or MatMulInteger -> Cast -> Mul -> Mul

Weights are int8 per output channel (symmetric; 7-bit with uint8 activations, see :func:`_weight`). The export
uses ``fused-u8``. Attention (ONNX Runtime's fused ``Attention``, its QKV
projection included) stays fp32. ``MatMulIntegerToFloat`` documents a scalar ``a_scale``; it is given a ``(..., 1)``
one here, which its CPU kernel broadcasts row by row: ``tests/export/test_quantize.py`` pins that against the
unfused standard-op form.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROWWISE_KINDS = ("fused", "fused-u8", "standard")
"""``fused``: ``MatMulIntegerToFloat`` (contrib op, scales applied in the GEMM's output pass); ``standard``:
``MatMulInteger`` -> ``Cast`` -> ``Mul`` -> ``Mul``, plain ONNX; ``fused-u8``: ``MatMulIntegerToFloat`` on the same values
shifted to uint8 with a (scalar) zero point of 128, for ONNX Runtime's u8 x s8 kernels."""

ACTIVATION_SCALES = "per-row"
"""What ``manifest.json`` records as ``activation_scales`` for these graphs."""

_TINY = np.float32(1e-12)  # an all-zero row quantizes to zeros instead of dividing by zero


def _weight(init: onnx.TensorProto, trans_b: bool, qmax: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """``(K, N)`` float weight -> ``(K, N) int8`` in ``[-qmax, qmax]`` and its ``(N,) float32`` per-column scale.
    ``qmax=63`` (7 bits) for uint8 activations: AVX2 without VNNI adds pairs of u8 x s8 products in int16, which
    255 * 127 * 2 overflows (measured: wrong by up to 13 %); 255 * 63 * 2 does not."""
    w = numpy_helper.to_array(init).astype(np.float32)
    w = w.T if trans_b else w
    scale = np.maximum(np.abs(w).max(axis=0), _TINY) / np.float32(qmax)
    q = np.clip(np.rint(w / scale), -qmax, qmax).astype(np.int8)
    return q, scale.astype(np.float32)


def _gemm_ok(node: onnx.NodeProto) -> bool:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0


class _Rewriter:
    def __init__(self, model: onnx.ModelProto, kind: str, qkv: bool):
        self.model, self.kind, self.qkv = model, kind, qkv
        self.qmax = 63 if kind == "fused-u8" else 127
        self.inits = {i.name: i for i in model.graph.initializer}
        self.new_inits: list[onnx.TensorProto] = []
        self.count = 0
        self.const("rowwise.axes", np.array([-1], dtype=np.int64))
        self.const("rowwise.tiny", np.array(_TINY, dtype=np.float32))
        self.const("rowwise.qmax", np.array(127, dtype=np.float32))
        self.const("rowwise.shift", np.array(128, dtype=np.float32))
        self.const("rowwise.zp", np.array(128, dtype=np.uint8))

    def const(self, name: str, value: np.ndarray) -> str:
        self.new_inits.append(numpy_helper.from_array(value, name))
        return name

    def weight_of(self, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
        """The quantized weight of a MatMul/Gemm whose B is a 2-D float initializer; None for any other node."""
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in self.inits:
            return None
        init = self.inits[node.input[1]]
        if len(init.dims) != 2 or init.data_type != TensorProto.FLOAT:
            return None
        if node.op_type == "Gemm" and not _gemm_ok(node):
            return None
        trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
        return _weight(init, trans_b, self.qmax)

    def attention_weight(self, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
        """The quantized QKV weight of an ``Attention`` node that :meth:`split_attention` can take apart."""
        attrs = {a.name for a in node.attribute}
        if (node.op_type != "Attention" or not self.qkv or len(node.input) != 3 or node.input[1] not in self.inits
                or not attrs <= {"num_heads", "unidirectional"}):
            return None
        init = self.inits[node.input[1]]
        return _weight(init, False, self.qmax) if len(init.dims) == 2 and init.data_type == TensorProto.FLOAT else None

    def split_attention(self, node: onnx.NodeProto, wq: np.ndarray, w_scale: np.ndarray) -> list[onnx.NodeProto]:
        """``Attention(x, W, b)`` -> row-wise int8 ``x @ W`` -> ``MultiHeadAttention(q, k, v, b)``, its core fp32."""
        n = f"rowwise{self.count}"
        qkv = helper.make_node("MatMul", [node.input[0], node.input[1]], [f"{n}.qkv"])
        width = wq.shape[1] // 3
        split = self.const(f"{n}.split", np.array([width] * 3, dtype=np.int64))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        return [
            *self.replace(qkv, wq, w_scale),
            helper.make_node("Split", [f"{n}.qkv", split], [f"{n}.q", f"{n}.k", f"{n}.v"], axis=-1),
            helper.make_node("MultiHeadAttention", [f"{n}.q", f"{n}.k", f"{n}.v", node.input[2]], [node.output[0]],
                             domain="com.microsoft", **attrs),
        ]

    def replace(self, node: onnx.NodeProto, wq: np.ndarray, w_scale: np.ndarray) -> list[onnx.NodeProto]:
        n = f"rowwise{self.count}"
        self.count += 1
        x, y = node.input[0], node.output[0]
        wq_name, ws_name = self.const(f"{n}.w", wq), self.const(f"{n}.w_scale", w_scale)
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        out = f"{n}.y" if bias else y
        nodes = [
            helper.make_node("Abs", [x], [f"{n}.abs"]),
            helper.make_node("ReduceMax", [f"{n}.abs", "rowwise.axes"], [f"{n}.max"], keepdims=1),
            helper.make_node("Max", [f"{n}.max", "rowwise.tiny"], [f"{n}.max_"]),
            helper.make_node("Div", [f"{n}.max_", "rowwise.qmax"], [f"{n}.scale"]),
            helper.make_node("Div", [x, f"{n}.scale"], [f"{n}.xs"]),
            helper.make_node("Round", [f"{n}.xs"], [f"{n}.xr"]),
            helper.make_node("Cast", [f"{n}.xr"], [f"{n}.xq"], to=TensorProto.INT8),
        ]
        if self.kind == "fused":
            nodes.append(helper.make_node("MatMulIntegerToFloat", [f"{n}.xq", wq_name, f"{n}.scale", ws_name],
                                          [out], domain="com.microsoft"))
        elif self.kind == "fused-u8":  # the same int8 values shifted by 128: MLAS's u8 x s8 kernel, zero point 128
            nodes[-1] = helper.make_node("Add", [f"{n}.xr", "rowwise.shift"], [f"{n}.xu"])
            nodes += [helper.make_node("Cast", [f"{n}.xu"], [f"{n}.xq"], to=TensorProto.UINT8),
                      helper.make_node("MatMulIntegerToFloat", [f"{n}.xq", wq_name, f"{n}.scale", ws_name,
                                                                "rowwise.zp"], [out], domain="com.microsoft")]
        else:
            nodes += [
                helper.make_node("MatMulInteger", [f"{n}.xq", wq_name], [f"{n}.acc"]),
                helper.make_node("Cast", [f"{n}.acc"], [f"{n}.accf"], to=TensorProto.FLOAT),
                helper.make_node("Mul", [f"{n}.accf", f"{n}.scale"], [f"{n}.rows"]),
                helper.make_node("Mul", [f"{n}.rows", ws_name], [out]),
            ]
        if bias:
            nodes.append(helper.make_node("Add", [out, bias], [y]))
        return nodes

    def run(self) -> int:
        graph = self.model.graph
        nodes: list[onnx.NodeProto] = []
        replaced: set[str] = set()
        for node in graph.node:
            if (attention := self.attention_weight(node)) is not None:
                replaced.add(node.input[1])
                nodes.extend(self.split_attention(node, *attention))
            elif (weight := self.weight_of(node)) is not None:
                replaced.add(node.input[1])
                nodes.extend(self.replace(node, *weight))
            else:
                nodes.append(node)
        still_used = {name for node in nodes for name in node.input}
        kept = [i for i in graph.initializer if i.name not in replaced or i.name in still_used]
        del graph.node[:]
        graph.node.extend(nodes)
        del graph.initializer[:]
        graph.initializer.extend([*kept, *self.new_inits])
        if not any(o.domain == "com.microsoft" for o in self.model.opset_import):
            self.model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        return self.count


def quantize_rowwise(src: Path, dst: Path, kind: str = "fused", qkv: bool = False) -> int:
    """Write ``src``'s graph to ``dst`` with every weight GEMM quantized per row; returns how many were.
    ``qkv``: each fused ``Attention``'s QKV projection too (split off into a row-wise GEMM before a fp32
    ``MultiHeadAttention``).

    >>> quantize_rowwise(Path("text.onnx"), Path("text.int8.onnx"))    # doctest: +SKIP
    13
    """
    if kind not in ROWWISE_KINDS:
        raise ValueError(f"row-wise int8 kind {kind!r}: use one of {', '.join(ROWWISE_KINDS)}")
    model = onnx.load(str(src))
    count = _Rewriter(model, kind, qkv).run()
    onnx.save(model, str(dst))
    return count
