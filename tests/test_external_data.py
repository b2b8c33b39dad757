"""A graph's external data: only regular files inside the model folder (or where its graph file really lives),
checked by our own protobuf walk before ONNX Runtime sees the graph.

Graphs are built with ``onnx`` (a test and export dependency, not the runtime's): ``y = x + w`` where ``w`` (2
float32) is stored in a file that the test points anywhere.
"""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from longclip.runtime.contract.errors import ModelDirError
from longclip.runtime.model.session import create_session
from longclip.runtime.model.verify import check_external_data

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

W = np.array([10.0, 20.0], dtype=np.float32)
X = np.array([1.0, 2.0], dtype=np.float32)
OPSET = [helper.make_opsetid("", 17)]  # IR 8 / opset 17: loadable by the oldest onnxruntime admitted


def _external(name: str, location: str, offset: int = 0, length: int | None = 8) -> TensorProto:
    tensor = helper.make_tensor(name, TensorProto.FLOAT, [2], [0.0, 0.0])
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": str(offset), **({"length": str(length)} if length is not None else {})}
    for key, value in entries.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _io():
    return ([helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])


def _save(graph, path) -> str:
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=8)
    onnx.save(model, str(path))
    return str(path)


def initializer_graph(path, location: str, **entries) -> str:
    inputs, outputs = _io()
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", inputs, outputs,
                              initializer=[_external("w", location, **entries)])
    return _save(graph, path)


def constant_graph(path, location: str) -> str:
    inputs, outputs = _io()
    nodes = [helper.make_node("Constant", [], ["w"], value=_external("const_w", location)),
             helper.make_node("Add", ["x", "w"], ["y"])]
    return _save(helper.make_graph(nodes, "g", inputs, outputs), path)


def if_graph(path, location: str) -> str:
    """``If`` whose then-branch holds the external initializer, one subgraph deep inside a ``Loop``-free model."""
    inputs, outputs = _io()
    branch_out = [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])]
    then = helper.make_graph([helper.make_node("Identity", ["wt"], ["b"])], "then", [], branch_out,
                             initializer=[_external("then_w", location)])
    other = helper.make_graph([helper.make_node("Constant", [], ["b"], value=helper.make_tensor(
        "zero", TensorProto.FLOAT, [2], [0.0, 0.0]))], "else", [], branch_out)
    nodes = [helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True])),
             helper.make_node("If", ["c"], ["w"], then_branch=then, else_branch=other),
             helper.make_node("Add", ["x", "w"], ["y"])]
    return _save(helper.make_graph(nodes, "g", inputs, outputs), path)


def sparse_graph(path, location: str) -> str:
    inputs, outputs = _io()
    values = _external("sparse_values", location, length=4)
    values.dims[:] = [1]
    indices = helper.make_tensor("sparse_indices", TensorProto.INT64, [1], [1])
    sparse = helper.make_sparse_tensor(values, indices, [2])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", inputs, outputs,
                              sparse_initializer=[sparse])
    return _save(graph, path)


@pytest.fixture
def folder(tmp_path):
    """``tmp_path/model`` with ``w.bin`` (the weights) inside it, and ``tmp_path/secret.bin`` outside it."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_bytes(W.tobytes())
    (tmp_path / "secret.bin").write_bytes(struct.pack("<2f", 111.0, 222.0))
    return model


def _refused(graph, *needles, model_dir=None):
    with pytest.raises(ModelDirError) as caught:
        check_external_data(graph, model_dir)
    for needle in needles:
        assert needle in str(caught.value), str(caught.value)
    assert "only in regular files inside the folder" in str(caught.value)
    return str(caught.value)


def test_data_inside_the_folder_loads_and_scores(folder):
    graph = initializer_graph(folder / "g.onnx", "w.bin")
    assert check_external_data(graph) == 1
    session = create_session(graph, "cpu")
    np.testing.assert_array_equal(session.run(None, {"x": X})[0], X + W)


def test_a_graph_without_external_data_has_none(tiny_model_dir):
    assert check_external_data(tiny_model_dir / "vision.onnx") == 0
    assert check_external_data(tiny_model_dir / "text.onnx") == 0


def test_parent_location_is_refused(folder):
    _refused(initializer_graph(folder / "g.onnx", "../secret.bin"), "tensor 'w'", "'../secret.bin'",
             "outside the model folder")


def test_absolute_location_is_refused(folder):
    secret = str(folder.parent / "secret.bin")
    _refused(initializer_graph(folder / "g.onnx", secret), f"{secret!r}", "outside the model folder")


def test_in_folder_symlink_out_is_refused(folder):
    (folder / "link.bin").symlink_to(folder.parent / "secret.bin")
    _refused(initializer_graph(folder / "g.onnx", "link.bin"), "'link.bin'", "outside the model folder")


def test_a_path_through_the_folder_and_back_is_inside(folder):
    (folder / "sub").mkdir()
    assert check_external_data(initializer_graph(folder / "g.onnx", "sub/../w.bin")) == 1


def test_fifo_and_folder_are_refused_without_opening(folder):
    os.mkfifo(folder / "pipe.bin")  # opening it would wait for a writer forever
    (folder / "dir.bin").mkdir()
    _refused(initializer_graph(folder / "g.onnx", "pipe.bin"), "'pipe.bin'", "not a regular file")
    _refused(initializer_graph(folder / "g.onnx", "dir.bin"), "'dir.bin'", "not a regular file")


def test_missing_file_is_refused(folder):
    _refused(initializer_graph(folder / "g.onnx", "nothing.bin"), "'nothing.bin'", "does not exist")


@pytest.mark.parametrize(("offset", "length", "needle"), [(4, 8, "bytes 4 to 12, past the end of the file (8 bytes)"),
                                                          (9, None, "bytes 9 to 17"), (0, 9, "bytes 0 to 9"),
                                                          (-1, 4, "bytes -1 to 3")])
def test_offset_and_length_past_the_end_are_refused(folder, offset, length, needle):
    _refused(initializer_graph(folder / "g.onnx", "w.bin", offset=offset, length=length), needle)


def test_offset_and_length_within_the_file_are_accepted(folder):
    assert check_external_data(initializer_graph(folder / "g.onnx", "w.bin", offset=0, length=None)) == 1
    (folder / "w.bin").write_bytes(b"pad!" + W.tobytes())
    session = create_session(initializer_graph(folder / "g.onnx", "w.bin", offset=4, length=8), "cpu")
    np.testing.assert_array_equal(session.run(None, {"x": X})[0], X + W)


def test_constant_attribute_is_checked(folder):
    assert check_external_data(constant_graph(folder / "ok.onnx", "w.bin")) == 1
    _refused(constant_graph(folder / "g.onnx", "../secret.bin"), "tensor 'const_w'", "'../secret.bin'")


def test_if_subgraph_is_checked(folder):
    assert check_external_data(if_graph(folder / "ok.onnx", "w.bin")) == 1
    _refused(if_graph(folder / "g.onnx", "../secret.bin"), "tensor 'then_w'", "'../secret.bin'")


def test_sparse_initializer_is_checked(folder):
    assert check_external_data(sparse_graph(folder / "ok.onnx", "w.bin")) == 1
    _refused(sparse_graph(folder / "g.onnx", "../secret.bin"), "tensor 'sparse_values'")


def test_onnx_runtime_never_sees_a_refused_graph(folder, monkeypatch):
    import onnxruntime

    seen = []
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: seen.append(a))
    with pytest.raises(ModelDirError, match="'../secret.bin'"):
        create_session(initializer_graph(folder / "g.onnx", "../secret.bin"), "cpu")
    assert seen == []


def test_hugging_face_cache_layout_is_accepted(tmp_path):
    """A snapshot's files are symlinks into ``../../blobs``: the graph and its data both really live there."""
    repo = tmp_path / "models--org--longclip"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (repo / "blobs" / "aa11").write_bytes(W.tobytes())
    (snapshot / "w.bin").symlink_to("../../blobs/aa11")
    initializer_graph(repo / "blobs" / "bb22", "w.bin")
    (snapshot / "g.onnx").symlink_to("../../blobs/bb22")
    assert check_external_data(snapshot / "g.onnx", snapshot) == 1
    session = create_session(snapshot / "g.onnx", "cpu", model_dir=snapshot)
    np.testing.assert_array_equal(session.run(None, {"x": X})[0], X + W)


def test_the_hub_layout_does_not_open_the_whole_cache(tmp_path):
    repo = tmp_path / "models--org--longclip"
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (tmp_path / "models--other--repo").mkdir()
    (tmp_path / "models--other--repo" / "w.bin").write_bytes(W.tobytes())
    initializer_graph(repo / "blobs" / "bb22", "../../../models--other--repo/w.bin")
    (snapshot / "g.onnx").symlink_to("../../blobs/bb22")
    _refused(snapshot / "g.onnx", "outside the model folder", model_dir=snapshot)


@pytest.mark.parametrize("data", [b"\x3a\xff\xff\xff\xff\x0f", b"\x3a\x05\x0a", b"\x3b", b"\x3a\x80"])
def test_malformed_graph_is_a_model_dir_error(tmp_path, data):
    (tmp_path / "g.onnx").write_bytes(data)
    with pytest.raises(ModelDirError, match="is not a readable ONNX file"):
        check_external_data(tmp_path / "g.onnx")


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (written by hand: ``onnx`` itself refuses to build this deep)."""
    def varint(n: int) -> bytes:
        out = b""
        while n >= 0x80:
            out, n = out + bytes([n & 0x7F | 0x80]), n >> 7
        return out + bytes([n])

    return varint(number << 3 | 2) + varint(len(payload)) + payload


def test_subgraphs_nested_too_deep_are_refused(tmp_path):
    graph = b""
    for _ in range(70):  # GraphProto.node -> NodeProto.attribute -> AttributeProto.g -> GraphProto ...
        graph = _field(1, _field(5, _field(6, graph)))
    (tmp_path / "deep.onnx").write_bytes(_field(7, graph))
    with pytest.raises(ModelDirError, match="nested over 64 deep"):
        check_external_data(tmp_path / "deep.onnx")


def test_the_model_refuses_a_folder_whose_graph_reads_outside(tiny_model_dir, tmp_path):
    """Through ``LongCLIP``: the vision graph's weights moved to a file beside the folder."""
    from conftest import copy_model
    from longclip.runtime import LongCLIP
    from longclip.runtime.contract.manifest import sha256_file

    model_dir = copy_model(tiny_model_dir, tmp_path / "tiny")
    vision = onnx.load(str(model_dir / "vision.onnx"))
    tensor = max(vision.graph.initializer, key=lambda t: len(t.raw_data))
    (tmp_path / "outside.bin").write_bytes(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../outside.bin"
    onnx.save(vision, str(model_dir / "vision.onnx"))
    manifest = model_dir / "manifest.json"
    manifest.write_text(manifest.read_text().replace(  # the manifest vouches for the edited graph
        json_sha(tiny_model_dir / "vision.onnx"), sha256_file(model_dir / "vision.onnx")))
    assert (tmp_path / "outside.bin").stat().st_size > 0
    with pytest.raises(ModelDirError, match=r"vision.onnx'.*keeps its data at '../outside.bin'"):
        LongCLIP(model_dir, device="cpu")


def json_sha(path) -> str:
    from longclip.runtime.contract.manifest import sha256_file

    return sha256_file(path)


def test_why_the_check_is_ours_onnx_runtime_before_1_24_reads_outside(folder):
    """What ONNX Runtime itself does with a ``../`` location (measured: 1.20-1.23 load it, the outside file's bytes
    becoming the weights; 1.24+ refuse): on the floor venv of .ci/run, only our check stands between."""
    import onnxruntime

    graph = initializer_graph(folder / "g.onnx", "../secret.bin")
    version = tuple(int(part) for part in onnxruntime.__version__.split(".")[:2])
    if version < (1, 24):
        session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(session.run(None, {"x": X})[0], X + [111.0, 222.0])
    else:
        with pytest.raises(Exception, match="(?i)external data"):
            onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
