"""Torch-free LongCLIP scoring on ONNX Runtime: tokenizer, preprocessing, sessions, the spec'd operator."""

from typing import Any

from .errors import (
    CheckpointError,
    DeviceUnavailableError,
    ImageError,
    InputError,
    LongCLIPError,
    ModelDirError,
    ParityError,
    TextError,
)
from .model import LongCLIP
from .preprocess import preprocess_images
from .tokenizer import tokenize

__all__ = [
    "CheckpointError",
    "DeviceUnavailableError",
    "ImageError",
    "ImageLongCLIPEvaluator",
    "InputError",
    "LongCLIP",
    "LongCLIPError",
    "ModelDirError",
    "ParityError",
    "TextError",
    "preprocess_images",
    "tokenize",
]


def __getattr__(name: str) -> Any:
    # Resolved on first use: a DataFlow operator when DataFlow is installed, so importing this package never
    # imports DataFlow.
    if name == "ImageLongCLIPEvaluator":
        from .operator import evaluator_class

        return evaluator_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
