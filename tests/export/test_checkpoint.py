import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_torch
from longclip.runtime.contract.errors import CheckpointError

pytestmark = needs_torch

L14_336 = dict(embed=768, image=336, patch=14, vision_width=1024, vision_layers=24, text_width=768, text_layers=12)
B16 = dict(embed=512, image=224, patch=16, vision_width=768, vision_layers=12, text_width=512, text_layers=12)


def _meta_state(**dims):
    import torch
    from official import official_shapes

    return {k: torch.empty(s, device="meta") for k, s in official_shapes(**dims).items()}


@pytest.mark.parametrize(("dims", "variant"), [(L14_336, "ViT-L/14-336"), (B16, "ViT-B/16-224"),
                                               ({}, "ViT-w64d2/16-32")])
def test_config_from_shapes(dims, variant):
    from longclip.export.checkpoint import derive_config

    cfg = derive_config(_meta_state(**dims))
    assert cfg.variant == variant
    if dims:
        assert (cfg.embed_dim, cfg.image_size, cfg.patch_size, cfg.vision_width, cfg.vision_layers, cfg.text_width,
                cfg.text_layers) == tuple(dims.values())


def test_reference_keys_are_the_official_layout():
    from longclip.export.checkpoint import derive_config
    from longclip.export.model import LongCLIP

    state = _meta_state(**L14_336)
    assert set(LongCLIP(derive_config(state)).state_dict()) == set(state)


def test_wrappers_and_module_prefix(tmp_path, tiny_state):
    import torch

    from longclip.export.checkpoint import load_state_dict

    path = tmp_path / "wrapped.ckpt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in tiny_state.items()}}, path)
    state = load_state_dict(path)
    assert set(state) == set(tiny_state)
    assert torch.equal(state["positional_embedding_res"], tiny_state["positional_embedding_res"])


def test_safetensors(tmp_path, tiny_state):
    import torch
    from safetensors.torch import save_file

    from longclip.export.checkpoint import load_reference

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_state.items()}, path)
    model, used = load_reference(path)
    assert used == path and torch.equal(model.text_projection.detach(), tiny_state["text_projection"])


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_with_code_is_refused_not_run(tmp_path):
    import torch

    from longclip.export.checkpoint import load_state_dict

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1), "x": _Payload(marker)}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError) as caught:
        load_state_dict(path)
    assert str(caught.value) == (f"{str(path)!r} is refused: besides tensors it holds Python objects (io.open) "
                                 "that loading would run; a LongCLIP checkpoint is a state dict of tensors "
                                 "(torch.save(model.state_dict(), path))")
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()


def test_truncated_file(tmp_path, tiny_checkpoint):
    from longclip.export.checkpoint import load_state_dict

    data = tiny_checkpoint.read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"cut.pt' is damaged: its zip archive is truncated or corrupt; download "
                                              "or copy it again"):
        load_state_dict(path)


def test_not_longclip(tmp_path, tiny_state):
    import torch

    from longclip.export.checkpoint import load_reference

    clip_like = {k: v for k, v in tiny_state.items() if k != "positional_embedding_res"}
    path = tmp_path / "clip.pt"
    torch.save(clip_like, path)
    with pytest.raises(CheckpointError, match="no positional_embedding_res"):
        load_reference(path)
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="no visual.conv1.weight: not a LongCLIP state dict"):
        load_reference(path)


def test_extra_and_misshapen_keys(tmp_path, tiny_state):
    import torch

    from longclip.export.checkpoint import build_reference

    with pytest.raises(CheckpointError, match="unexpected: extra.weight"):
        build_reference({**tiny_state, "extra.weight": torch.zeros(1)})
    bad = dict(tiny_state)
    bad["ln_final.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="wrong shape: ln_final.bias"):
        build_reference(bad)


def test_directory_search_prefers_longclip_then_sorted(tmp_path):
    from longclip.export.checkpoint import find_checkpoint

    for name in ("a.bin", "sub/b.pt", "sub/LongCLIP-L.pt", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert find_checkpoint(tmp_path) == tmp_path / "sub" / "LongCLIP-L.pt"
    (tmp_path / "sub" / "LongCLIP-L.pt").unlink()
    assert find_checkpoint(tmp_path) == tmp_path / "a.bin"
    with pytest.raises(CheckpointError, match="does not exist"):
        find_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no .pt/.bin/.ckpt/.safetensors file"):
        find_checkpoint(tmp_path / "empty")


def test_legacy_format_is_read(tmp_path, tiny_state):
    import torch

    from longclip.export.checkpoint import load_state_dict

    path = tmp_path / "old.pt"
    torch.save(tiny_state, path, _use_new_zipfile_serialization=False)
    assert torch.equal(load_state_dict(path)["text_projection"], tiny_state["text_projection"])


def _export(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "longclip.export.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(("name", "content", "message"), [
    ("pairs.jsonl", b'{"image_path": "a.png", "text": "a cat"}\n',
     "'pairs.jsonl' is not a checkpoint: expected a state dict saved by torch.save (e.g. longclip-L@336px.pt) or a "
     ".safetensors file"),
    ("plain.pt", pickle.dumps({"weight": [1.0, 2.0]}, protocol=4),
     "'plain.pt' is not a checkpoint: expected a state dict saved by torch.save (e.g. longclip-L@336px.pt) or a "
     ".safetensors file"),
    ("evil.pt", None, "'evil.pt' is refused: besides tensors it holds Python objects (io.open) that loading "
     "would run; a LongCLIP checkpoint is a state dict of tensors (torch.save(model.state_dict(), path))"),
])
def test_export_cli_says_in_one_line_what_the_file_is(tmp_path, name, content, message):
    """Never torch's own advice: it suggests weights_only=False, which would run the file's code."""
    import torch

    if content is None:
        torch.save({"x": _Payload(tmp_path / "pwned")}, tmp_path / name, pickle_module=pickle)
    else:
        (tmp_path / name).write_bytes(content)
    proc = _export(tmp_path, name, "-o", "out")
    assert proc.returncode == 1 and proc.stderr == f"longclip-export: error: {message}\n", proc.stderr
    assert "weights_only" not in proc.stderr and not (tmp_path / "out").exists() and not (tmp_path / "pwned").exists()
