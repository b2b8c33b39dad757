import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import needs_torch
from longclip.runtime.contract.errors import ParityError

pytestmark = needs_torch


def test_folder_and_manifest(tiny_model_dir, tiny_checkpoint):
    from longclip.runtime.contract.manifest import read_manifest, sha256_file

    assert sorted(p.name for p in tiny_model_dir.iterdir()) == ["manifest.json", "text.onnx", "vision.onnx"]
    m = read_manifest(tiny_model_dir)
    raw = m.raw
    assert (m.image_size, m.embed_dim, m.context_length, m.precision) == (32, 32, 248, "fp32")
    assert raw["checkpoint"]["sha256"] == sha256_file(tiny_checkpoint)
    assert raw["graphs"]["text"]["sha256"] == sha256_file(tiny_model_dir / "text.onnx")
    assert raw["text"]["tokenizer"] == "openai-clip-bpe-16e6/longclip-248" and raw["opset"] >= 17
    assert raw["parity"]["passed"] and len(raw["parity"]["checks"]) == 9
    moved = {c["name"]: c["value"] for c in raw["parity"]["checks"] if "bits move" in c["name"]}
    assert moved == {"images whose bits move, batch 1 vs 3 vs 17": 0, "texts whose bits move, batch 1 vs 3 vs 17": 0}
    assert m.row_invariant and raw["row_invariant"] is True and raw["activation_scales"] is None
    assert list(m.mean) == [0.48145466, 0.4578275, 0.40821073]


def test_declared_io(tiny_model_dir):
    import onnx

    for name, inp, dtype, out in (("vision.onnx", "pixel_values", onnx.TensorProto.FLOAT, "image_embeds"),
                                  ("text.onnx", "input_ids", onnx.TensorProto.INT64, "text_embeds")):
        graph = onnx.load(str(tiny_model_dir / name)).graph
        assert [i.name for i in graph.input] == [inp] and [o.name for o in graph.output] == [out]
        assert graph.input[0].type.tensor_type.elem_type == dtype
        dims = graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param  # dynamic batch
        if name == "text.onnx":
            assert dims[1].dim_param  # dynamic length
        else:
            assert [d.dim_value for d in dims[1:]] == [3, 32, 32]


@pytest.mark.parametrize(("batch", "length"), [(1, 1), (3, 5), (7, 248), (2, 77)])
def test_text_graph_any_batch_and_length(tiny_model_dir, tiny_reference, batch, length):
    import onnxruntime as ort
    import torch

    rng = np.random.default_rng(batch * 1000 + length)
    ids = rng.integers(1, 49406, (batch, length))
    ids[np.arange(batch), rng.integers(0, length, batch)] = 49407  # EOT anywhere, tokens after it too
    session = ort.InferenceSession(str(tiny_model_dir / "text.onnx"))
    got = session.run(None, {"input_ids": ids.astype(np.int64)})[0]
    with torch.no_grad():
        want = tiny_reference.encode_text(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_parity_gate_fails_on_wrong_graphs(tiny_model_dir, tiny_state):
    import torch

    from longclip.export.checkpoint import build_reference
    from longclip.export.parity import run_parity

    state = dict(tiny_state)
    state["visual.proj"] = state["visual.proj"] + 0.05 * torch.randn_like(state["visual.proj"])
    with pytest.raises(ParityError, match="FAIL") as err:
        run_parity(build_reference(state), tiny_model_dir / "vision.onnx", tiny_model_dir / "text.onnx")
    assert "image cosine" in str(err.value)


def test_external_data_when_large(tmp_path, tiny_checkpoint, monkeypatch):
    from longclip.export import build, onnx_export
    from longclip.runtime import LongCLIP

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)
    result = build.export_model(tiny_checkpoint, tmp_path / "ext")
    files = sorted(p.name for p in result.model_dir.iterdir())
    assert "text.onnx.data" in files and "vision.onnx.data" in files
    manifest = json.loads((result.model_dir / "manifest.json").read_text())
    assert manifest["graphs"]["text"]["files"] == ["text.onnx", "text.onnx.data"]
    assert LongCLIP(result.model_dir).encode_texts(["a cat"]).shape == (1, 32)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "longclip.export.cli", *args], capture_output=True, text=True)


def test_cli_exports_and_prints_table(tmp_path, tiny_checkpoint):
    out = tmp_path / "model"
    proc = _cli(str(tiny_checkpoint.parent), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "max |Δscore|, reference vs graphs" in proc.stdout and "done: ViT-w64d2/16-32" in proc.stdout
    assert (out / "manifest.json").is_file()
    again = _cli(str(tiny_checkpoint), "-o", str(out))
    assert again.returncode == 1 and "not empty: pass --overwrite" in again.stderr


@pytest.mark.parametrize("content", [b"", b"garbage, not a checkpoint", None])
def test_cli_refuses_bad_checkpoints_in_one_line(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "out"
    proc = _cli(str(path), "-o", str(out))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("longclip-export: error:") and "bad.pt" in lines[0]
    assert "Traceback" not in proc.stderr and not out.exists()
    assert not list(tmp_path.glob(".out.partial-*"))
