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


class EngineError(LongCLIPError):
    """A run engine cannot start or finish: Ray Data missing, a cluster unreachable or too small, a failed job."""


class RowError(LongCLIPError):
    """A problem with one row: reported in its error column as ``"<code>: <detail>"``, never stopping a run."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code


def error_code(reason: str) -> str:
    """The code of a row's reason as written in its error column (``""`` for a scored row).

    >>> error_code("missing_file: image not found: 'a.png'")
    'missing_file'
    """
    return reason.split(":", 1)[0]


class ImageError(RowError):
    """One image cannot be read: null_path, bad_path, missing_file, directory, empty_file, not_an_image,
    too_many_pixels, undecodable."""


class TextError(RowError):
    """One text cannot be encoded: null_text, not_text, empty_text, too_long."""
