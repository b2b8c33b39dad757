"""What an embeddings folder's vectors depend on, in ``model.json``: the graphs (by sha256), their precision, the
embedding size and the stored dtype (:class:`StoreIdentity`); the folder's format name and version."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..contract.constants import EMBEDDING_DTYPES

if TYPE_CHECKING:
    from ..contract.manifest import Manifest

FORMAT = "longclip-embeddings"
SCHEMA_VERSION = 1
MODEL_JSON = "model.json"
DTYPES = EMBEDDING_DTYPES

@dataclass(frozen=True)
class StoreIdentity:
    """What the embeddings of a folder depend on: the graphs (by sha256), their precision, the embedding size, and
    the dtype they are stored in. ``variant`` is informational (it follows from the graphs)."""

    vision_sha256: str
    text_sha256: str
    variant: str
    precision: str
    embed_dim: int
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"embeddings dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if isinstance(self.embed_dim, bool) or not isinstance(self.embed_dim, int) or self.embed_dim < 1:
            raise ValueError(f"embed_dim {self.embed_dim!r} is not an integer >= 1")

    @classmethod
    def of(cls, manifest: Manifest, dtype: str = "float32") -> StoreIdentity:
        """The identity of embeddings made by the model of ``manifest``, stored as ``dtype``."""
        return cls(manifest.vision_sha256, manifest.text_sha256, manifest.variant, manifest.precision,
                   manifest.embed_dim, dtype)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "schema_version": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: Any) -> StoreIdentity:
        """``ValueError`` naming the first field that is missing or wrong."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT!r} object")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"schema_version {data.get('schema_version')!r}, this code reads {SCHEMA_VERSION}")
        fields = {name: data.get(name) for name in cls.__dataclass_fields__}
        for name, value in fields.items():
            if not isinstance(value, int if name == "embed_dim" else str):
                raise ValueError(f"{name} is {value!r}")
        return cls(**fields)

    def differences(self, stored: StoreIdentity) -> list[str]:
        """What differs from ``stored`` (variant aside), one phrase each.

        >>> a = StoreIdentity("a" * 64, "b" * 64, "ViT-B/16", "fp32", 512)
        >>> a.differences(StoreIdentity("a" * 64, "b" * 64, "ViT-B/16", "fp16", 512, "float16"))
        ['precision fp32 (the folder: fp16)', 'dtype float32 (the folder: float16)']
        """
        names = {"vision_sha256": "vision graph sha256", "text_sha256": "text graph sha256"}
        return [f"{names.get(name, name)} {_short(getattr(self, name))} (the folder: {_short(getattr(stored, name))})"
                for name in ("vision_sha256", "text_sha256", "precision", "embed_dim", "dtype")
                if getattr(self, name) != getattr(stored, name)]



def read_identity(path: Path) -> tuple[StoreIdentity | None, str]:
    """``(identity, "")``, ``(None, "")`` when there is no file, or ``(None, what is wrong)``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, ""
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"unreadable ({getattr(exc, 'strerror', None) or exc})"
    try:
        return StoreIdentity.from_json(json.loads(text)), ""
    except (ValueError, RecursionError) as exc:
        return None, f"not valid ({clip(str(exc), 120)})"



def _short(value: object) -> str:
    text = str(value)
    return f"{text[:12]}..." if len(text) > 16 else text



def clip(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters for a message (``...`` marks the cut)."""
    return text if len(text) <= limit else f"{text[:limit - 3]}..."
