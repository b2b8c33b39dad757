"""Torch-free LongCLIP scoring on ONNX Runtime: tokenizer, preprocessing, sessions, the spec'd operator."""

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
from .operator import ImageLongCLIPEvaluator
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
