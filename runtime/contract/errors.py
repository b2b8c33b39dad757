"""Typed errors. Each message names the offending value, what was expected, and the fix."""

from __future__ import annotations

import errno
import resource  # imported up front: an import opens files, which a process out of them cannot


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


class WriteError(LongCLIPError):
    """An output cannot be written: a full disk, a lost permission, a quota. Names the path and the errno."""


def write_error(path: object, exc: OSError, kept: str = "") -> WriteError:
    """One line: the path, the errno and what to do (``kept`` says what stays for ``--resume``)."""
    code = f"[Errno {exc.errno}] " if exc.errno else ""
    return WriteError(f"cannot write {str(path)!r}: {code}{exc.strerror or exc}{kept}")


def files_limit(exc: OSError, doing: str) -> str | None:
    """The one line for running out of file descriptors while ``doing`` something: the limit and the ways out;
    None for any other error.

    >>> files_limit(OSError(errno.EMFILE, "Too many open files"), "reading a graph").split(" (")[0]
    '[Errno 24] Too many open files while reading a graph'
    """
    if exc.errno not in (errno.EMFILE, errno.ENFILE):
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return (f"[Errno {exc.errno}] {exc.strerror} while {doing} (this process may have {soft} open files: ulimit -n): "
            "raise the limit (ulimit -n 4096), or run with --decode-workers 0 to decode in this process")


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


# Row reason codes: the text before the first ":" of a row's error column. One home for each; the README lists
# them under "Each row problem".
NULL_PATH = "null_path"  # the image cell is null
BAD_PATH = "bad_path"  # not a usable path: not a string, blank, invalid unicode, a symlink loop, too long
MISSING_FILE = "missing_file"
DIRECTORY = "directory"
NOT_A_FILE = "not_a_file"  # a FIFO, a device, a socket: never opened
UNREADABLE = "unreadable"  # permission denied
EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
UNDECODABLE = "undecodable"  # truncated, corrupt, or any decoder failure
TOO_MANY_PIXELS = "too_many_pixels"
DECODER_CRASHED = "decoder_crashed"  # the decode worker died on this image (it is replaced)
DECODE_TIMEOUT = "decode_timeout"  # one image took longer than --decode-timeout (the worker is replaced)
NULL_TEXT = "null_text"
NOT_TEXT = "not_text"
EMPTY_TEXT = "empty_text"
BAD_TEXT = "bad_text"  # invalid unicode (lone surrogates)
TOO_LONG = "too_long"  # tokenize(..., truncate=False) only
BAD_ENCODING = "bad_encoding"  # a jsonl line that is not UTF-8
CORRUPT_SHARD = "corrupt_shard"  # one row for the rest of a WebDataset shard that stops being a valid tar
DUPLICATE_MEMBER = "duplicate_member"  # a WebDataset sample with two image (or text) members: which is meant?
NON_FINITE = "non_finite_embedding"  # no unit vector from the model: NaN, inf or zeros (an fp16 overflow)

IMAGE_CODES = (NULL_PATH, BAD_PATH, MISSING_FILE, DIRECTORY, NOT_A_FILE, UNREADABLE, EMPTY_FILE, NOT_AN_IMAGE,
               UNDECODABLE, TOO_MANY_PIXELS, DECODER_CRASHED, DECODE_TIMEOUT)
TEXT_CODES = (NULL_TEXT, NOT_TEXT, EMPTY_TEXT, BAD_TEXT, TOO_LONG)
SHARD_CODES = (CORRUPT_SHARD, DUPLICATE_MEMBER)  # a WebDataset sample's, neither its image's nor its text's


class ImageError(RowError):
    """One image cannot be read; ``code`` is one of ``IMAGE_CODES``."""


class TextError(RowError):
    """One text cannot be encoded; ``code`` is one of ``TEXT_CODES``."""
