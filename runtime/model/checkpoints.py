"""Checkpoint files, torch-free: which file is one (from its first bytes), and which one a folder offers."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .constants import CHECKPOINT_SUFFIXES
from .errors import CheckpointError

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
