"""Every model_name form, one resolution behind LongCLIP, longclip-run -m and the operator: exported folder,
checkpoint file, folder holding one, Hugging Face repo id (an exported folder published there, or a checkpoint);
and the rule that a name whose first component exists here is a path, never a repo id."""

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import GOLDENS, needs_torch
from longclip.runtime import ImageLongCLIPEvaluator, LongCLIP
from longclip.runtime.contract.errors import ModelDirError
from longclip.runtime.model.hub import hf_hub_cache, manifest_files
from longclip.runtime.model.resolve import is_path, resolve_model_dir

REPO = "BeichenZhang/LongCLIP-L-336px"
EXPORTED = "someone/longclip-tiny-onnx"
HAS_HUB = importlib.util.find_spec("huggingface_hub") is not None
needs_hub = pytest.mark.skipif(not HAS_HUB, reason="needs huggingface_hub (the hub extra; .ci/run installs it)")
IMAGE = GOLDENS / "images" / "rgb_333x517.png"
RUN = Path(sys.executable).with_name("longclip-run")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("longclip-cache")


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache of this test's own."""
    for name in ("HF_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def hf_layout(hub: Path, repo_id: str, files: dict[str, Path], revision: str = "0123abc") -> Path:
    """``files`` as huggingface_hub caches them: blobs named by content, a snapshot of relative symlinks into
    them, and ``refs/main`` naming that snapshot. Returns the snapshot."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / revision
    for name, source in files.items():
        data = Path(source).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def no_export(*args, **kwargs):
    raise AssertionError("an exported folder must be used as it is, never exported again")


@needs_torch
def test_exported_folder_is_used_as_is(tiny_model_dir, cache):
    assert resolve_model_dir(tiny_model_dir, cache) == tiny_model_dir


@needs_torch
def test_checkpoint_file_is_exported_once_then_reused(tiny_checkpoint, cache, monkeypatch):
    first = resolve_model_dir(tiny_checkpoint, cache)
    assert first.parent == cache / "exports" and (first / "manifest.json").is_file()
    stamp = (first / "manifest.json").stat().st_mtime_ns
    monkeypatch.setattr("longclip.runtime.model.resolve.subprocess.run", no_export)
    copy = cache.parent / "renamed.bin"
    shutil.copy(tiny_checkpoint, copy)  # same bytes under another name: same sha256, same folder
    assert resolve_model_dir(copy, cache) == first
    assert (first / "manifest.json").stat().st_mtime_ns == stamp


@needs_torch
def test_folder_holding_checkpoints(tmp_path, tiny_checkpoint, cache):
    (tmp_path / "a-other.pt").write_bytes(b"not the one")
    shutil.copy(tiny_checkpoint, tmp_path / "longclip-tiny.pt")
    assert (resolve_model_dir(tmp_path, cache) / "manifest.json").is_file()


@needs_torch
@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_checkpoint_repo_from_the_local_cache(tmp_path, tiny_checkpoint, cache, monkeypatch, variable):
    for name in ("HF_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, str(tmp_path / "hf"))
    assert hf_hub_cache() == (tmp_path / "hf" if variable == "HF_HUB_CACHE" else tmp_path / "hf" / "hub")
    hf_layout(hf_hub_cache(), REPO, {"longclip-L@336px.pt": tiny_checkpoint})
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # offline: the cache alone must do
    assert (resolve_model_dir(REPO, cache) / "manifest.json").is_file()


def test_exported_repo_is_used_from_the_cache_as_it_lies(tiny_model_dir, hub, monkeypatch):
    snapshot = hf_layout(hub, EXPORTED, {p.name: p for p in tiny_model_dir.iterdir()})
    assert (snapshot / "vision.onnx").is_symlink()
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    monkeypatch.setattr("longclip.runtime.model.resolve.subprocess.run", no_export)
    assert resolve_model_dir(EXPORTED) == snapshot
    texts = ["a photo of stripes"]
    from_hub = LongCLIP(EXPORTED, device="cpu").score([IMAGE], texts)
    np.testing.assert_array_equal(from_hub, LongCLIP(tiny_model_dir, device="cpu").score([IMAGE], texts))


def _remote(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A repo's files on the Hub: an exported folder plus files the runtime must not ask for."""
    remote = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, remote)
    (remote / "README.md").write_text("# an exported LongCLIP\n")
    (remote / "longclip-tiny.pt").write_bytes(b"PK\x03\x04 a checkpoint nobody needs here")
    (remote / "extras").mkdir()
    (remote / "extras" / "other.onnx").write_bytes(b"not named by the manifest")
    return remote


def _fake_hub(monkeypatch, hub: Path, remote: Path, commit: str = "feedbeef") -> list[str]:
    """huggingface_hub's two download calls over ``remote``; returns the files asked for, in order."""
    import huggingface_hub

    asked: list[str] = []

    def hf_hub_download(repo_id, filename, *, revision=None, **kwargs):
        asked.append(filename)
        if not (remote / filename).is_file():
            cls = getattr(huggingface_hub.errors, "RemoteEntryNotFoundError", huggingface_hub.errors.EntryNotFoundError)
            error = cls.__new__(cls)  # its constructor wants an HTTP response; the type is what counts
            Exception.__init__(error, f"404 Entry Not Found: {filename}")
            raise error
        return str(hf_layout(hub, repo_id, {filename: remote / filename}, commit) / filename)

    def snapshot_download(repo_id, **kwargs):
        raise AssertionError(f"snapshot_download({repo_id!r}, {kwargs}) must not be called here")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return asked


@needs_hub
def test_exported_repo_is_downloaded_file_by_file(tmp_path, tiny_model_dir, hub, monkeypatch):
    remote = _remote(tmp_path, tiny_model_dir)
    asked = _fake_hub(monkeypatch, hub, remote)
    monkeypatch.setattr("longclip.runtime.model.resolve.subprocess.run", no_export)
    snapshot = resolve_model_dir(EXPORTED)
    manifest = json.loads((remote / "manifest.json").read_text())
    assert asked == ["manifest.json", *manifest_files(manifest)] and "README.md" not in asked
    assert snapshot.name == "feedbeef" and sorted(p.name for p in snapshot.iterdir()) == sorted(asked)
    assert 0 <= LongCLIP(EXPORTED, device="cpu").score([IMAGE], ["stripes"])[0] <= 1
    asked.clear()
    resolve_model_dir(EXPORTED)  # now cached: nothing asked of the Hub
    assert asked == []


@needs_hub
def test_a_download_that_does_not_match_its_manifest_is_refused(tmp_path, tiny_model_dir, hub, monkeypatch):
    remote = _remote(tmp_path, tiny_model_dir)
    with open(remote / "text.onnx", "ab") as f:
        f.write(b"\0")
    _fake_hub(monkeypatch, hub, remote)
    with pytest.raises(ModelDirError, match=r"'someone/longclip-tiny-onnx': text.onnx does not match the sha256 its "
                                            r"manifest.json records .*delete '.*models--someone--longclip-tiny-onnx'"):
        resolve_model_dir(EXPORTED)


@needs_hub
def test_a_repo_missing_a_file_its_manifest_names_is_refused(tmp_path, tiny_model_dir, hub, monkeypatch):
    remote = _remote(tmp_path, tiny_model_dir)
    (remote / "vision.onnx").unlink()
    _fake_hub(monkeypatch, hub, remote)
    with pytest.raises(ModelDirError, match=r"^'someone/longclip-tiny-onnx': its manifest.json names vision.onnx, "
                                            r"which the repo does not have: upload the whole exported folder"):
        resolve_model_dir(EXPORTED)


@needs_hub
def test_a_checkpoint_repo_is_not_downloaded_where_it_cannot_be_exported(hub, tmp_path, monkeypatch):
    (tmp_path / "remote").mkdir()
    asked = _fake_hub(monkeypatch, hub, tmp_path / "remote")
    monkeypatch.setattr("longclip.runtime.model.resolve.missing_export_modules", lambda: ["torch"])
    with pytest.raises(ModelDirError, match=r"^'BeichenZhang/LongCLIP-L-336px' holds a checkpoint, not an exported "
                                            r"folder, and exporting it needs the export extra: pip install "
                                            r"'longclip\[export\]'"):
        resolve_model_dir(REPO)
    assert asked == ["manifest.json"]  # and snapshot_download never ran


def test_repo_id_not_cached_without_huggingface_hub(hub, monkeypatch, cache):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ModelDirError, match=r"^model 'BeichenZhang/LongCLIP-L-336px' was looked for as a path, "
                                            r"'.*/BeichenZhang/LongCLIP-L-336px' \(no such folder or file\), and as a "
                                            r"Hugging Face repo id, in the Hugging Face cache '.*' \(not there\); to "
                                            r"download it: pip install 'longclip\[hub"):
        resolve_model_dir(REPO, cache)


@pytest.mark.parametrize("export_missing, extras, missing", [
    ([], "hub", "huggingface_hub"),
    (["torch", "onnxscript"], "hub,export", "huggingface_hub, torch, onnxscript"),
])
def test_a_model_path_from_the_wrong_folder_names_where_and_every_missing_piece(tmp_path, monkeypatch,
                                                                                 export_missing, extras, missing):
    monkeypatch.chdir(tmp_path)  # no models/ here: "models/tiny" can only be a repo id
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    monkeypatch.setattr("longclip.runtime.model.resolve.missing_export_modules", lambda: export_missing)
    with pytest.raises(ModelDirError) as info:
        resolve_model_dir("models/tiny", tmp_path / "cache")
    message = str(info.value)
    assert f"{str(tmp_path / 'models' / 'tiny')!r} (no such folder or file)" in message
    assert f"pip install 'longclip[{extras}]' (missing: {missing});" in message and "\n" not in message


@needs_torch
def test_python_class_takes_every_form(tiny_checkpoint, tiny_model_dir, cache, monkeypatch):
    monkeypatch.setenv("LONGCLIP_CACHE", str(cache))
    from_checkpoint = LongCLIP(str(tiny_checkpoint), device="cpu")
    assert from_checkpoint.manifest.root.parent == cache / "exports"
    assert LongCLIP(model_dir=tiny_model_dir).manifest.root == tiny_model_dir
    assert LongCLIP(model_name=str(tiny_model_dir)).manifest.root == tiny_model_dir
    with pytest.raises(TypeError, match="pass model_name .*not neither"):
        LongCLIP()
    with pytest.raises(TypeError, match="not both it and model_dir"):
        LongCLIP(tiny_model_dir, model_dir=tiny_model_dir)


@needs_torch
def test_operator_accepts_a_checkpoint(tiny_checkpoint, cache, monkeypatch):
    monkeypatch.setenv("LONGCLIP_CACHE", str(cache))
    evaluator = ImageLongCLIPEvaluator(str(tiny_checkpoint), device="cpu")
    assert evaluator.model.manifest.root.parent == cache / "exports"


def test_names_that_are_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert is_path("models/anything") and is_path("./org/repo") and is_path("/org/repo") and is_path("~/org/repo")
    assert is_path(Path("org/repo"))
    assert not is_path("org/repo") and not is_path(REPO)


def _refused(monkeypatch, name, message):
    monkeypatch.setattr("longclip.runtime.model.hub.download", lambda *a, **k: pytest.fail("must not reach the Hub"))
    with pytest.raises(ModelDirError) as caught:
        resolve_model_dir(name)
    assert str(caught.value) == message


def test_a_typo_in_a_path_is_never_a_repo_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path))
    _refused(monkeypatch, "models/tinny", "model 'models/tinny' does not exist, and it is not a Hugging Face repo "
             "id: 'models' exists here, so it names a path; did you mean 'models/tiny'?")
    _refused(monkeypatch, "./models/tinny/sub", "model './models/tinny/sub' does not exist; did you mean "
             "'models/tiny'?")
    _refused(monkeypatch, "~/modls/tiny", f"model '~/modls/tiny' does not exist; did you mean '{tmp_path}/models'?")
    _refused(monkeypatch, "./elsewhere", "model './elsewhere' does not exist; pass an exported folder "
             "(longclip-export CHECKPOINT -o DIR), a checkpoint file or a folder holding one")
    _refused(monkeypatch, "modles", "model 'modles' does not exist here and is not a Hugging Face repo id "
             "(org/name); did you mean 'models'?")


def test_bad_names(tmp_path, cache):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelDirError, match=r"model '.*notes.txt' is not a checkpoint: expected a state dict saved by "
                                            r"torch.save .*, or an exported model folder"):
        resolve_model_dir(tmp_path / "notes.txt", cache)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirError, match=r"'.*empty' is a folder without manifest.json or a "
                                            r"\.pt/\.bin/\.ckpt/\.safetensors file: pass an exported model folder"):
        resolve_model_dir(tmp_path / "empty", cache)
    (tmp_path / "broken.pt").write_bytes(b"garbage")
    with pytest.raises(ModelDirError, match="broken.pt' is not a checkpoint"):
        resolve_model_dir(tmp_path / "broken.pt", cache)


def test_one_message_whichever_way_in(tmp_path, monkeypatch):
    """LongCLIP, the operator and longclip-run -m resolve alike and say the same."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    (tmp_path / "in.jsonl").write_text('{"image_path": "a.png", "text": "t"}\n')
    messages = []
    for make in (LongCLIP, ImageLongCLIPEvaluator):
        with pytest.raises(ModelDirError) as caught:
            make("models/tinny")
        messages.append(str(caught.value))
    proc = subprocess.run([str(RUN), "in.jsonl", "-m", "models/tinny", "-o", "out.jsonl"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr == f"longclip-run: error: {messages[0]}\n", proc.stderr
    assert messages[0] == messages[1] and "did you mean 'models/tiny'?" in messages[0]


NO_EXPORT_EXTRA = """
import importlib.util

_find_spec = importlib.util.find_spec


def find_spec(name, *args, **kwargs):
    return None if name.split(".")[0] in ("torch", "onnx", "onnxscript") else _find_spec(name, *args, **kwargs)


importlib.util.find_spec = find_spec
"""


def test_checkpoint_without_the_export_extra_says_only_what_will_happen(tmp_path):
    """As in a torch-free deployment: one line naming the extra, nothing announced before it."""
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(NO_EXPORT_EXTRA)
    (tmp_path / "model.pt").write_bytes(b"PK\x03\x04" + bytes(64))  # a checkpoint by its first bytes
    (tmp_path / "in.jsonl").write_text('{"image_path": "a.png", "text": "t"}\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "hook"), "LONGCLIP_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([str(RUN), "in.jsonl", "-m", "model.pt", "-o", "out.jsonl"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr == ("longclip-run: error: cannot use checkpoint 'model.pt' here: exporting it needs the export "
                           "extra: pip install 'longclip[export]' (missing: torch, onnx, onnxscript), or run "
                           "`longclip-export model.pt -o DIR` on a machine with torch and pass DIR\n")
    assert not (tmp_path / "cache" / "exports").exists()


def test_the_export_line_is_logged_only_when_an_export_starts(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("longclip.runtime.model.resolve.missing_export_modules", lambda: ["torch"])
    (tmp_path / "model.pt").write_bytes(b"PK\x03\x04" + bytes(64))
    caplog.set_level(logging.INFO, logger="longclip")
    with pytest.raises(ModelDirError, match=r"needs the export extra: pip install 'longclip\[export\]'"):
        resolve_model_dir(tmp_path / "model.pt", tmp_path / "cache")
    assert "exporting" not in caplog.text


HF_REPO = "zer0int/LongCLIP-L-Diffusers"


def hf_folder(folder: Path) -> Path:
    """A transformers folder by its files (their bytes never loaded here): config.json, an index naming two
    shards, a preprocessor config, and loose files that a search for checkpoints would pick."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "clip", "architectures": ["CLIPModel"]}')
    weight_map = {"text_model.a": "model-00001-of-00002.safetensors",
                  "vision_model.b": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for name in weight_map.values():
        (folder / name).write_bytes(f"shard {name}".encode())
    (folder / "preprocessor_config.json").write_text('{"image_mean": [0.5, 0.5, 0.5]}')
    (folder / "longclip-TE-only.safetensors").write_bytes(b"a text encoder alone")
    (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04 the same weights again")
    return folder


def _fake_export(monkeypatch) -> list[list[str]]:
    """``longclip-export`` as a recorder: each command, and a manifest where it would have exported."""
    commands: list[list[str]] = []

    def run(cmd, **kwargs):
        commands.append(cmd)
        target = Path(cmd[cmd.index("-o") + 1])
        target.mkdir(parents=True)
        (target / "manifest.json").write_text("{}")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr("longclip.runtime.model.resolve.missing_export_modules", lambda: [])
    monkeypatch.setattr("longclip.runtime.model.resolve.subprocess.run", run)
    return commands


def test_a_transformers_folder_is_exported_whole_and_keyed_on_every_file(tmp_path, monkeypatch):
    from longclip.runtime.model.checkpoints import hf_files

    folder = hf_folder(tmp_path / "hf")
    assert [p.name for p in hf_files(folder)] == [
        "config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors"]
    commands = _fake_export(monkeypatch)
    first = resolve_model_dir(folder, tmp_path / "cache")
    assert commands[0][3] == str(folder)  # the folder, not the loose "longclip" file the pick rule prefers
    (folder / "longclip-TE-only.safetensors").write_bytes(b"changed, and not part of the model")
    (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04 changed too; model.safetensors.index.json wins")
    assert resolve_model_dir(folder, tmp_path / "cache") == first and len(commands) == 1
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"another shard")
    second = resolve_model_dir(folder, tmp_path / "cache")
    (folder / "config.json").write_text('{"model_type": "clip", "architectures": ["CLIPModel"], "x": 1}')
    third = resolve_model_dir(folder, tmp_path / "cache")
    assert len({first, second, third}) == 3 and len(commands) == 3


def test_a_transformers_folder_missing_a_shard_or_naming_one_outside_is_refused(tmp_path, cache):
    from longclip.runtime.contract.errors import CheckpointError

    folder = hf_folder(tmp_path / "hf")
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json' names 1 shard\(s\) the folder lacks "
                                              r"\(model-00002-of-00002.safetensors, ...\): download every shard"):
        resolve_model_dir(folder, cache)
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {"a": "../../etc/passwd"}}')
    with pytest.raises(CheckpointError, match=r"names shard '../../etc/passwd' outside its folder: refused"):
        resolve_model_dir(folder, cache)
    for text in ('{"metadata": {}}', "[]", '{"weight_map": {}}'):
        (folder / "model.safetensors.index.json").write_text(text)
        with pytest.raises(CheckpointError, match=r"has no weight_map: not a transformers shard index"):
            resolve_model_dir(folder, cache)



def test_a_config_json_without_transformers_weights_is_not_a_transformers_folder(tmp_path, monkeypatch):
    folder = hf_folder(tmp_path / "hf")
    (folder / "model.safetensors.index.json").unlink()
    (folder / "pytorch_model.bin").unlink()
    commands = _fake_export(monkeypatch)
    resolve_model_dir(folder, tmp_path / "cache")  # the spec's rule for a folder: the "longclip" file
    assert commands[0][3] == str(folder / "longclip-TE-only.safetensors")


@needs_hub
def test_a_transformers_repo_downloads_its_config_and_every_shard_only(tmp_path, hub, monkeypatch):
    remote = hf_folder(tmp_path / "remote")
    (remote / "README.md").write_text("# a community conversion\n")
    asked = _fake_hub(monkeypatch, hub, remote)
    commands = _fake_export(monkeypatch)
    resolve_model_dir(HF_REPO, tmp_path / "cache")
    assert asked == ["manifest.json", "config.json", "model.safetensors", "model.safetensors.index.json",
                     "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                     "preprocessor_config.json"]
    snapshot = hub / "models--zer0int--LongCLIP-L-Diffusers" / "snapshots" / "feedbeef"
    assert commands[0][3] == str(snapshot)
    asked.clear()
    resolve_model_dir(HF_REPO, tmp_path / "cache")  # cached: nothing asked of the Hub, nothing exported again
    assert asked == [] and len(commands) == 1


def test_a_cached_transformers_snapshot_missing_a_shard_is_not_used(hub, tmp_path, monkeypatch, cache):
    remote = hf_folder(tmp_path / "remote")
    hf_layout(hub, HF_REPO, {name: remote / name for name in ("config.json", "model.safetensors.index.json",
                                                              "model-00001-of-00002.safetensors")})
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ModelDirError, match=r"as a Hugging Face repo id, in the Hugging Face cache .*\(not there\)"):
        resolve_model_dir(HF_REPO, cache)
