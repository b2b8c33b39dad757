"""Every model_name form: exported folder, checkpoint file, folder holding one, Hugging Face repo id."""

import os
import shutil
import sys

import pytest

from conftest import needs_torch
from longclip.runtime import ImageLongCLIPEvaluator
from longclip.runtime.errors import CheckpointError, ModelDirError
from longclip.runtime.resolve import hf_hub_cache, resolve_model_dir

pytestmark = needs_torch
REPO = "BeichenZhang/LongCLIP-L-336px"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("longclip-cache")


def test_exported_folder_is_used_as_is(tiny_model_dir, cache):
    assert resolve_model_dir(tiny_model_dir, cache) == tiny_model_dir


def test_checkpoint_file_is_exported_once_then_reused(tiny_checkpoint, cache, monkeypatch):
    first = resolve_model_dir(tiny_checkpoint, cache)
    assert first.parent == cache / "exports" and (first / "manifest.json").is_file()
    stamp = (first / "manifest.json").stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("a cached export must not run longclip-export again")

    monkeypatch.setattr("longclip.runtime.resolve.subprocess.run", no_export)
    copy = cache.parent / "renamed.bin"
    shutil.copy(tiny_checkpoint, copy)  # same bytes under another name: same sha256, same folder
    assert resolve_model_dir(copy, cache) == first
    assert (first / "manifest.json").stat().st_mtime_ns == stamp


def test_folder_holding_checkpoints(tmp_path, tiny_checkpoint, cache):
    (tmp_path / "a-other.pt").write_bytes(b"not the one")
    shutil.copy(tiny_checkpoint, tmp_path / "longclip-tiny.pt")
    assert (resolve_model_dir(tmp_path, cache) / "manifest.json").is_file()


def _hf_layout(hub, checkpoint, revision="0123abc"):
    repo = hub / f"models--{REPO.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    blob = repo / "blobs" / "deadbeef"
    shutil.copy(checkpoint, blob)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "longclip-L@336px.pt").symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_hugging_face_repo_id_from_local_cache(tmp_path, tiny_checkpoint, cache, monkeypatch, variable):
    for name in ("HF_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, str(tmp_path / "hf"))
    assert hf_hub_cache() == (tmp_path / "hf" if variable == "HF_HUB_CACHE" else tmp_path / "hf" / "hub")
    _hf_layout(hf_hub_cache(), tiny_checkpoint)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # offline: the cache alone must do
    assert (resolve_model_dir(REPO, cache) / "manifest.json").is_file()


def test_repo_id_not_cached_without_huggingface_hub(tmp_path, monkeypatch, cache):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ModelDirError, match="pip install huggingface_hub"):
        resolve_model_dir(REPO, cache)


def test_operator_accepts_a_checkpoint(tiny_checkpoint, cache, monkeypatch):
    monkeypatch.setenv("LONGCLIP_CACHE", str(cache))
    evaluator = ImageLongCLIPEvaluator(str(tiny_checkpoint), device="cpu")
    assert evaluator.model.manifest.root.parent == cache / "exports"


def test_bad_names(tmp_path, cache):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelDirError, match="is not a checkpoint"):
        resolve_model_dir(tmp_path / "notes.txt", cache)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no .pt/.bin/.ckpt/.safetensors file"):
        resolve_model_dir(tmp_path / "empty", cache)
    (tmp_path / "broken.pt").write_bytes(b"garbage")
    with pytest.raises(ModelDirError, match="cannot use checkpoint .*broken.pt.*is not a checkpoint: expected a state dict"):
        resolve_model_dir(tmp_path / "broken.pt", cache)
    with pytest.raises(ModelDirError, match="does not exist"):
        resolve_model_dir("no/such/place/here", cache)
