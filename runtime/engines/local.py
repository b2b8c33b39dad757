"""``longclip-run``'s local engine: stream a table through the model in fixed chunks, resumably, atomically.

:func:`plan_file` checks everything that can be checked before a model loads (the input scanned, its columns,
the output, the output's lock) and :func:`execute` trusts it. Pass 1 scores chunk after chunk and keeps each
chunk's result (scores, reasons, truncation) as a small file in a work folder beside the output. Pass 2 streams
the input again, joins the results and writes the output through a temporary file. A run killed at any point
resumes (``resume=True``) from its finished chunks; because chunks are the same on every pass and pass 2 is the
same code either way, the final file equals an uninterrupted run's. One run per output at a time (``OutputLock``).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType

import numpy as np

from ..constants import BATCH_SIZE
from ..errors import InputError, error_code
from ..lock import OutputLock
from ..model import LongCLIP
from ..prefetch import input_pool
from ..preprocess import MAX_PIXELS
from ..rows import Columns, check_columns, check_image_root, check_output_columns, no_rows, with_scores
from ..tables import TableReader, TableWriter, same_file
from .chunk import CHUNK_ROWS, ChunkResult, score_chunk

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RunOptions(Columns):
    """What a run scores and how; every field is part of the resume fingerprint."""

    batch_size: int = BATCH_SIZE
    chunk_rows: int = CHUNK_ROWS
    max_pixels: int = MAX_PIXELS
    overwrite_columns: bool = False  # replace an input column named like the score or reason column


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

    def add(self, result: ChunkResult) -> None:
        self.add_codes(Counter(error_code(e) for e in result.errors))
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

    def report(self) -> str:
        fresh = self.rows - self.resumed_rows
        rate = fresh / self.seconds if self.seconds > 0 else 0.0
        failed = ", ".join(f"{code} {n}" for code, n in self.failed.most_common()) or "none"
        lines = [f"rows {self.rows}: scored {self.scored}, failed {sum(self.failed.values())} ({failed})"]
        if self.truncated is not None:
            lines.append(f"texts cut at {self.context_length} tokens: {self.truncated}")
        lines.append(f"{rate:.1f} rows/s over {fresh} rows in {self.seconds:.1f} s on {self.provider}")
        if self.resumed_rows:
            lines.append(f"resumed: {self.resumed_rows} rows were already scored")
        return "\n".join(lines)


def work_dir_for(output: Path) -> Path:
    return output.parent / f".{output.name}.longclip-run"


@dataclass
class LocalPlan:
    """A checked run: the input scanned, columns and output checked, the output locked and its writer open.
    Use it in a ``with`` block (or call :meth:`close`): a plan that is not executed leaves nothing behind."""

    reader: TableReader
    output: Path
    opts: RunOptions
    resume: bool
    lock: OutputLock
    writer: TableWriter

    def close(self) -> None:
        try:
            self.writer.abort()  # nothing, once committed
        finally:
            self.lock.release()

    def __enter__(self) -> LocalPlan:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def plan_file(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str],
              opts: RunOptions = RunOptions(), resume: bool = False) -> LocalPlan:
    """Check a run before any model loads; :class:`InputError` names the first problem. Holds the output's lock
    from here on, so a second run on the same output is refused now, not after its model loads."""
    reader = TableReader(input_path)
    check_columns(reader.columns, {opts.image_key: "--image-key", opts.text_key: "--text-key"})
    check_output_columns(reader.columns, opts.output_key, opts.overwrite_columns)
    check_image_root(opts.image_root)
    output = Path(output_path)
    if same_file(reader.path, output):
        raise InputError(f"output {str(output)!r} is the input file: choose another output (the input is never "
                         "overwritten)")
    TableWriter.check(output)
    lock = OutputLock(output)
    lock.acquire()
    try:
        for stale in output.parent.glob(f".{glob.escape(output.name)}.*.partial*"):
            stale.unlink(missing_ok=True)  # left by a run killed while writing its output (we hold its lock)
        writer = TableWriter(output)
    except BaseException:
        lock.release()
        raise
    return LocalPlan(reader, output, opts, resume, lock, writer)


def _fingerprint(reader: TableReader, model: LongCLIP, opts: RunOptions) -> dict[str, object]:
    stat = reader.path.stat()
    return {
        "input": str(reader.path.resolve()),
        "input_size": stat.st_size,
        "input_mtime_ns": stat.st_mtime_ns,
        "model": [model.manifest.vision_sha256, model.manifest.text_sha256],
        "options": asdict(opts),
    }


def _save_part(path: Path, result: ChunkResult) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, scores=result.scores, errors=np.array(result.errors, dtype=str), truncated=result.truncated)
    os.replace(tmp, path)


def _load_part(path: Path) -> ChunkResult:
    with np.load(path, allow_pickle=False) as data:
        return ChunkResult(data["scores"], [str(e) for e in data["errors"]], data["truncated"])


def _prepare_work_dir(work: Path, state: dict[str, object], resume: bool) -> None:
    state_file = work / "state.json"
    if resume and state_file.is_file():
        previous = json.loads(state_file.read_text())
        changed = [k for k in state if previous.get(k) != state[k]]
        if changed:
            raise InputError(f"cannot resume: {', '.join(changed)} changed since the interrupted run; "
                             "run again without --resume to start over")
        return
    if work.exists():
        log.info("starting over: removing the unfinished run in %s", work)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    state_file.write_text(json.dumps(state, indent=1))


def execute(plan: LocalPlan, model: LongCLIP, progress: bool | None = None,
            workers: int | None = None) -> RunSummary:
    """Score the planned run with ``model`` (see the module doc); the plan's checks are not repeated."""
    from tqdm import tqdm

    start = time.perf_counter()
    reader, opts = plan.reader, plan.opts
    work = work_dir_for(plan.output)
    _prepare_work_dir(work, _fingerprint(reader, model, opts), plan.resume)
    root = Path(opts.image_root) if opts.image_root is not None else None
    summary = RunSummary(provider=model.provider, context_length=model.manifest.context_length)
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=reader.n_rows, unit="rows", file=sys.stderr, disable=not show, dynamic_ncols=True) as bar, \
            input_pool(workers) as pool:
        for index, chunk in enumerate(reader.chunks(opts.chunk_rows)):
            part = work / f"chunk-{index:07d}.npz"
            if part.is_file():
                result = _load_part(part)
                summary.resumed_rows += len(result.errors)
            else:
                result = score_chunk(model, chunk[opts.image_key].tolist(), chunk[opts.text_key].tolist(), root,
                                     opts.batch_size, opts.max_pixels, pool)
                _save_part(part, result)
            summary.add(result)
            bar.update(len(chunk))
    writer = plan.writer
    for index, chunk in enumerate(reader.chunks(opts.chunk_rows)):
        result = _load_part(work / f"chunk-{index:07d}.npz")
        writer.write(with_scores(chunk, result.scores, result.errors, opts.output_key))
    if reader.n_rows == 0:  # still write the header / schema
        writer.write(no_rows(reader.columns, opts.output_key))
    writer.commit()
    shutil.rmtree(work)
    summary.seconds = time.perf_counter() - start
    return summary


def run_file(model: LongCLIP, input_path: str | os.PathLike[str], output_path: str | os.PathLike[str],
             opts: RunOptions = RunOptions(), resume: bool = False, progress: bool | None = None,
             workers: int | None = None) -> RunSummary:
    """Score every row of ``input_path`` into ``output_path``; formats by extension. See the module doc.

    >>> run_file(LongCLIP("models/tiny"), "pairs.jsonl", "scored.parquet")    # doctest: +SKIP
    """
    with plan_file(input_path, output_path, opts, resume) as plan:
        return execute(plan, model, progress, workers)
