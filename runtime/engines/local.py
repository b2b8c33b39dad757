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
import json
import logging
import os
import shlex
import shutil
import stat
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from ..contract.atomic import run_sibling, stale_partials, write_bytes
from ..contract.errors import NULL_PATH, NULL_TEXT, InputError, WriteError, error_code, write_error
from ..contract.rows import (
    check_columns,
    check_image_root,
    check_output_columns,
    no_rows,
    output_schema,
    with_scores,
)
from ..decode.pool import DecodePool, ThreadPool
from ..embeddings.store import EmbeddingStore
from ..inputs.tables import Chunk, TableReader, same_file
from ..inputs.webdataset import WdsOptions, WdsReader, is_webdataset
from ..model.baseline import Baseline, Fragment
from ..model.longclip import LongCLIP
from ..outputs.lock import OutputLock
from ..outputs.writers import TableWriter, check_sparse_width
from .chunk import default_pool
from .options import RunOptions, RunSummary
from .pipeline import Pipeline
from .work import ChunkResult, Work

log = logging.getLogger(__name__)


def work_dir_for(output: Path) -> Path:
    return run_sibling(output)


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


def _finished_part(path: Path, rows: int, baseline: bool = False) -> ChunkResult | None:
    """The kept result of a finished chunk of ``rows`` rows (with its mismatched pairs when ``baseline``), or None
    when there is none to trust: what is at ``path`` is removed (a symbolic link is never followed) and its rows
    are scored again, said in one line."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode):
        try:
            result = _load_part(path, baseline)
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
              opts: RunOptions = RunOptions(), resume: bool = False, restart: bool = False) -> LocalPlan:
    """Check a run before any model loads; :class:`InputError` names the first problem. Holds the output's lock
    from here on, so a second run on the same output is refused now, not after its model loads.

    An unfinished run's finished chunks are never discarded unasked: without ``resume`` (continue them) or
    ``restart`` (discard them) the run is refused, naming them."""
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
    if _is_json(reader):
        check_sparse_width(len(reader.columns), reader.n_rows, str(reader.path), output)
    check_work_dir(work_dir_for(output))
    lock = OutputLock(output)
    lock.acquire()
    try:
        _check_unfinished(work_dir_for(output), resume, restart)
        for stale in stale_partials(output):
            stale.unlink(missing_ok=True)  # left by a run killed while writing its output (we hold its lock)
        writer = TableWriter(output, output_schema(reader.schema, opts.output_key))
    except BaseException:
        lock.release()
        raise
    return LocalPlan(reader, output, opts, resume, lock, writer)


def _check_unfinished(work: Path, resume: bool, restart: bool) -> None:
    """Refuse to start over on an unfinished run's finished chunks unless ``restart``; with ``resume`` and nothing
    to resume, say so (the run starts from the beginning)."""
    chunks = sorted(work.glob("chunk-*.npz")) if work.is_dir() else []
    if resume and not os.path.lexists(work / "state.json"):  # one there, even damaged, is an unfinished run
        log.info("nothing to resume for this output (no unfinished run in %s): starting from the beginning",
                 str(work))
    elif chunks and not resume and not restart:
        rows = sum(_rows_in(chunk) for chunk in chunks)
        chunk_s = "chunk" if len(chunks) == 1 else "chunks"
        raise InputError(f"an unfinished run of this output kept {len(chunks)} finished {chunk_s} ({rows} rows) in "
                         f"{str(work)!r}: continue it with --resume, or discard them with --restart")


def _rows_in(part: Path) -> int:
    """The rows a kept chunk holds; 0 for one that does not verify (a resume redoes it), never opening anything but
    a regular file (a FIFO would block, a link may point anywhere)."""
    try:
        if not stat.S_ISREG(os.lstat(part).st_mode):
            return 0
        return len(_load_part(part).errors)
    except Exception:  # noqa: BLE001 - whatever a damaged file raises, it does not verify
        return 0


def open_input(location: str | os.PathLike[str], opts: RunOptions = RunOptions()) -> TableReader | WdsReader:
    """The checked reader of an INPUT: WebDataset shards (a ``.tar``, a folder, glob or brace pattern of them), a
    folder of image (and caption) files read as one shard (:mod:`..inputs.folder`), or one table file."""
    from ..inputs.folder import FolderReader, is_file_folder

    wds = WdsOptions(image_ext=opts.wds_image_ext, text=opts.wds_text, keep=opts.wds_keep)
    if is_webdataset(location):
        return WdsReader(location, wds, opts.image_key, opts.text_key)
    if is_file_folder(location, wds.image_ext):
        return FolderReader(location, wds, opts.image_key, opts.text_key)
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


_FRAGMENT_ARRAYS = ("rows", "image_embeds", "text_embeds", "image_keys", "text_keys")


def _save_part(path: Path, result: ChunkResult) -> None:
    import io

    buffer = io.BytesIO()
    # reasons are stored as UTF-8 bytes with escapes, so a reason quoting a lone surrogate still saves
    reasons = np.array([e.encode("utf-8", "backslashreplace") for e in result.errors], dtype=object)
    np.savez(buffer, scores=result.scores, errors=reasons.astype(bytes) if len(reasons) else np.array([], bytes),
             truncated=result.truncated, **_baseline_arrays(result))
    write_bytes(path, buffer.getvalue())


def _baseline_arrays(result: ChunkResult) -> dict[str, np.ndarray]:
    """A chunk's mismatched pairs and the rows of the blocks it cuts, kept with it: a resumed chunk gives them."""
    if result.baseline is None:
        return {}
    (hashes, scores), fragments = result.baseline
    arrays = {"b_hashes": hashes, "b_scores": scores,
              "f_head": np.array([(f.block, f.covered, len(f.rows)) for f in fragments], np.int64).reshape(-1, 3)}
    for name in _FRAGMENT_ARRAYS:
        having = [getattr(f, name) for f in fragments if len(f.rows)]
        arrays[f"f_{name}"] = np.concatenate(having) if having else np.zeros(0)
    return arrays


def _load_part(path: Path, baseline: bool = False) -> ChunkResult:
    with np.load(path, allow_pickle=False) as data:
        result = ChunkResult(data["scores"], [e.decode("utf-8") for e in data["errors"].tolist()], data["truncated"])
        if baseline and "b_hashes" in data:
            fragments, at = [], 0
            for block, covered, n in data["f_head"].tolist():
                fragments.append(Fragment(block, covered, *(data[f"f_{name}"][at : at + n]
                                                            for name in _FRAGMENT_ARRAYS)))
                at += n
            result.baseline = ((data["b_hashes"], data["b_scores"]), fragments)
    return result


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
                             "run again with --restart to discard its finished chunks and start over")
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

    baseline = Baseline(reader.n_rows)

    def works() -> Iterator[Work]:
        for part, chunk in zip(parts, _read_chunks(reader, opts)):
            done = _finished_part(part, len(chunk.frame), baseline=True)
            if done is not None:
                finished.add(part)
                summary.resumed_rows += len(done.errors)
                yield Work([], [], done)
            else:
                yield Work.of(chunk.frame, chunk.images, chunk.reasons, opts.image_key, opts.text_key)

    with _pipeline(model, pool, root, opts, store, summary, reader.n_rows, progress) as pipeline:
        pipeline.keep_embeds = True  # for the baseline: the embeddings are in memory, at no model cost
        drawn = True
        for index, (part, result) in enumerate(zip(parts, pipeline.run(works()))):
            drawn &= _draw_baseline(baseline, index * opts.chunk_rows, result)
            if part not in finished:
                if store is not None:
                    store.flush()
                try:
                    _save_part(part, result)
                except OSError as exc:
                    raise write_error(part, exc, kept) from None
            summary.add(result)
    writer = plan.writer
    try:
        if _is_json(reader) and writer.format in (".jsonl", ".json"):  # each row as parsed: its own keys only
            for part, rows in zip(parts, reader.record_chunks(opts.chunk_rows)):  # type: ignore[union-attr]
                result = _load_part(part)
                writer.write_records(rows, result.scores, result.errors, opts.output_key)
        else:
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
    summary.baseline = baseline.scores if drawn else None
    summary.seconds = time.perf_counter() - start
    return summary


def _is_json(reader: TableReader | WdsReader) -> bool:
    return isinstance(reader, TableReader) and reader.format in (".jsonl", ".json")


def _read_chunks(reader: TableReader | WdsReader, opts: RunOptions) -> Iterator[Chunk]:
    """The chunks scoring reads: of a JSON input, only the image and text keys (a file whose rows each have keys
    of their own would otherwise cost rows x every key)."""
    if _is_json(reader):
        keys = [key for key in (opts.image_key, opts.text_key) if key in reader.columns]  # --embed-only: one may lack
        return reader.read_chunks(opts.chunk_rows, columns=keys)  # type: ignore[call-arg]
    return reader.read_chunks(opts.chunk_rows)


def _draw_baseline(baseline: Baseline, start: int, result: ChunkResult) -> bool:
    """Fold a chunk into the baseline: a scored one by its embeddings (what it gave is kept with it), a resumed
    one by what it kept. False for a resumed chunk kept without them (by an older version): no baseline then."""
    if result.embeds is not None:
        e = result.embeds
        result.baseline = baseline.add_chunk(start, e.valid, e.image_embeds, e.text_embeds, e.image_keys,
                                             e.text_keys)
        result.embeds = None
        return True
    if result.baseline is not None:
        baseline.add(*result.baseline)
        return True
    return False


@contextlib.contextmanager
def _pipeline(model: LongCLIP, pool: DecodePool | ThreadPool | None, root: Path | None, opts: RunOptions,
              store: EmbeddingStore | None, summary: RunSummary, rows: int,
              progress: bool | None) -> Iterator[Pipeline]:
    """A local run's pipeline (on ``pool``, else on workers of its own, closed after) with its progress bar over
    ``rows`` (shown on a terminal unless ``progress`` says), advanced as each image batch comes back, not once a
    chunk; ``summary`` shares the pipeline's tower times and, with an embeddings folder (no folder, no summary
    line), its counts."""
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    owned = default_pool(model, opts.batch_size, opts.max_pixels) if pool is None else None
    with tqdm(total=rows, unit="rows", file=sys.stderr, disable=not show, dynamic_ncols=True) as bar, \
            contextlib.nullcontext() if owned is None else owned:
        pipeline = Pipeline(model, pool or owned, root, opts.batch_size, store=store,  # type: ignore[arg-type]
                            progress=bar.update)
        summary.busy, summary.decode = pipeline.busy, pipeline.pool.describe()
        summary.cached = pipeline.counts if store is not None else {}
        yield pipeline


def run_file(model: LongCLIP, input_path: str | os.PathLike[str], output_path: str | os.PathLike[str],
             opts: RunOptions = RunOptions(), resume: bool = False, progress: bool | None = None,
             pool: DecodePool | ThreadPool | None = None, restart: bool = False) -> RunSummary:
    """Score every row of ``input_path`` into ``output_path``; formats by extension. See the module doc. An
    unfinished run's chunks are continued with ``resume``, discarded with ``restart``, else the run is refused.

    >>> run_file(LongCLIP("models/tiny"), "pairs.jsonl", "scored.parquet")    # doctest: +SKIP
    """
    with plan_file(input_path, output_path, opts, resume, restart) as plan:
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
        for chunk in _read_chunks(reader, opts):
            yield Work.of(chunk.frame, chunk.images, chunk.reasons, opts.image_key, opts.text_key)

    absent = {code for code, key in ((NULL_PATH, opts.image_key), (NULL_TEXT, opts.text_key))
              if key not in reader.columns}  # a table of images only: its rows' missing text is no failure
    if getattr(reader, "texts_found", None) == 0:  # a folder of images without captions: the same
        absent.add(NULL_TEXT)

    with _pipeline(model, pool, root, opts, store, summary, reader.n_rows, progress) as pipeline:
        for result in pipeline.run(works()):
            store.flush()
            codes = (error_code(e) for e in result.errors)
            summary.add_codes(Counter("" if code in absent else code for code in codes))
    summary.seconds = time.perf_counter() - start
    return summary
