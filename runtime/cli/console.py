"""Logging for the command-line tools: messages on stderr, quiet when asked; a stderr that cannot take them
(closed, a pipe whose reader exited, a full device) costs the messages, never the run."""

from __future__ import annotations

import io
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..contract.rows import IMAGE_KEY, OUTPUT_KEY, TEXT_KEY

F = TypeVar("F", bound=Callable[..., Any])


class _DroppingStderr(io.RawIOBase):
    """File descriptor 2 as a raw stream whose writes never fail: what it cannot take is dropped. Under every
    layer that writes to stderr (logging, tqdm, ``click.echo``, Python's own), so none of them can end a run."""

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        try:
            return os.write(2, data)
        except OSError:  # EPIPE (its reader exited), EBADF, ENOSPC (/dev/full), EAGAIN (a full non-blocking pipe)
            return len(data)

    def fileno(self) -> int:
        return 2

    def isatty(self) -> bool:
        try:
            return os.isatty(2)
        except OSError:
            return False


def tolerate_broken_stderr() -> None:
    """Make messages on stderr best-effort for a command-line tool: a closed descriptor 0, 1 or 2 is opened on
    ``/dev/null`` (else the next file opened would take its number, and the messages would go into it), and
    ``sys.stderr`` drops what its descriptor refuses. Call first in a CLI's ``main``, before logging is set up.

    Only the process's own stderr is replaced: a ``sys.stderr`` that a caller has put there (click's ``CliRunner``,
    pytest's capture, an application calling ``main`` in-process) is the caller's and is left as it is."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:  # the lowest free number: fd itself, unless a lower one was closed too (opened first)
                os.dup2(null, fd)
                os.close(null)
    old = sys.stderr
    if old is not sys.__stderr__:  # None for both when fd 2 was closed at start-up
        return
    encoding = getattr(old, "encoding", None) or "utf-8"
    sys.stderr = io.TextIOWrapper(io.BufferedWriter(_DroppingStderr()), encoding=encoding, errors="backslashreplace",
                                  line_buffering=True, write_through=True)


def configure_logging(quiet: bool) -> None:
    """Send this package's log records to stderr: INFO and up, or WARNING and up when ``quiet``."""
    logger = logging.getLogger("longclip")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def run_seconds() -> float:
    """Seconds since this process started (interpreter and imports included), from ``/proc``; elsewhere since the
    first call (made when a command starts)."""
    try:
        with open("/proc/self/stat") as stat:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime, after boot
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.perf_counter() - _FIRST_CALL.setdefault("t", time.perf_counter())


_FIRST_CALL: dict[str, float] = {}


def version_option() -> Callable[[F], F]:
    """``--version``, as every command prints it: ``longclip-run 0.1.0`` (the installed ``longclip``'s version)."""
    return click.version_option(package_name="longclip", message="%(prog)s %(version)s")


def column_options(score_help: str) -> Callable[[F], F]:
    """``--image-key``, ``--text-key``, ``--output-key`` and ``--image-root``, as every command spells them."""
    options = [
        click.option("--image-key", default=IMAGE_KEY, show_default=True, help="Column holding image paths."),
        click.option("--text-key", default=TEXT_KEY, show_default=True, help="Column holding texts."),
        click.option("--output-key", default=OUTPUT_KEY, show_default=True, help=score_help),
        click.option("--image-root", default=None,
                     help="Folder that relative image paths resolve against [default: the current directory]."),
    ]

    def apply(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return apply
