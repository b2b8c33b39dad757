"""LongCLIP checkpoint -> verified ONNX towers (needs the ``export`` extra: torch, onnx).

Names are imported lazily so that ``longclip-export --help`` and a missing extra give a clear message.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ExportResult": ".build",
    "export_model": ".build",
    "derive_config": ".checkpoint",
    "load_reference": ".checkpoint",
    "load_state_dict": ".checkpoint",
    "LongCLIP": ".model",
    "LongCLIPConfig": ".model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
