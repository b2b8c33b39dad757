"""Checkpoint files, torch-free: which file is one (from its first bytes), and which one a folder offers."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from ..contract.constants import CHECKPOINT_SUFFIXES
from ..contract.errors import CheckpointError
from ..contract.manifest import sha256_file

log = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # torch.save's legacy format: a pickled magic number
SAFETENSORS_HEADER_MAX = 100 * 2**20

EXPECTED = ("a state dict saved by torch.save (e.g. longclip-L@336px.pt) or a .safetensors file")


def checkpoint_format(path: str | os.PathLike[str]) -> str | None:
    """``"zip"`` or ``"legacy"`` (torch.save), ``"safetensors"``, or None for any other file, from its first bytes.

    >>> checkpoint_format(__file__) is None
    True
    """
    with open(path, "rb") as f:
        head = f.read(len(LEGACY_MAGIC))
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(LEGACY_MAGIC):
        return "legacy"
    if head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < SAFETENSORS_HEADER_MAX:
        return "safetensors"  # an 8-byte header length, then the JSON header
    return None


def not_a_checkpoint(path: str | os.PathLike[str]) -> str:
    """The one line that says ``path`` is not a checkpoint and what one is.

    >>> not_a_checkpoint("pairs.jsonl")
    "'pairs.jsonl' is not a checkpoint: expected a state dict saved by torch.save (e.g. longclip-L@336px.pt) or a .safetensors file"
    """
    return f"{os.fspath(path)!r} is not a checkpoint: expected {EXPECTED}"


def checkpoints_in(folder: Path) -> list[Path]:
    """Every file under ``folder`` whose suffix is a checkpoint's (``.pt/.bin/.ckpt/.safetensors``)."""
    return [p for p in folder.rglob("*") if p.suffix.lower() in CHECKPOINT_SUFFIXES and p.is_file()]


def pick_checkpoint(folder: Path) -> Path:
    """The spec's rule for a folder: a name containing "longclip" first, then sorted order (choice logged)."""
    found = sorted(checkpoints_in(folder), key=lambda p: ("longclip" not in p.name.lower(), str(p.relative_to(folder))))
    if not found:
        raise CheckpointError(f"no {'/'.join(CHECKPOINT_SUFFIXES)} file under {str(folder)!r}: pass the checkpoint "
                              "file itself or an exported model folder")
    if len(found) > 1:
        log.info("%d checkpoints under %s; using %s", len(found), folder, found[0])
    return found[0]


HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
"""A transformers folder's weights, in the order ``from_pretrained`` prefers them (an index names shards)."""


def is_hf_folder(folder: Path) -> bool:
    """Whether ``folder`` is laid out as transformers saves a model (``config.json`` beside one of
    ``HF_WEIGHTS``): that layout wins over loose checkpoint files in it (community repos also hold
    text-encoder-only files). A ``config.json`` beside other files alone is not one."""
    return folder.is_dir() and (folder / HF_CONFIG).is_file() and any((folder / n).is_file() for n in HF_WEIGHTS)


def shard_names(index: Path) -> list[str]:
    """The shard files an ``*.index.json`` maps weights to, sorted; each a plain name (beside the index)."""
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"cannot read {str(index)!r} ({exc}): download it again") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{str(index)!r} has no weight_map: not a transformers shard index; download it again")
    names = sorted({str(v) for v in weight_map.values()})
    bad = [n for n in names if Path(n).name != n or n in ("", ".", "..")]
    if bad:
        raise CheckpointError(f"{str(index)!r} names shard {bad[0]!r} outside its folder: refused")
    return names


def _shards(index: Path) -> list[Path]:
    """The shards of ``index``, each of which the folder must hold."""
    names = shard_names(index)
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise CheckpointError(f"{str(index)!r} names {len(missing)} shard(s) the folder lacks ({missing[0]}, ...): "
                              "download every shard (hf download REPO --local-dir DIR)")
    return [index.parent / n for n in names]


def hf_files(folder: Path) -> list[Path]:
    """``config.json``, then the weight files of a transformers folder (an index, then every shard it names).

    :class:`CheckpointError` when the folder has no weights or an index names a shard it lacks.
    """
    for name in HF_WEIGHTS:
        path = folder / name
        if path.is_file():
            weights = [path, *_shards(path)] if name.endswith(".index.json") else [path]
            return [folder / HF_CONFIG, *weights]
    raise CheckpointError(f"{str(folder)!r} has {HF_CONFIG} but none of {', '.join(HF_WEIGHTS)}: not a "
                          "transformers model folder")


def hf_complete(folder: Path) -> bool:
    """Whether ``folder`` is a transformers folder with every weight file it needs (a cached snapshot may not be)."""
    try:
        return is_hf_folder(folder) and bool(hf_files(folder))
    except CheckpointError:
        return False


def source_digest(source: Path) -> str:
    """The identity of what gets exported: a checkpoint file's sha256, or for a transformers folder the sha256 of
    each of its files (``hf_files``) by name, so that a changed config or any shard makes another export."""
    if not is_hf_folder(source):
        return sha256_file(source)
    return combined_digest({p.name: sha256_file(p) for p in hf_files(source)})


def combined_digest(digests: dict[str, str]) -> str:
    """One sha256 for several files: of their ``name NUL sha256`` lines, in the given order."""
    return hashlib.sha256("".join(f"{name}\0{digest}\n" for name, digest in digests.items()).encode()).hexdigest()
