"""Logging for the command-line tools: messages on stderr, quiet when asked."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .rows import IMAGE_KEY, OUTPUT_KEY, TEXT_KEY

F = TypeVar("F", bound=Callable[..., Any])


def configure_logging(quiet: bool) -> None:
    """Send this package's log records to stderr: INFO and up, or WARNING and up when ``quiet``."""
    logger = logging.getLogger("longclip")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


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
