"""What a run is asked to do (:class:`RunOptions`, every field in the resume fingerprint) and what it did
(:class:`RunSummary`): one home for both engines, the CLI and ``run_file``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..contract.constants import BATCH_SIZE, CHUNK_ROWS, MAX_PIXELS
from ..contract.errors import MISSING_FILE, error_code
from ..contract.rows import Columns, ItemScores
from ..inputs.webdataset import WdsOptions
from ..model.baseline import describe


@dataclass(frozen=True, kw_only=True)
class RunOptions(Columns):
    """What a run scores and how; every field is part of the resume fingerprint."""

    batch_size: int = BATCH_SIZE
    chunk_rows: int = CHUNK_ROWS
    max_pixels: int = MAX_PIXELS
    overwrite_columns: bool = False  # replace an input column named like the score or reason column
    # WebDataset inputs: which members are the image and the text, which json fields become columns
    wds_image_ext: tuple[str, ...] = WdsOptions.image_ext
    wds_text: str = WdsOptions.text
    wds_keep: tuple[str, ...] = WdsOptions.keep


@dataclass
class RunSummary:
    rows: int = 0
    scored: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    truncated: int | None = 0  # None: not counted (the Ray engine sees only the output columns)
    context_length: int = 0  # the length texts were cut at
    resumed_rows: int = 0
    seconds: float = 0.0
    provider: str = ""
    busy: dict[str, float] = field(default_factory=dict)  # seconds each tower ran (the local engine)
    decode: str = ""  # what decoded: "2 worker processes", "2 threads"
    cached: dict[str, int] = field(default_factory=dict)  # images / texts read from an embeddings folder
    scoring: bool = True  # False: --embed-only
    missing_example: str = ""  # the first missing_file reason: the path a relative image path was looked for at
    baseline: np.ndarray | None = None  # (P,) float32: mismatched pairs' scores (model.baseline); None: not drawn

    def add(self, result: ItemScores) -> None:
        self.add_codes(Counter(error_code(e) for e in result.errors))
        if not self.missing_example:
            self.missing_example = next((e for e in result.errors if error_code(e) == MISSING_FILE), "")
        if self.truncated is not None:
            self.truncated += int(result.truncated.sum())

    def add_codes(self, codes: Mapping[str, int]) -> None:
        """Count rows by error code, ``""`` meaning scored: ``{"": 10, "missing_file": 2}``."""
        for code, n in codes.items():
            self.rows += n
            if code:
                self.failed[code] += n
            else:
                self.scored += n

    @property
    def nothing_done(self) -> bool:
        """Rows came in and not one was scored (``--embed-only``: not one image or text embedded or found)."""
        if self.scoring:
            return self.rows > 0 and self.scored == 0
        return self.rows > 0 and not any(self.cached.values())

    def report(self) -> str:
        fresh = self.rows - self.resumed_rows
        rate = fresh / self.seconds if self.seconds > 0 else 0.0
        failed = ", ".join(f"{code} {n}" for code, n in self.failed.most_common()) or "none"
        lines = [f"rows {self.rows}: scored {self.scored}, failed {sum(self.failed.values())} ({failed})"
                 if self.scoring else f"rows {self.rows}: embedded, nothing scored (--embed-only); rows with a "
                 f"failed image or text {sum(self.failed.values())} ({failed})"]
        if self.truncated is not None:
            lines.append(f"texts cut at {self.context_length} tokens: {self.truncated}")
        lines.append(f"{rate:.1f} rows/s over {fresh} rows in {self.seconds:.1f} s on {self.provider}")
        if self.cached:
            c = self.cached
            lines.append(f"embeddings folder: {c['images added']} images and {c['texts added']} texts added; "
                         f"from the embeddings folder: {c['images cached']} images, {c['texts cached']} texts "
                         "(not decoded or encoded again)")
        if self.busy and self.seconds > 0:
            shares = ", ".join(f"{tower} tower {100 * t / self.seconds:.0f}%" for tower, t in self.busy.items())
            lines.append(f"model busy: {shares} of the time; decoding on {self.decode}")
        if self.resumed_rows:
            lines.append(f"resumed: {self.resumed_rows} rows were already scored")
        return "\n".join(lines)

    def baseline_line(self) -> str:
        """The mismatched-pair baseline's size and its 1 % / 0.1 % thresholds (``--baseline``)."""
        if self.baseline is None:
            return ("baseline: none (drawn while scoring; chunks kept by an older version for --resume have no "
                    "pairs: longclip-report -m MODEL draws one on a sample)")
        return describe(self.baseline)
