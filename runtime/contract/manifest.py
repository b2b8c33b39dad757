"""``manifest.json``: everything a runtime needs to know about an exported model folder.

The exporter writes it through :func:`write_manifest`; runtimes read it through :func:`read_manifest` and
nothing else.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_bytes
from .constants import ATTENTIONS, CONTEXT_LENGTH, MANIFEST, PRECISIONS
from .errors import ModelDirError

SCHEMA_VERSION = 1
FORMAT = "longclip-onnx"


REEXPORT = "re-export with `longclip-export CHECKPOINT -o DIR`"
"""The fix for a model folder that does not hold what its manifest says."""

MAX_IMAGE_SIZE = 4096
"""Beyond any CLIP (L/14-336 is 336): a larger ``image.size`` is a damaged manifest, not a model."""

GRAPHS = ("vision", "text")


@dataclass(frozen=True)
class GraphFiles:
    """One graph's files, the ``.onnx`` first, then its external data, and the sha256 the manifest records for
    each of them (external data: only in manifests that have ``data_sha256``)."""

    files: tuple[Path, ...]
    sha256: dict[Path, str]


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
    # A row's outputs are a function of that row alone (CPU provider), whatever its batch: true for every fp32 and
    # fp16 folder, and for int8 folders whose activation scales are per row (manifest ``row_invariant``; int8
    # folders from before it have per-batch scales).
    row_invariant: bool
    graphs: dict[str, GraphFiles] = field(repr=False)  # "vision", "text"
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
    write_bytes(path, (json.dumps(body, indent=2, sort_keys=False) + "\n").encode())
    return path


def read_manifest(model_dir: str | os.PathLike[str]) -> Manifest:
    """Parse and check ``model_dir/manifest.json`` field by field; :class:`ModelDirError` names what is wrong.

    >>> read_manifest("models/tiny").image_size                 # doctest: +SKIP
    32
    """
    root = Path(model_dir)
    path = root / MANIFEST
    if not root.is_dir():
        raise ModelDirError(f"model directory {str(root)!r} does not exist: run `longclip-export CHECKPOINT -o DIR` first")
    if not path.is_file():
        raise ModelDirError(f"{str(root)!r} has no {MANIFEST}: not an exported LongCLIP model (run longclip-export)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise ModelDirError(f"cannot read {str(path)!r}: {exc}: {REEXPORT}") from None
    if not isinstance(raw, dict):
        raise _Fields(root, {}).bad("", raw, "a JSON object")
    if raw.get("format") != FORMAT or raw.get("schema_version") != SCHEMA_VERSION:
        raise ModelDirError(
            f"{str(path)!r} has format {raw.get('format')!r} schema {raw.get('schema_version')!r}; "
            f"this runtime reads {FORMAT!r} schema {SCHEMA_VERSION}: re-export with this version"
        )
    f = _Fields(root, raw)
    graphs = {name: f.graph(name) for name in GRAPHS}
    vision, text = graphs["vision"].files[0], graphs["text"].files[0]
    return Manifest(
        root=root,
        image_size=f.integer("image.size", 1, MAX_IMAGE_SIZE),
        mean=f.rgb("image.mean"),
        std=f.rgb("image.std", positive=True),
        context_length=f.integer("text.context_length", 1, CONTEXT_LENGTH),
        embed_dim=f.integer("embed_dim", 1),
        vision_graph=vision,
        text_graph=text,
        precision=f.choice("precision", PRECISIONS),
        variant=f.string("variant"),
        vision_sha256=graphs["vision"].sha256[vision],
        text_sha256=graphs["text"].sha256[text],
        attention=f.choice("attention", ATTENTIONS, default="explicit"),  # manifests from before --attention
        row_invariant=f.boolean("row_invariant", default=f.get("precision") != "int8"),
        graphs=graphs,
        raw=raw,
    )


_MISSING = object()
_SHA256 = re.compile(r"[0-9a-f]{64}")


class _Fields:
    """Typed reads of one manifest's fields; each problem is a one-line :class:`ModelDirError` that names the
    folder, the field, its value, what was expected, and the fix."""

    def __init__(self, root: Path, raw: dict[str, Any]):
        self.root, self.raw, self.resolved = root, raw, root.resolve()

    def bad(self, name: str, value: object, expected: str) -> ModelDirError:
        shown = repr(value)
        shown = shown if len(shown) <= 80 else f"{shown[:77]}..."
        return ModelDirError(f"model folder {str(self.root)!r}: {f'{MANIFEST} {name}'.strip()} is {shown}, expected "
                             f"{expected}: {REEXPORT}")

    def get(self, name: str, default: Any = _MISSING) -> Any:
        value: Any = self.raw
        for depth, key in enumerate(name.split(".")):
            if not isinstance(value, dict):
                raise self.bad(".".join(name.split(".")[:depth]), value, "an object")
            if key not in value:
                if default is not _MISSING:
                    return default
                raise ModelDirError(f"model folder {str(self.root)!r}: {MANIFEST} has no {name}: {REEXPORT}")
            value = value[key]
        return value

    def integer(self, name: str, low: int, high: int | None = None) -> int:
        value = self.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            raise self.bad(name, value, f"an integer in {low}..{high}" if high else f"an integer >= {low}")
        return value

    def rgb(self, name: str, positive: bool = False) -> tuple[float, float, float]:
        value = self.get(name)
        numbers = isinstance(value, list) and len(value) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
            for v in value)
        if not numbers:
            raise self.bad(name, value, f"3 finite numbers{', each > 0' if positive else ''}")
        return tuple(float(v) for v in value)  # type: ignore[return-value]

    def string(self, name: str) -> str:
        value = self.get(name)
        if not isinstance(value, str):
            raise self.bad(name, value, "a string")
        return value

    def boolean(self, name: str, default: Any = _MISSING) -> bool:
        value = self.get(name, default)
        if not isinstance(value, bool):
            raise self.bad(name, value, "true or false")
        return value

    def choice(self, name: str, options: tuple[str, ...], default: Any = _MISSING) -> str:
        value = self.get(name, default)
        if value not in options:
            raise self.bad(name, value, f"one of {', '.join(options)}")
        return value

    def sha256(self, name: str, value: object) -> str:
        if not isinstance(value, str) or not _SHA256.fullmatch(value.lower()):
            raise self.bad(name, value, "64 hex digits")
        return value.lower()

    def file(self, name: str, value: object) -> Path:
        """``value`` as a file of the folder: relative, no ``..``, and still inside it once symlinks resolve (or,
        in a Hugging Face snapshot, inside its repo's ``blobs``, where the snapshot's links point)."""
        if not isinstance(value, str) or not value or Path(value).is_absolute() or ".." in Path(value).parts:
            raise self.bad(name, value, "a file name inside the folder")
        path = self.root / value
        try:
            target = path.resolve()
            inside = any(target.is_relative_to(home) for home in self._homes())
            exists = path.is_file()
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
            inside = exists = False
        if not inside:
            raise self.bad(name, value, "a file that stays inside the folder once symlinks resolve")
        if not exists:
            raise ModelDirError(f"model folder {str(self.root)!r}: {MANIFEST} {name} names {value!r}, which is not "
                                "a file in the folder: the folder is incomplete; re-export or re-download it")
        return path

    def _homes(self) -> list[Path]:
        """Where the folder's files may really be: the folder, and for a hub snapshot its repo's blobs."""
        snapshots = self.resolved.parent
        blobs = [snapshots.parent / "blobs"] if snapshots.name == "snapshots" else []
        return [self.resolved, *blobs]

    def graph(self, tower: str) -> GraphFiles:
        """``graphs.<tower>``: its file and sha256, its external data files and (newer manifests) their sha256."""
        at = f"graphs.{tower}"
        main = self.file(f"{at}.file", self.get(f"{at}.file"))
        sha256 = {main: self.sha256(f"{at}.sha256", self.get(f"{at}.sha256"))}
        names = self.get(f"{at}.files", [])
        if not isinstance(names, list):
            raise self.bad(f"{at}.files", names, "a list of file names")
        data = [p for p in dict.fromkeys(self.file(f"{at}.files", n) for n in names) if p != main]
        hashes = self.get(f"{at}.data_sha256", {})
        if not isinstance(hashes, dict):
            raise self.bad(f"{at}.data_sha256", hashes, "an object of file name -> sha256")
        for name, digest in hashes.items():
            path = self.file(f"{at}.data_sha256", name)
            if path not in data:
                raise self.bad(f"{at}.data_sha256", name, f"one of {at}.files")
            sha256[path] = self.sha256(f"{at}.data_sha256[{name!r}]", digest)
        return GraphFiles((main, *data), sha256)
