"""Shared fixtures: tiny random checkpoints in the official layout, exported once per session."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

GOLDENS = Path(__file__).parent / "goldens"
HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs the export extra (torch)")


def copy_model(src: Path, dst: Path, edit: Callable[[dict], object] | None = None) -> Path:
    """A copy of the model folder ``src`` at ``dst``; ``edit(manifest)`` changes its manifest in place."""
    shutil.copytree(src, dst)
    if edit is not None:
        manifest = json.loads((dst / "manifest.json").read_text())
        edit(manifest)
        (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory) -> Iterator[Path]:
    """``$LONGCLIP_CACHE`` (graph stamps, TensorRT engines) in a temporary folder, never the user's: subprocesses
    inherit it too."""
    cache = tmp_path_factory.mktemp("longclip-cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("LONGCLIP_CACHE", str(cache))
    yield cache
    patch.undo()


@pytest.fixture(scope="session")
def tiny_state():
    from official import official_state_dict

    return official_state_dict(seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_state) -> Path:
    import torch

    path = tmp_path_factory.mktemp("ckpt") / "longclip-tiny.pt"
    torch.save(tiny_state, path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(request, tmp_path_factory) -> Path:
    """``longclip-export`` of the tiny checkpoint, done once for the whole session.

    A torch-free environment (the DataFlow one in .ci/run) passes a folder exported elsewhere instead.
    """
    given = os.environ.get("LONGCLIP_TEST_MODEL_DIR")
    if given:
        return Path(given)
    if not HAS_TORCH:
        pytest.skip("needs the export extra (torch) or LONGCLIP_TEST_MODEL_DIR")
    from longclip.export import export_model

    out = tmp_path_factory.mktemp("export") / "tiny"
    export_model(request.getfixturevalue("tiny_checkpoint"), out)
    return out


@pytest.fixture(scope="session")
def tiny_reference(tiny_checkpoint):
    from longclip.export import load_reference

    return load_reference(tiny_checkpoint)[0]


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory) -> Path:
    """A second tiny model (other random weights, other graph hashes): what a resume with another model sees."""
    if not HAS_TORCH:
        pytest.skip("needs the export extra (torch)")
    import torch
    from official import official_state_dict

    from longclip.export import export_model

    folder = tmp_path_factory.mktemp("other")
    torch.save(official_state_dict(seed=1), folder / "longclip-other.pt")
    export_model(folder / "longclip-other.pt", folder / "model")
    return folder / "model"


@pytest.fixture(scope="session")
def slow_model_dir(tmp_path_factory) -> Path:
    """A model whose image tower takes ~0.1 s per 224-px image on two cores (784 patches, 4 layers of width
    256): a batch of 64 runs for seconds, long enough to be interrupted in the middle."""
    if not HAS_TORCH:
        pytest.skip("needs the export extra (torch)")
    import torch

    from longclip.export import export_model
    from longclip.export.model import LongCLIPConfig
    from longclip.export.random_checkpoint import random_state_dict

    cfg = LongCLIPConfig(embed_dim=32, image_size=224, patch_size=8, vision_width=256, vision_layers=4,
                         text_width=64, text_layers=1)
    folder = tmp_path_factory.mktemp("slow")
    torch.save(random_state_dict(cfg), folder / "longclip-slow.pt")
    export_model(folder / "longclip-slow.pt", folder / "model")
    return folder / "model"
