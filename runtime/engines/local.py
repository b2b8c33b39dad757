"""``longclip-run``'s local engine: stream a table through the model in fixed chunks, resumably, atomically.

:func:`plan_file` checks everything that can be checked before a model loads (the input scanned, its columns,
the output, the output's lock) and :func:`execute` trusts it. Pass 1 scores chunk after chunk and keeps each
chunk's result (scores, reasons, truncation) as a small file in a work folder beside the output. Pass 2 streams
the input again, joins the results and writes the output through a temporary file. A run killed at any point
resumes (``resume=True``) from its finished chunks; because chunks are the same on every pass and pass 2 is the
same code either way, the final file equals an uninterrupted run's. One run per output at a time (``OutputLock``).
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shlex
import shutil
import stat
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from ..contract.atomic import write_bytes
from ..contract.constants import BATCH_SIZE
from ..contract.errors import InputError, WriteError, error_code, write_error
from ..contract.rows import (
    Columns,
    check_columns,
    check_image_root,
    check_output_columns,
    no_rows,
    output_schema,
    with_scores,
)
from ..decode.pool import DecodePool, ThreadPool
from ..decode.preprocess import MAX_PIXELS
from ..embeddings.store import EmbeddingStore
from ..inputs.tables import TableReader, same_file
from ..inputs.webdataset import WdsOptions, WdsReader, is_webdataset
from ..model.longclip import LongCLIP
from ..outputs.lock import OutputLock
from ..outputs.writers import TableWriter
from .chunk import CHUNK_ROWS, default_pool
from .pipeline import ChunkResult, Pipeline, Work

log = logging.getLogger(__name__)


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
        lines = [f"rows {self.rows}: scored {self.scored}, failed {sum(self.failed.values())} ({failed})"
                 if self.scoring else f"rows {self.rows}: embedded, nothing scored (--embed-only)"]
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


def work_dir_for(output: Path) -> Path:
    return output.parent / f".{output.name}.longclip-run"


def check_work_dir(work: Path) -> None:
    """Refuse a work folder path that holds something other than a folder: a file, or a symbolic link (never
    followed, wherever it points; removing or resuming through it would act on another folder)."""
    try:
        mode = os.lstat(work).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise write_error(work, exc) from None
    if stat.S_ISDIR(mode):
        return
    what = "a symbolic link (never followed)" if stat.S_ISLNK(mode) else "not a folder"
    raise InputError(f"work folder {str(work)!r} of this output is {what}: remove it (rm {shlex.quote(str(work))}) "
                     "and run again (its finished chunks, if any, are lost)")


def _finished_part(path: Path, rows: int) -> ChunkResult | None:
    """The kept result of a finished chunk of ``rows`` rows, or None when there is none to trust: what is at
    ``path`` is removed (a symbolic link is never followed) and its rows are scored again, said in one line."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode):
        try:
            result = _load_part(path)
            if not (len(result.scores) == len(result.errors) == len(result.truncated) == rows
                    and result.scores.dtype == np.float32 and result.truncated.dtype == bool):
                raise ValueError(f"it holds {len(result.scores)} rows, not {rows}, or other types")
            return result
        except Exception as exc:  # noqa: BLE001 - whatever a damaged file raises, it does not verify
            why = f"{type(exc).__name__}: {exc}"
    else:
        why = "a symbolic link" if stat.S_ISLNK(mode) else "not a file"
    log.warning("chunk %r of the interrupted run does not verify (%.200s): scoring its %d rows again", str(path), why,
                rows)
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
    else:
        path.unlink()
    return None


@dataclass
class LocalPlan:
    """A checked run: the input scanned, columns and output checked, the output locked and its writer open.
    Use it in a ``with`` block (or call :meth:`close`): a plan that is not executed leaves nothing behind."""

    reader: TableReader | WdsReader
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
    reader = open_input(input_path, opts)
    if reader.columns or reader.n_rows:  # a JSON input without rows has no columns, and nothing to score
        check_columns(reader.columns, {opts.image_key: "--image-key", opts.text_key: "--text-key"})
    check_output_columns(reader.columns, opts.output_key, opts.overwrite_columns)
    check_image_root(opts.image_root)
    output = Path(output_path)
    if same_file(reader.path, output):
        raise InputError(f"output {str(output)!r} is the input file: choose another output (the input is never "
                         "overwritten)")
    TableWriter.check(output)
    check_work_dir(work_dir_for(output))
    lock = OutputLock(output)
    lock.acquire()
    try:
        for stale in output.parent.glob(f".{glob.escape(output.name)}.*.partial*"):
            stale.unlink(missing_ok=True)  # left by a run killed while writing its output (we hold its lock)
        writer = TableWriter(output, output_schema(reader.schema, opts.output_key))
    except BaseException:
        lock.release()
        raise
    return LocalPlan(reader, output, opts, resume, lock, writer)


def open_input(location: str | os.PathLike[str], opts: RunOptions = RunOptions()) -> TableReader | WdsReader:
    """The checked reader of an INPUT: WebDataset shards (a ``.tar``, a folder, glob or brace pattern of them), or
    one table file."""
    if is_webdataset(location):
        wds = WdsOptions(image_ext=opts.wds_image_ext, text=opts.wds_text, keep=opts.wds_keep)
        return WdsReader(location, wds, opts.image_key, opts.text_key)
    return TableReader(location)


def _fingerprint(reader: TableReader | WdsReader, model: LongCLIP, opts: RunOptions) -> dict[str, object]:
    """What a resume must find unchanged: the input's bytes (not its size or mtime), the model's graphs and the
    options. Images are not fingerprinted: a changed image file keeps the score of its finished chunk."""
    return {
        "input": str(reader.path.resolve()),
        "input_sha256": reader.sha256,
        "model": [model.manifest.vision_sha256, model.manifest.text_sha256],
        "options": asdict(opts),
    }


def _save_part(path: Path, result: ChunkResult) -> None:
    import io

    buffer = io.BytesIO()
    # reasons are stored as UTF-8 bytes with escapes, so a reason quoting a lone surrogate still saves
    reasons = np.array([e.encode("utf-8", "backslashreplace") for e in result.errors], dtype=object)
    np.savez(buffer, scores=result.scores, errors=reasons.astype(bytes) if len(reasons) else np.array([], bytes),
             truncated=result.truncated)
    write_bytes(path, buffer.getvalue())


def _load_part(path: Path) -> ChunkResult:
    with np.load(path, allow_pickle=False) as data:
        return ChunkResult(data["scores"], [e.decode("utf-8") for e in data["errors"].tolist()], data["truncated"])


def _prepare_work_dir(work: Path, state: dict[str, object], resume: bool) -> None:
    state = json.loads(json.dumps(state))  # as it reads back (tuples are lists in JSON)
    check_work_dir(work)
    state_file = work / "state.json"
    if resume and os.path.lexists(state_file):
        previous = _read_state(state_file)
        changed = [k for k in state if previous.get(k) != state[k]]
        if changed:
            what = {"input": f"input {state['input']!r}", "input_sha256": f"input {state['input']!r}"}
            names = ", ".join(dict.fromkeys(what.get(k, k) for k in changed))
            raise InputError(f"cannot resume: {names} changed since the interrupted run; "
                             "run again without --resume to start over")
        return
    if work.exists():
        log.info("starting over: removing the unfinished run in %s", work)
        shutil.rmtree(work)
    try:
        work.mkdir(parents=True)
        write_bytes(state_file, json.dumps(state, indent=1).encode())
    except OSError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise write_error(work, exc) from None


def _read_state(state_file: Path) -> dict[str, object]:
    """A work folder's ``state.json``; one that is not a regular file (a link is not followed, a FIFO not waited
    on) or not a JSON object is an :class:`InputError`: what the chunks were made from is unknown."""
    try:
        fd = os.open(state_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise ValueError("not a regular file")
            previous = json.loads(file.read(1 << 20))
        if not isinstance(previous, dict):
            raise ValueError("not a JSON object")
        return previous
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot resume: {str(state_file)!r} is damaged ({exc}): run again without --resume to "
                         "start over") from None


def execute(plan: LocalPlan, model: LongCLIP, progress: bool | None = None,
            pool: DecodePool | ThreadPool | None = None, store: EmbeddingStore | None = None) -> RunSummary:
    """Score the planned run with ``model`` (see the module doc); the plan's checks are not repeated. Decodes on
    ``pool`` (its spec must be ``model``'s), else on workers sized for this process's CPUs. ``store``: an
    embeddings folder that gets every embedding computed, and gives those it has (they are not computed again);
    it is flushed before each chunk's result is kept, so a resumed run never lacks a finished chunk's embeddings."""
    start = time.perf_counter()
    reader, opts = plan.reader, plan.opts
    work = work_dir_for(plan.output)
    _prepare_work_dir(work, _fingerprint(reader, model, opts), plan.resume)
    kept = (f"; the finished chunks are kept in {str(work)!r}: free space (or fix the permission) and run again "
            "with --resume")
    root = Path(opts.image_root) if opts.image_root is not None else None
    summary = RunSummary(provider=model.provider, context_length=model.manifest.context_length)
    parts = [work / f"chunk-{index:07d}.npz" for index in range(-(-reader.n_rows // opts.chunk_rows))]
    finished: set[Path] = set()

    def works() -> Iterator[Work]:
        for part, chunk in zip(parts, reader.read_chunks(opts.chunk_rows)):
            done = _finished_part(part, len(chunk.frame))
            if done is not None:
                finished.add(part)
                summary.resumed_rows += len(done.errors)
                yield Work([], [], done)
            else:
                yield Work.of(chunk.frame, chunk.images, chunk.reasons, opts.image_key, opts.text_key)

    with _pipeline(model, pool, root, opts, store, summary, reader.n_rows, progress) as (pipeline, bar):
        for part, result in zip(parts, pipeline.run(works())):
            if part not in finished:
                if store is not None:
                    store.flush()
                try:
                    _save_part(part, result)
                except OSError as exc:
                    raise write_error(part, exc, kept) from None
            summary.add(result)
            bar.update(len(result.errors))
    writer = plan.writer
    try:
        for part, chunk in zip(parts, reader.chunks(opts.chunk_rows)):
            result = _load_part(part)
            writer.write(with_scores(chunk, result.scores, result.errors, opts.output_key))
        if reader.n_rows == 0:  # still write the header / schema
            writer.write(no_rows(reader.columns, opts.output_key))
        writer.commit()
    except WriteError as exc:
        writer.abort()
        raise WriteError(f"{exc}{kept}") from None
    shutil.rmtree(work)
    summary.seconds = time.perf_counter() - start
    return summary


@contextlib.contextmanager
def _pipeline(model: LongCLIP, pool: DecodePool | ThreadPool | None, root: Path | None, opts: RunOptions,
              store: EmbeddingStore | None, summary: RunSummary, rows: int,
              progress: bool | None) -> Iterator[tuple[Pipeline, Any]]:
    """A local run's pipeline (on ``pool``, else on workers of its own, closed after) and its progress bar over
    ``rows`` (shown on a terminal unless ``progress`` says); ``summary`` shares the pipeline's tower times and,
    with an embeddings folder (no folder, no summary line), its counts."""
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    owned = default_pool(model, opts.batch_size, opts.max_pixels) if pool is None else None
    with tqdm(total=rows, unit="rows", file=sys.stderr, disable=not show, dynamic_ncols=True) as bar, \
            contextlib.nullcontext() if owned is None else owned:
        pipeline = Pipeline(model, pool or owned, root, opts.batch_size, store=store)  # type: ignore[arg-type]
        summary.busy, summary.decode = pipeline.busy, pipeline.pool.describe()
        summary.cached = pipeline.counts if store is not None else {}
        yield pipeline, bar


def run_file(model: LongCLIP, input_path: str | os.PathLike[str], output_path: str | os.PathLike[str],
             opts: RunOptions = RunOptions(), resume: bool = False, progress: bool | None = None,
             pool: DecodePool | ThreadPool | None = None) -> RunSummary:
    """Score every row of ``input_path`` into ``output_path``; formats by extension. See the module doc.

    >>> run_file(LongCLIP("models/tiny"), "pairs.jsonl", "scored.parquet")    # doctest: +SKIP
    """
    with plan_file(input_path, output_path, opts, resume) as plan:
        return execute(plan, model, progress, pool)


def embed_file(model: LongCLIP, source: str | os.PathLike[str] | TableReader | WdsReader, store: EmbeddingStore,
               opts: RunOptions = RunOptions(), progress: bool | None = None,
               pool: DecodePool | ThreadPool | None = None) -> RunSummary:
    """Embed every distinct image and text of ``source`` (an INPUT, or its reader from :func:`open_input`) into
    ``store`` without scoring (``--embed-only``): a table may hold only an image column or only a text column.
    Nothing the store has is computed again, so a stopped run is continued by running it again."""
    start = time.perf_counter()
    reader = source if isinstance(source, (TableReader, WdsReader)) else open_input(source, opts)
    keys = [k for k in (opts.image_key, opts.text_key) if k in reader.columns]
    if not keys and (reader.columns or reader.n_rows):
        check_columns(reader.columns, {opts.image_key: "--image-key", opts.text_key: "--text-key"})
    root = Path(opts.image_root) if opts.image_root is not None else None
    summary = RunSummary(provider=model.provider, context_length=model.manifest.context_length, truncated=None,
                         scoring=False)

    def works() -> Iterator[Work]:
        for chunk in reader.read_chunks(opts.chunk_rows):
            yield Work.of(chunk.frame, chunk.images, chunk.reasons, opts.image_key, opts.text_key)

    with _pipeline(model, pool, root, opts, store, summary, reader.n_rows, progress) as (pipeline, bar):
        for result in pipeline.run(works()):
            store.flush()
            summary.rows += len(result.errors)
            bar.update(len(result.errors))
    summary.seconds = time.perf_counter() - start
    return summary
