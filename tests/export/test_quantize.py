"""Row-wise int8 GEMMs on one-node graphs: each row quantized by its own scale, exactly as written down, whatever
its neighbours; and MatMulIntegerToFloat's undocumented (M, 1) a_scale pinned against that arithmetic."""

import numpy as np
import pytest

from conftest import needs_torch

pytestmark = needs_torch  # onnx comes with the export extra
K, N = 48, 24


def _graph(path, op: str = "MatMul"):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((K, N)).astype(np.float32)
    inits = [numpy_helper.from_array(w if op == "MatMul" else w.T.copy(), "w")]
    inputs = ["x", "w"]
    attrs = {}
    if op == "Gemm":
        inits.append(numpy_helper.from_array(rng.standard_normal(N).astype(np.float32), "b"))
        inputs.append("b")
        attrs = {"transB": 1}
    graph = helper.make_graph([helper.make_node(op, inputs, ["y"], **attrs)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", N])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return w, (numpy_helper.to_array(inits[1]) if op == "Gemm" else 0)


def _session(path):
    from longclip.runtime.model.session import create_session

    session = create_session(path, "cpu")
    return lambda x: session.run(None, {"x": x})[0]


def _rows(seed: int = 1) -> np.ndarray:
    """Rows of very different magnitudes (1e-3 .. 1e3) and an all-zero row."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((7, K)).astype(np.float32)
    x *= np.array([[1e-3], [1], [30], [1e3], [0.5], [0], [2]], dtype=np.float32)
    return x


def _by_hand(x: np.ndarray, w: np.ndarray, qmax: int = 127) -> np.ndarray:
    """The row-wise arithmetic in numpy, exact integers: what quantize.py's docstring says the graph computes."""
    scale = np.maximum(np.abs(x).max(axis=1, keepdims=True), np.float32(1e-12)) / np.float32(127)
    xq = np.rint(x / scale).astype(np.int64)
    w_scale = np.maximum(np.abs(w).max(axis=0), np.float32(1e-12)) / np.float32(qmax)
    wq = np.clip(np.rint(w / w_scale), -qmax, qmax).astype(np.int64)
    return (xq @ wq) * scale.astype(np.float64) * w_scale.astype(np.float64)


@pytest.mark.parametrize("kind", ["fused", "fused-u8", "standard"])
@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_each_row_is_quantized_by_its_own_scale(tmp_path, kind, op):
    """A kernel that read a_scale[0] for every row (the documented scalar contract) is off by up to 1e6 here."""
    from longclip.export.quantize import quantize_rowwise

    w, bias = _graph(tmp_path / "f.onnx", op)
    assert quantize_rowwise(tmp_path / "f.onnx", tmp_path / "q.onnx", kind) == 1
    x = _rows()
    got = _session(tmp_path / "q.onnx")(x)
    want = _by_hand(x, w, 63 if kind == "fused-u8" else 127) + bias  # u8: 7-bit weights (no int16 overflow)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6 * np.abs(want).max(axis=1, keepdims=True).max())
    assert np.isfinite(got).all() and (got[5] == (bias if op == "Gemm" else 0)).all()  # the zero row: no NaN


@pytest.mark.parametrize("kind", ["fused", "fused-u8", "standard"])
def test_a_row_alone_equals_the_row_among_others_bit_for_bit(tmp_path, kind):
    from longclip.export.quantize import quantize_rowwise

    _graph(tmp_path / "f.onnx")
    quantize_rowwise(tmp_path / "f.onnx", tmp_path / "q.onnx", kind)
    run, x = _session(tmp_path / "q.onnx"), _rows()
    together = run(x)
    for i in range(len(x)):
        np.testing.assert_array_equal(run(x[i : i + 1]), together[i : i + 1])
    np.testing.assert_array_equal(run(x[::-1].copy())[::-1], together)
    np.testing.assert_array_equal(run(np.concatenate([x, x * 7])), np.concatenate([together, run(x * 7)]))


def test_an_outlier_row_costs_its_neighbours_nothing(tmp_path):
    """Seeded activation outliers (a row 1000x the others): per-tensor scales (ONNX Runtime's dynamic quantization,
    the int8 export before) crush the normal rows; per-row scales keep them within 2 % (K = 48: 8-bit rounding alone)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from longclip.export.quantize import quantize_rowwise

    w, _ = _graph(tmp_path / "f.onnx")
    quantize_rowwise(tmp_path / "f.onnx", tmp_path / "rows.onnx")
    quantize_dynamic(tmp_path / "f.onnx", tmp_path / "tensor.onnx", weight_type=QuantType.QInt8, per_channel=True)
    x = np.random.default_rng(2).standard_normal((6, K)).astype(np.float32)
    x[3] *= 1000
    exact = x @ w
    normal = [0, 1, 2, 4, 5]

    def error(path):
        got = _session(path)(x)[normal]
        return float(np.abs(got - exact[normal]).max() / np.abs(exact[normal]).max())

    assert error(tmp_path / "rows.onnx") < 0.02
    assert error(tmp_path / "tensor.onnx") > 0.3
