"""Typed errors. Each message names the offending value, what was expected, and the fix."""

from __future__ import annotations


class LongCLIPError(Exception):
    """Base class of every error this package raises on purpose."""


class CheckpointError(LongCLIPError):
    """A checkpoint is missing, unreadable, unsafe, or not a LongCLIP state dict."""


class ExportError(LongCLIPError):
    """An exported graph does not match its declared contract."""


class ParityError(ExportError):
    """Exported graphs disagree with the PyTorch reference beyond tolerance."""


class ModelDirError(LongCLIPError):
    """An exported model directory is missing files or has an unreadable manifest."""


class DeviceUnavailableError(LongCLIPError):
    """The requested execution provider cannot run on this machine."""


class InputError(LongCLIPError):
    """A run-level input problem (bad file, unknown column, malformed line)."""


class ImageError(LongCLIPError):
    """One image cannot be read or decoded; row-level, reported per row."""


class TextError(LongCLIPError):
    """One text cannot be encoded (null, empty, not a string); row-level, reported per row."""
