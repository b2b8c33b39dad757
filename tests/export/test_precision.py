"""--precision int8 / fp16: each passes its own accuracy gate, and the graphs are what they claim."""

import json

import numpy as np
import pytest

from conftest import GOLDENS, needs_torch
from longclip.runtime import LongCLIP
from longclip.runtime.contract.errors import ParityError

pytestmark = needs_torch
IMAGES = [GOLDENS / "images" / n for n in ("rgb_333x517.png", "small_41x97.jpg", "gray_64x50.png")]
TEXTS = ["a photo of a cat", "stripes " * 40, "word " * 300]


VARIANTS = {"int8": ("int8", "auto"), "fp16": ("fp16", "auto"), "fp16-explicit": ("fp16", "explicit")}
FUSED = {"int8": True, "fp16": True, "fp16-explicit": False}  # what --attention auto / explicit must give
GATE = {"int8": 1e-2, "fp16": 2e-3}


@pytest.fixture(scope="module", params=list(VARIANTS))
def exported(request, tmp_path_factory, tiny_checkpoint):
    from longclip.export import export_model

    precision, attention = VARIANTS[request.param]
    out = tmp_path_factory.mktemp(request.param) / "model"
    export_model(tiny_checkpoint, out, precision=precision, attention=attention)
    return precision, out, FUSED[request.param]


def _ops(path):
    import onnx

    return onnx.load(str(path)).graph.node


def test_manifest_records_precision_and_gate(exported):
    precision, folder, fused = exported
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["precision"] == precision and manifest["parity"]["passed"]
    accuracy = manifest["accuracy"]
    assert accuracy["precision"] == precision and accuracy["passed"]
    delta = next(c["value"] for c in accuracy["checks"] if c["name"] == "max |Δscore|, reference vs graphs")
    assert 0 < delta <= GATE[precision]
    assert manifest["row_invariant"] is True
    assert manifest["activation_scales"] == ("per-row" if precision == "int8" else None)
    moved = [c["value"] for c in accuracy["checks"] if "bits move" in c["name"]]
    assert moved == [0, 0]  # the gate proved it on the converted graphs: batches of 1, 3 and 17


def test_scores_stay_close_to_fp32(exported, tiny_model_dir):
    precision, folder, fused = exported
    got = LongCLIP(folder, device="cpu").score(IMAGES, TEXTS)
    want = LongCLIP(tiny_model_dir, device="cpu").score(IMAGES, TEXTS)
    assert np.abs(got - want).max() <= GATE[precision]
    assert not np.array_equal(got, want)  # it really is another precision


def test_graph_contents(exported):
    import onnx

    precision, folder, fused = exported
    assert json.loads((folder / "manifest.json").read_text())["attention"] == ("fused" if fused else "explicit")
    nodes = _ops(folder / "text.onnx")
    kinds = {n.op_type for n in nodes}
    assert ("Softmax" in kinds) == (not fused)  # fused attention computes its own softmax
    if precision == "int8":
        # per-row activation scales (row-invariant); nothing with a per-tensor dynamic scale
        assert fused and {"Attention", "MatMulIntegerToFloat", "ReduceMax"} <= kinds
        assert not kinds & {"QAttention", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "MatMul", "Gemm"}
    else:
        assert ("Attention" in kinds) == fused
        graph = onnx.load(str(folder / "text.onnx")).graph
        types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
        types.update({i.name: i.data_type for i in graph.initializer})
        assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
        for node in nodes:
            if node.op_type in ("LayerNormalization", "Softmax"):
                assert types.get(node.input[0], onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT, node.name
            if node.op_type == "Attention":  # in half precision, weights included: the CUDA kernels are fp16
                assert {types[name] for name in node.input[:3]} == {onnx.TensorProto.FLOAT16}, node.name
            if node.op_type == "ArgMax":
                assert types[node.input[0]] == onnx.TensorProto.INT64
        assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_int8_gate_refuses_and_leaves_nothing(tmp_path, tiny_checkpoint, monkeypatch):
    from longclip.export import build, parity

    monkeypatch.setitem(parity.TOLERANCES, "int8", parity.Tolerance(1e-7, 0.99))
    with pytest.raises(ParityError, match="int8 graphs disagree"):
        build.export_model(tiny_checkpoint, tmp_path / "out", precision="int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_int8_fills_short_text_batches_by_tokens(exported, monkeypatch):
    """int8 text batches of short captions take batch_size * 64 tokens' worth of rows; other precisions batch_size."""
    from longclip.runtime.model import longclip as model_module

    precision, folder, fused = exported
    model = LongCLIP(folder, device="cpu")
    shapes = []
    real = model_module.run_one
    monkeypatch.setattr(model_module, "run_one", lambda s, name, b, *rest: shapes.append(b.shape) or real(s, name, b, *rest))
    texts = ["a cat"] * 40  # 4 tokens with SOT and EOT: the 8-token bucket
    model.encode_texts(texts, batch_size=4)
    assert shapes == ([(32, 8), (8, 8)] if precision == "int8" else [(4, 8)] * 10)  # at the bucket's bound


def test_fused_graphs_warn_before_tensorrt(exported, caplog):
    from longclip.runtime.contract.errors import DeviceUnavailableError

    precision, folder, fused = exported
    with pytest.raises(DeviceUnavailableError):  # no TensorRT here; the warning comes first
        LongCLIP(folder, device="tensorrt")
    assert ("--attention explicit" in caplog.text) == fused
