"""Logging for the command-line tools: messages on stderr, quiet when asked."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..contract.rows import IMAGE_KEY, OUTPUT_KEY, TEXT_KEY

F = TypeVar("F", bound=Callable[..., Any])


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
