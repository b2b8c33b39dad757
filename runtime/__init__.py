"""Torch-free LongCLIP scoring on ONNX Runtime: tokenizer, preprocessing, sessions, the spec'd operator.

Public names are resolved on first use, so importing a part that needs no model (``longclip.runtime.report``,
``longclip.runtime.contract.rows``) never imports ONNX Runtime, and nothing imports DataFlow unless asked for.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from typing import Any

_EXPORTS = {
    "CheckpointError": ".contract.errors",
    "DeviceUnavailableError": ".contract.errors",
    "EngineError": ".contract.errors",
    "ImageError": ".contract.errors",
    "InputError": ".contract.errors",
    "LongCLIPError": ".contract.errors",
    "ModelDirError": ".contract.errors",
    "RowError": ".contract.errors",
    "TextError": ".contract.errors",
    "WriteError": ".contract.errors",
    "LongCLIP": ".model.longclip",
    "preprocess_images": ".decode.preprocess",
    "tokenize": ".decode.tokenizer",
    "EmbeddingStore": ".embeddings.store",
    "RunOptions": ".engines.options",
    "RunSummary": ".engines.options",
    "run_file": ".engines.local",
}

_DEPRECATED = {  # name -> (where it lives now, what to import instead); kept for one release
    "ParityError": (".contract.errors", "longclip.export.ParityError (an exporter's error)"),
}

__all__ = sorted([*_EXPORTS, "ImageLongCLIPEvaluator"])


def __getattr__(name: str) -> Any:
    if name == "ImageLongCLIPEvaluator":
        return _evaluator_class()
    if name in _DEPRECATED:
        module, instead = _DEPRECATED[name]
        warnings.warn(f"longclip.runtime.{name} is deprecated and will be removed in the next release: use "
                      f"{instead}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module, __name__), name)
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)


@functools.cache
def _evaluator_class() -> type:
    """The DataFlow operator (``OperatorABC``, registered) when DataFlow is installed, else the plain class."""
    try:
        from .cli.dataflow_operator import ImageLongCLIPEvaluator
    except ImportError:  # no DataFlow, or an unrelated package named "dataflow"
        from .cli.operator import ImageLongCLIPEvaluator
    return ImageLongCLIPEvaluator


def __dir__() -> list[str]:
    return __all__
