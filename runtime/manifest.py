"""``manifest.json``: everything a runtime needs to know about an exported model folder.

The exporter writes it through :func:`write_manifest`; runtimes read it through :func:`read_manifest` and
nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .constants import MANIFEST
from .errors import ModelDirError

SCHEMA_VERSION = 1
FORMAT = "longclip-onnx"


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest of an exported model folder."""

    root: Path
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    context_length: int
    embed_dim: int
    vision_graph: Path
    text_graph: Path
    precision: str
    variant: str
    vision_sha256: str
    text_sha256: str
    attention: str  # "fused" (ONNX Runtime's Attention op) or "explicit" (plain ONNX)
    raw: dict[str, Any] = field(repr=False)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(model_dir: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write ``data`` (with schema version and format stamped in) as ``model_dir/manifest.json``."""
    path = Path(model_dir) / MANIFEST
    body = {"schema_version": SCHEMA_VERSION, "format": FORMAT, **data}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(body, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(model_dir: str | os.PathLike[str]) -> Manifest:
    """Parse and check ``model_dir/manifest.json``; :class:`ModelDirError` names what is wrong."""
    root = Path(model_dir)
    path = root / MANIFEST
    if not root.is_dir():
        raise ModelDirError(f"model directory {str(root)!r} does not exist: run `longclip-export CHECKPOINT -o DIR` first")
    if not path.is_file():
        raise ModelDirError(f"{str(root)!r} has no {MANIFEST}: not an exported LongCLIP model (run longclip-export)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"cannot read {str(path)!r}: {exc}") from None
    if raw.get("format") != FORMAT or raw.get("schema_version") != SCHEMA_VERSION:
        raise ModelDirError(
            f"{str(path)!r} has format {raw.get('format')!r} schema {raw.get('schema_version')!r}; "
            f"this runtime reads {FORMAT!r} schema {SCHEMA_VERSION}: re-export with this version"
        )
    try:
        manifest = Manifest(
            root=root,
            image_size=int(raw["image"]["size"]),
            mean=tuple(float(v) for v in raw["image"]["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in raw["image"]["std"]),  # type: ignore[arg-type]
            context_length=int(raw["text"]["context_length"]),
            embed_dim=int(raw["embed_dim"]),
            vision_graph=root / raw["graphs"]["vision"]["file"],
            text_graph=root / raw["graphs"]["text"]["file"],
            precision=str(raw["precision"]),
            variant=str(raw["variant"]),
            vision_sha256=str(raw["graphs"]["vision"]["sha256"]),
            text_sha256=str(raw["graphs"]["text"]["sha256"]),
            attention=str(raw.get("attention", "explicit")),  # manifests from before --attention: plain ONNX
            raw=raw,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelDirError(f"{str(path)!r} is missing or has a malformed field ({exc!r}): re-export the model") from None
    for graph in (manifest.vision_graph, manifest.text_graph):
        if not graph.is_file():
            raise ModelDirError(f"{str(path)!r} names {graph.name!r}, which is not in {str(root)!r}: re-export the model")
    return manifest
