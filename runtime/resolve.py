"""Every ``model_name`` the spec promises, turned into an exported model folder.

1. An exported folder (has ``manifest.json``): used as it is.
2. A checkpoint file, or a folder holding one (the spec's rule): exported once by ``longclip-export`` in a
   separate process (torch never enters this one) into a cache keyed by the checkpoint's sha256, then reused.
3. A Hugging Face repo id (``BeichenZhang/LongCLIP-L-336px``): its checkpoint is taken from the local Hugging Face
   cache, or downloaded with ``huggingface_hub`` when that is installed and the network allows; then as 2.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from .checkpoints import checkpoints_in as _checkpoints_in, pick_checkpoint
from .constants import CHECKPOINT_SUFFIXES, MANIFEST
from .errors import ModelDirError
from .manifest import sha256_file

log = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_root() -> Path:
    """``$LONGCLIP_CACHE``, else ``$XDG_CACHE_HOME/longclip``, else ``~/.cache/longclip``."""
    if os.environ.get("LONGCLIP_CACHE"):
        return Path(os.environ["LONGCLIP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "longclip"


def hf_hub_cache() -> Path:
    """Hugging Face's hub cache, as ``huggingface_hub`` finds it: ``HF_HUB_CACHE``, ``HF_HOME/hub``, default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home) / "hub"


def _from_hf_cache(repo_id: str) -> Path | None:
    repo = hf_hub_cache() / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    snapshots = [repo / "snapshots" / ref.read_text().strip()] if ref.is_file() else []
    snapshots += sorted((repo / "snapshots").glob("*")) if (repo / "snapshots").is_dir() else []
    for snapshot in snapshots:
        if snapshot.is_dir() and _checkpoints_in(snapshot):
            return snapshot
    return None


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelDirError(
            f"{repo_id!r} is not a local folder or file and not in the Hugging Face cache ({hf_hub_cache()}); "
            "pip install huggingface_hub to download it, or pass an exported folder or checkpoint path"
        ) from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=[f"*{s}" for s in CHECKPOINT_SUFFIXES]))
    except Exception as exc:  # network, auth, missing repo: huggingface_hub raises many types
        raise ModelDirError(f"cannot download {repo_id!r} from Hugging Face: {str(exc).splitlines()[0]}") from None


def export_cached(checkpoint: Path, cache: Path | None = None) -> Path:
    """The exported folder for ``checkpoint``, made once under ``cache/exports/<sha256>`` by ``longclip-export``."""
    digest = sha256_file(checkpoint)
    target = (cache or cache_root()) / "exports" / digest[:32]
    if (target / MANIFEST).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes asking for the same checkpoint export it once
        if (target / MANIFEST).is_file():
            return target
        log.info("exporting %s once into %s (later runs reuse it)", checkpoint, target)
        cmd = [sys.executable, "-m", "longclip.export.cli", str(checkpoint), "-o", str(target), "--overwrite", "-q"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            detail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
            if "No module named" in proc.stderr or "export extra" in proc.stderr:
                detail = ("exporting a checkpoint needs the export extra: pip install 'longclip[export]', or run "
                          f"`longclip-export {checkpoint} -o DIR` elsewhere and pass DIR")
            raise ModelDirError(f"cannot use checkpoint {str(checkpoint)!r}: {detail}")
    return target


def resolve_model_dir(model_name: str | os.PathLike[str], cache: Path | None = None) -> Path:
    """An exported model folder for any accepted ``model_name`` (see the module doc)."""
    path = Path(model_name)
    if path.is_dir() and (path / MANIFEST).is_file():
        return path
    if path.is_file():
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise ModelDirError(f"{str(path)!r} is not a checkpoint ({'/'.join(CHECKPOINT_SUFFIXES)}) or model folder")
        return export_cached(path, cache)
    if path.is_dir():
        return export_cached(pick_checkpoint(path), cache)
    name = os.fspath(model_name)
    if _REPO_ID.match(name):
        snapshot = _from_hf_cache(name) or _download(name)
        return export_cached(pick_checkpoint(snapshot), cache)
    raise ModelDirError(f"model {name!r} does not exist: pass an exported folder (longclip-export), a checkpoint "
                        "file or folder, or a Hugging Face repo id")
