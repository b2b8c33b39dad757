"""LongCLIP checkpoint -> verified ONNX towers (needs the ``export`` extra: torch, onnx).

Names are imported lazily so that ``longclip-export --help`` and a missing extra give a clear message.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_EXPORTS = {
    "ExportResult": ".build",
    "export_model": ".build",
    "derive_config": ".checkpoint",
    "load_reference": ".checkpoint",
    "load_state_dict": ".checkpoint",
    "LongCLIPReference": ".model",
    "LongCLIPConfig": ".model",
    "ExportError": "longclip.runtime.contract.errors",
    "ParityError": "longclip.runtime.contract.errors",
}
_ATTRIBUTES = {"LongCLIPReference": "LongCLIP"}  # public name -> the name in its module
_DEPRECATED = {"LongCLIP": "LongCLIPReference"}  # kept for one release: the runtime's LongCLIP is another class
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        warnings.warn(f"longclip.export.{name} (the PyTorch reference model) is deprecated and will be removed in the "
                      f"next release: use longclip.export.{_DEPRECATED[name]}; longclip.runtime.LongCLIP is the "
                      "ONNX Runtime model", DeprecationWarning, stacklevel=2)
        name = _DEPRECATED[name]
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), _ATTRIBUTES.get(name, name))
