"""Logging for the command-line tools: messages on stderr, quiet when asked."""

from __future__ import annotations

import logging
import sys


def configure_logging(quiet: bool) -> None:
    """Send this package's log records to stderr: INFO and up, or WARNING and up when ``quiet``."""
    logger = logging.getLogger("longclip")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
