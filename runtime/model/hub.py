"""Hugging Face Hub repos as models: an exported folder used as it is, or a checkpoint to export.

A repo whose snapshot holds ``manifest.json`` and the graphs it names is an exported folder: it is used from the
local Hugging Face cache as it lies (torch-free), or downloaded file by file with ``huggingface_hub`` (when
installed): the manifest first, then only the files its ``graphs.*.files`` name, each checked against the sha256
the manifest records for it. Any other repo is searched for a checkpoint, which :mod:`.resolve` exports once.

Nothing is downloaded unless a repo id was named and ``huggingface_hub`` is installed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from .checkpoints import checkpoints_in
from .constants import CHECKPOINT_SUFFIXES, MANIFEST
from .errors import LongCLIPError, ModelDirError
from .manifest import sha256_file

log = logging.getLogger(__name__)


def hf_hub_cache() -> Path:
    """Hugging Face's hub cache, as ``huggingface_hub`` finds it: ``HF_HUB_CACHE``, ``HF_HOME/hub``, default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home) / "hub"


def repo_cache(repo_id: str) -> Path:
    """Where ``huggingface_hub`` keeps ``repo_id``'s files.

    >>> repo_cache("BeichenZhang/LongCLIP-L-336px").name
    'models--BeichenZhang--LongCLIP-L-336px'
    """
    return hf_hub_cache() / f"models--{repo_id.replace('/', '--')}"


def manifest_files(manifest: object) -> list[str]:
    """The files an exported folder needs besides ``manifest.json``: each graph and its external data.

    >>> manifest_files({"graphs": {"vision": {"file": "vision.onnx", "files": ["vision.onnx", "vision.onnx.data"]},
    ...                            "text": {"file": "text.onnx"}}})
    ['vision.onnx', 'vision.onnx.data', 'text.onnx']
    """
    names: list[str] = []
    for graph in _graphs(manifest):
        for name in graph.get("files") or [graph.get("file")]:
            if isinstance(name, str) and name not in names:
                names.append(name)
    return names


def _graphs(manifest: object) -> list[dict]:
    """The manifest's graph entries; a malformed manifest gives none here, and ``read_manifest`` names the fault."""
    graphs = manifest.get("graphs") if isinstance(manifest, dict) else None
    return [g for g in graphs.values() if isinstance(g, dict)] if isinstance(graphs, dict) else []


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"cannot read {str(path)!r}: {exc}: delete it from the Hugging Face cache and "
                            "retry") from None


def is_exported(folder: Path) -> bool:
    """Whether ``folder`` holds ``manifest.json`` and every file it names."""
    manifest = folder / MANIFEST
    return manifest.is_file() and all((folder / name).is_file() for name in manifest_files(_read_json(manifest)))


def _snapshots(repo_id: str) -> Iterator[Path]:
    repo = repo_cache(repo_id)
    ref = repo / "refs" / "main"
    if ref.is_file():
        yield repo / "snapshots" / ref.read_text().strip()
    if (repo / "snapshots").is_dir():
        yield from sorted((repo / "snapshots").iterdir())


def cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot of ``repo_id`` to use: ``refs/main``'s first, then any other, that is an exported folder
    or holds a checkpoint; None when the cache has none."""
    for snapshot in _snapshots(repo_id):
        if snapshot.is_dir() and (is_exported(snapshot) or checkpoints_in(snapshot)):
            return snapshot
    return None


def _not_found_type() -> type[BaseException]:
    """``huggingface_hub``'s error for a file the repo does not have (not: a file the offline cache lacks)."""
    from huggingface_hub import errors

    return getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)


def _check_sha256(repo_id: str, path: Path, want: str | None) -> None:
    if want and sha256_file(path) != want:
        raise ModelDirError(f"{repo_id!r}: {path.name} does not match the sha256 its {MANIFEST} records "
                            f"({want[:12]}...): the download is damaged or the repo's files do not match; delete "
                            f"{str(repo_cache(repo_id))!r} and retry, or upload the exported folder again")


def _download_exported(repo_id: str, manifest_path: Path) -> Path:
    """The rest of an exported folder, next to its downloaded manifest (same revision)."""
    from huggingface_hub import hf_hub_download

    snapshot = manifest_path.parent
    manifest = _read_json(manifest_path)
    digests = {g.get("file"): g.get("sha256") for g in _graphs(manifest)}
    files = manifest_files(manifest)
    log.info("downloading %s (an exported folder) from the Hugging Face Hub: %s", repo_id, ", ".join(files))
    for name in files:
        try:
            path = Path(hf_hub_download(repo_id, name, revision=snapshot.name))
        except _not_found_type():
            raise ModelDirError(f"{repo_id!r}: its {MANIFEST} names {name}, which the repo does not have: upload the "
                                f"whole exported folder (hf upload {repo_id} DIR .)") from None
        _check_sha256(repo_id, path, digests.get(name))
    return snapshot


def download(repo_id: str, export_possible: bool = True) -> Path:
    """Download ``repo_id`` with ``huggingface_hub``: its exported folder, else its checkpoint(s); the snapshot.

    ``export_possible=False`` (no torch here) refuses a checkpoint repo before downloading gigabytes that could
    not be used.
    """
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
    except ImportError:
        raise ModelDirError(
            f"model {repo_id!r} is not a local folder or file, and not in the Hugging Face cache "
            f"({hf_hub_cache()}): pip install huggingface_hub to download it, or pass an exported folder or a "
            "checkpoint"
        ) from None
    try:
        try:
            manifest = Path(hf_hub_download(repo_id, MANIFEST))
        except _not_found_type():
            manifest = None  # no manifest.json: a checkpoint repo
        if manifest is not None:
            return _download_exported(repo_id, manifest)
        if not export_possible:
            raise ModelDirError(
                f"{repo_id!r} holds a checkpoint, not an exported folder, and exporting it needs the export extra: "
                "pip install 'longclip[export]', or export it on a machine with torch and pass that folder or a "
                "repo it was uploaded to (README, 'Real checkpoints')"
            )
        log.info("downloading %s's checkpoint from the Hugging Face Hub", repo_id)
        return Path(snapshot_download(repo_id, allow_patterns=[f"*{s}" for s in CHECKPOINT_SUFFIXES]))
    except LongCLIPError:
        raise
    except Exception as exc:  # network, auth, missing repo: huggingface_hub raises many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelDirError(f"cannot download {repo_id!r} from the Hugging Face Hub ({first}): check the repo id "
                            "and the network, or pass a local folder") from None
