"""``longclip-run --engine ray``: the same job on Ray Data, for inputs one machine cannot finish in time.

The driver checks the input's columns, the output, the model and the device, starts (or joins) Ray and streams
``read -> map_batches(Scorer) -> write``. Each ``Scorer`` actor builds one ``LongCLIP`` and scores the batches it
gets through the engines' own pipeline and ``with_scores``, so rows, reasons and scores are the same. Images are
decoded inside the actors, by decode workers of the actor's own (``--cpus-per-worker``): only paths and texts
travel (see benchmarks/ray_engine.py for why).
``preserve_order`` keeps the output in input order: shards in path order, rows in file order.

The baseline of mismatched pairs (``RayOptions.baseline``) pairs rows by their global row index, which only the
driver knows: each actor returns its scored rows' keys and embeddings in one more column, and the driver, which
sees every batch in order, folds them into the baseline and drops that column before it writes. A folder output is
then written by the driver too (the actors' own parquet writes never pass it the rows).

Ray is imported only here, only when this engine runs; ``pip install "longclip[ray]"`` adds it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

from ..contract import errors
from ..contract.constants import DECODE_TIMEOUT, EMBEDDING_DTYPES
from ..contract.errors import EngineError, InputError, LongCLIPError, error_code
from ..contract.manifest import read_manifest
from ..contract.rows import (
    ABSENT,
    check_columns,
    check_image_root,
    check_output_columns,
    error_key,
    no_rows,
    with_scores,
)
from ..decode.cpus import available_cpus
from ..inputs.tables import same_file
from ..inputs.tarshards import SUFFIX, find_tar_shards, is_webdataset, unreadable_shard
from ..inputs.webdataset import WdsOptions, WdsReader, wds_columns
from ..model.baseline import Baseline
from ..model.device import parse_device, wants_gpu
from ..outputs.lock import OutputLock
from ..outputs.writers import TableWriter
from .assemble import load_model, open_store, split_cpus, start_pool
from .options import RunOptions, RunSummary
from .pipeline import Pipeline
from .shards import Shards, Staging, Target, find_shards, output_target, shard_columns
from .work import RowEmbeds, Work

log = logging.getLogger(__name__)

RAY_EXTRA = 'pip install "longclip[ray]"'


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # HOST:PORT, ray://HOST:PORT or auto; None: start a local Ray for this run
    workers: int | None = None  # actors, one model each; None: one per GPU, else one per CPU but one
    cpus_per_worker: int = 1  # CPUs each actor reserves: its model, and (beyond the first) its decode workers
    embeddings_dir: str | None = None  # each actor writes its own parts there; the driver holds the lock, indexes
    embeddings_dtype: str = EMBEDDING_DTYPES[0]
    decode_timeout: float = DECODE_TIMEOUT  # seconds one image may take in an actor's decode worker
    object_store_bytes: int = 512 * 2**20  # a Ray started here; a cluster keeps its own
    shard_rows: int = 100_000  # a folder output's rows per parquet shard (a hint: whole batches, at least one)
    log_level: int = logging.WARNING  # Ray's own loggers
    baseline: bool = False  # draw the mismatched-pair baseline: the embeddings travel to the driver (see module doc)


def import_ray() -> ModuleType:
    """``ray``, with Ray Data, or :class:`EngineError` naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise EngineError(f"--engine ray needs Ray Data ({exc}): {RAY_EXTRA}") from None
    return ray


class Scorer:
    """One Ray actor: one model and its decode workers, built once; a pandas batch in, the same batch plus score
    and reason out. It sizes itself from the CPUs Ray gave it (``cpus``), not from the node's."""

    def __init__(self, model_dir: str, device: str | None, opts: RunOptions, cpus: int = 1,
                 embeddings: tuple[str, str] | None = None, decode_timeout: float = DECODE_TIMEOUT,
                 baseline: bool = False):
        # device None (auto) in an actor Ray gave a GPU; one CPU: decode on threads, beside the model
        split = split_cpus(device, 0 if cpus == 1 else None, cpus=cpus)
        self.model = load_model(model_dir, device, split, opts.batch_size)
        self._pool_args = (self.model.manifest, split, opts.batch_size, opts.max_pixels, decode_timeout)
        self.store = None
        if embeddings is not None:  # parts of its own; the driver holds the folder's lock and indexes them
            root, dtype = embeddings
            self.store = open_store(root, self.model.manifest, dtype, shared=True)
        self.opts, self.baseline = opts, baseline
        self.root = Path(opts.image_root) if opts.image_root else None
        self._start()

    def _start(self) -> None:
        """A decode pool and the pipeline on it: at first, and after a batch failed (its pool is left broken)."""
        self.pool = start_pool(*self._pool_args)
        self.pipeline = Pipeline(self.model, self.pool, self.root, self.opts.batch_size, store=self.store,
                                 keep_embeds=self.baseline)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        o = self.opts
        images, reasons = None, [""] * len(batch)
        if IMAGE_BYTES in batch.columns:  # WebDataset rows: the member's bytes, and why a row could not be read
            images, reasons = batch[IMAGE_BYTES].tolist(), [str(r) for r in batch[READ_REASON]]
            batch = batch.drop(columns=[IMAGE_BYTES, READ_REASON])
        work = Work.of(batch, images, reasons, o.image_key, o.text_key)
        if self.pool.broken:  # a batch failed on this actor before (Ray may retry it here): start afresh
            self.pool.close()
            self._start()
        result = next(self.pipeline.run([work]))
        if self.store is not None:
            self.store.flush()
        scored = with_scores(batch, result.scores, result.errors, o.output_key)
        if result.embeds is not None:  # for the driver's baseline (see the module doc)
            scored[EMBEDS] = result.embeds.to_cells()
        return scored

    def __del__(self) -> None:
        for part in (getattr(self, "store", None), getattr(self, "pool", None)):
            if part is not None:
                part.close()


def plan_workers(resources: Mapping[str, float], gpu: bool, workers: int | None, cpus_per_worker: int = 1) -> int:
    """Actors for a cluster with ``resources``: each holds ``cpus_per_worker`` CPUs (and one GPU when ``gpu``), and
    one CPU stays free for reading and writing, which would otherwise wait forever behind a pool that holds every
    CPU."""
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    if gpu and gpus < 1:
        raise EngineError("the Ray cluster has no GPUs: start its nodes on GPU machines, or pass --device cpu")
    n = workers or (gpus if gpu else (cpus - 1) // cpus_per_worker)
    if gpu and n > gpus:
        raise EngineError(f"--workers {n}: each worker takes a GPU and the Ray cluster has {gpus}")
    if n < 1 or n * cpus_per_worker + 1 > cpus:
        most = max((cpus - 1) // cpus_per_worker, 1)
        raise EngineError(f"--workers {n}: each worker takes {cpus_per_worker} CPU(s), and reading and writing need "
                          f"one more; the Ray cluster has {cpus} CPUs: use --workers {most} or fewer, fewer "
                          "--cpus-per-worker, or a larger cluster")
    return n


def _check_reachable(address: str) -> None:
    # ray.init retries an unreachable address for minutes; a refused or unknown host should cost seconds.
    if address == "auto":
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(f"--ray-address {address!r}: expected HOST:PORT (the head's `ray start --head "
                          "--port=6379`), ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise EngineError(f"cannot reach a Ray cluster at {address!r} ({exc.strerror or exc}): start one with "
                          "`ray start --head --port=6379`, or leave out --ray-address to run on this machine") from None


@contextmanager
def ray_session(ray: ModuleType, opts: RayOptions) -> Iterator[None]:
    """Join ``opts.address``, or start a bounded local Ray; either way disconnect at the end. A Ray the caller
    already started (a notebook, a test) is used as it is and left running."""
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(opts.log_level)
    if ray.is_initialized():
        log.info("using the Ray this process already joined%s", f" (not {opts.address})" if opts.address else "")
        yield
        return
    try:
        if opts.address:
            _check_reachable(opts.address)
            ray.init(address=opts.address, logging_level=opts.log_level)
        else:
            cpus = opts.workers * opts.cpus_per_worker + 1 if opts.workers else available_cpus() + 1
            ray.init(num_cpus=cpus, object_store_memory=opts.object_store_bytes,
                     include_dashboard=False, logging_level=opts.log_level)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:  # Ray's own, many kinds
        where = f"join the Ray cluster at {opts.address!r}" if opts.address else "start a local Ray"
        raise EngineError(f"cannot {where}: {str(exc).strip().splitlines()[-1]}") from None
    try:
        yield
    finally:
        ray.shutdown()


IMAGE_BYTES, READ_REASON = "__longclip_image__", "__longclip_read_reason__"  # WebDataset rows between tasks
EMBEDS = "__longclip_embeds__"  # a scored row's keys and embeddings, actor to driver (RowEmbeds.to_cells)


def _read(ray: ModuleType, shards: Shards, columns: list[str], opts: RunOptions) -> Any:
    """A Ray Dataset over the shards, in their order; CSV cells are strings as written, like the local engine;
    WebDataset shards are read by this project's own reader, one task per shard (identical rows to the local
    engine's), each row with its member's bytes and read reason in two columns the actors drop."""
    if shards.format == SUFFIX:
        wds = WdsOptions(image_ext=opts.wds_image_ext, text=opts.wds_text, keep=opts.wds_keep)

        def read_shard(batch: dict[str, Any]) -> Iterator[pd.DataFrame]:
            for path, name in zip(batch["path"], batch["name"]):  # read at its absolute path, named as found
                reader = WdsReader([Path(path)], wds, opts.image_key, opts.text_key, scan=False, name=str(name))
                for chunk in reader.read_chunks(opts.chunk_rows):
                    frame = chunk.frame.map(lambda v: None if v is ABSENT else v)  # Arrow blocks: absent is null
                    yield frame.assign(**{IMAGE_BYTES: chunk.images, READ_REASON: chunk.reasons})

        names = shards.names or shards.paths
        items = ray.data.from_items([{"path": p, "name": n} for p, n in zip(shards.paths, names)],
                                    override_num_blocks=len(shards.paths))
        return items.map_batches(read_shard, batch_size=1, batch_format="numpy")
    common: dict[str, Any] = {"filesystem": shards.filesystem, "partitioning": None, "file_extensions": None}
    if shards.format == ".parquet":
        return ray.data.read_parquet(shards.paths, **common)
    if shards.format == ".csv":
        import pyarrow as pa
        import pyarrow.csv as pacsv

        strings = pacsv.ConvertOptions(column_types={c: pa.string() for c in columns}, strings_can_be_null=False)
        return ray.data.read_csv(shards.paths, convert_options=strings, **common)
    return ray.data.read_json(shards.paths, **common)


_OUR_ERROR = re.compile(re.escape(errors.__name__) + r"\.(\w+): (.+)")  # as a worker's traceback names it
_EXCEPTION = re.compile(r"([A-Za-z_][\w.]*(?:Error|Exception|Invalid)): (.+)")


def job_error(exc: BaseException) -> LongCLIPError:
    """A failed Ray job as one of our errors: ours re-raised by name (an actor's ``ModelDirError``), else
    :class:`EngineError` naming the last exception that is not Ray's own wrapper."""
    text = str(exc)
    for name, message in reversed(_OUR_ERROR.findall(text)):
        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, LongCLIPError) and not issubclass(cls, errors.RowError):
            return cls(message)
    causes = [m for m in map(_EXCEPTION.fullmatch, map(str.strip, text.splitlines()))
              if m and not m.group(1).startswith("ray.")]
    detail = causes[-1].group(0) if causes else (text.strip().splitlines() or [type(exc).__name__])[-1]
    if "HTTPFileSystem" in detail:  # Ray lists files on threads that race to import fsspec's HTTP filesystem
        return EngineError(f"the Ray job failed: {detail}: Ray Data needs aiohttp to list files (without it, its "
                           f"listing threads fail now and then): pip install aiohttp, or {RAY_EXTRA}")
    return EngineError(f"the Ray job failed: {detail} (the worker logs above say more)")


def _codes(errors_: Any) -> Counter[str]:
    """Rows by error code, ``""`` when scored, from an error column (a pandas or arrow column)."""
    return Counter(error_code(str(e)) for e in errors_)


def _in_order(ds: Any, batch_format: str, baseline: Baseline | None) -> Iterator[Any]:
    """The scored batches (pandas or arrow) in row order; with a ``baseline``, each batch's embeddings are folded
    into it at the batch's global row index and their column dropped."""
    start = 0
    for batch in ds.iter_batches(batch_format=batch_format, batch_size=None):
        if baseline is not None:
            if batch_format == "pandas":
                cells = batch.pop(EMBEDS).tolist()
            else:
                cells, batch = batch.column(EMBEDS).to_pylist(), batch.drop_columns([EMBEDS])
            e = RowEmbeds.from_cells(cells)
            baseline.add_chunk(start, e.valid, e.image_embeds, e.text_embeds, e.image_keys, e.text_keys)
        start += len(batch)
        yield batch
    if baseline is not None:
        baseline.finish(start)


def _write_file(ds: Any, target: Target, columns: list[str], opts: RunOptions, summary: RunSummary,
                baseline: Baseline | None = None) -> None:
    """Gather the batches on the driver, in order, into one file through the local engine's writer."""
    writer = TableWriter(target.path)
    try:
        for frame in _in_order(ds, "pandas", baseline):
            writer.write(frame)
            summary.add_codes(_codes(frame[error_key(opts.output_key)]))
        if summary.rows == 0:  # still write the header / schema
            writer.write(no_rows(columns, opts.output_key))
        writer.commit()
    except BaseException:
        writer.abort()
        raise


def _write_folder(ds: Any, target: Target, opts: RunOptions, shard_rows: int, summary: RunSummary) -> None:
    """Parquet shards written by the workers; ``part-<task>-<uuid>.parquet`` names sort in row order."""
    import pyarrow.dataset as pads
    from ray.data.datasource import FilenameProvider

    class ShardNames(FilenameProvider):
        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"part-{task_index:08d}-{write_uuid}.parquet"

    staging = Staging(target)
    try:
        ds.write_parquet(staging.path, filesystem=target.filesystem, filename_provider=ShardNames(),
                         min_rows_per_file=shard_rows)
        written = pads.dataset(staging.path, filesystem=target.filesystem, format="parquet")
        for batch in written.to_batches(columns=[error_key(opts.output_key)]):
            summary.add_codes(_codes(batch.column(0).to_pylist()))
        staging.commit()
    except BaseException:
        staging.abort()
        raise


def _write_folder_here(ds: Any, target: Target, opts: RunOptions, shard_rows: int, summary: RunSummary,
                       baseline: Baseline) -> None:
    """Parquet shards written by the driver, which sees every row in order for the ``baseline``: the batches as
    the actors' writes would have written them, ``shard_rows`` rows a shard (the last may have fewer)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    staging, tag = Staging(target), uuid.uuid4().hex
    try:
        for index, tables in enumerate(_shards_of(_in_order(ds, "pyarrow", baseline), shard_rows)):
            for table in tables:
                summary.add_codes(_codes(table.column(error_key(opts.output_key)).to_pylist()))
            pq.write_table(pa.concat_tables(tables, promote_options="permissive"),
                           f"{staging.path}/part-{index:08d}-{tag}.parquet", filesystem=target.filesystem)
        staging.commit()
    except BaseException:
        staging.abort()
        raise


def _shards_of(tables: Iterator[Any], rows: int) -> Iterator[list[Any]]:
    """Consecutive arrow tables cut into groups of ``rows`` rows (the last group may have fewer)."""
    group: list[Any] = []
    have = 0
    for table in tables:
        while have + table.num_rows >= rows:
            take = rows - have
            yield [*group, table.slice(0, take)]
            group, have, table = [], 0, table.slice(take)
        if table.num_rows:
            group.append(table)
            have += table.num_rows
    if group:
        yield group


@dataclass
class RayPlan:
    """A checked Ray run: shards found, columns and output checked, a local output locked. Use it in a ``with``
    block (or call :meth:`close`)."""

    shards: Shards
    columns: list[str]
    target: Target
    opts: RunOptions
    kind: str  # device kind: auto, cpu, cuda, tensorrt
    lock: OutputLock | None  # None for s3:// / gs:// outputs: no lock is taken there

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> RayPlan:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def plan_ray(source: str, destination: str, opts: RunOptions = RunOptions(), device: str | None = None,
             local_ray: bool = True) -> RayPlan:
    """Check a Ray run on the driver before any model loads or Ray starts; :class:`InputError` or
    :class:`EngineError` names the first problem. A local output is locked from here on.

    ``local_ray``: the workers run on this machine, so ``opts.image_root`` must be a folder here too; on a cluster
    it need only exist on the nodes."""
    if is_webdataset(source):  # found here, read by the workers (a corpus is not scanned on the driver)
        import pyarrow.fs as pafs

        found = find_tar_shards(source)
        for path in found:  # a shard a read task cannot open would fail the whole job, after the work before it
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise unreadable_shard(str(path), exc) from None
        shards = Shards(pafs.LocalFileSystem(), [str(p.resolve()) for p in found], SUFFIX, [str(p) for p in found])
        columns = wds_columns(opts.image_key, opts.text_key, opts.wds_keep)
    else:
        shards = find_shards(source)
        columns = shard_columns(shards)
    check_columns(columns, {opts.image_key: "--image-key", opts.text_key: "--text-key"})
    check_output_columns(columns, opts.output_key, opts.overwrite_columns)
    if local_ray:
        check_image_root(opts.image_root)
    target = output_target(destination)
    if not target.folder:
        TableWriter.check(target.path)
        if target.local and any(same_file(p, target.path) for p in shards.paths):
            raise InputError(f"output {destination!r} is one of the input files: choose another output (the input "
                             "is never overwritten)")
    kind, index = parse_device(device)
    if index or (device and ":" in device):
        raise EngineError(f"--device {device}: with --engine ray each worker gets its own GPU from Ray; "
                          f"pass --device {kind}")
    # Workers do not share the driver's current directory: relative image paths resolve against an absolute root.
    opts = replace(opts, image_root=os.path.abspath(opts.image_root or os.getcwd()))
    lock = OutputLock(Path(target.path)) if target.local else None
    if lock is not None:
        lock.acquire()
    return RayPlan(shards, columns, target, opts, kind, lock)


def execute_ray(plan: RayPlan, model_dir: str | os.PathLike[str], ray_opts: RayOptions = RayOptions(),
                progress: bool | None = None) -> RunSummary:
    """Score the planned run on Ray Data with the exported folder ``model_dir``, which workers read at its
    absolute path (it must be readable there on every node)."""
    start = time.perf_counter()
    if ray_opts.baseline and EMBEDS in plan.columns:  # the driver would take the input's column for the actors'
        raise InputError(f"the input has a column {EMBEDS!r}, which the Ray engine uses to draw the baseline: "
                         "rename it, or leave out --baseline / --report")
    manifest = read_manifest(model_dir)
    model_dir = os.path.abspath(manifest.root)
    ray = import_ray()
    with contextlib.ExitStack() as stack:
        store = None
        if ray_opts.embeddings_dir is not None:  # the lock and the index stay here; the actors write parts
            store = stack.enter_context(open_store(ray_opts.embeddings_dir, manifest, ray_opts.embeddings_dtype))
        embeddings = (os.path.abspath(ray_opts.embeddings_dir), ray_opts.embeddings_dtype) if store else None
        summary = _execute(ray, plan, model_dir, ray_opts, progress, embeddings)
        if store is not None:
            store.refresh()  # the actors' parts into the index
    summary.seconds = time.perf_counter() - start
    return summary


def _execute(ray: ModuleType, plan: RayPlan, model_dir: str, ray_opts: RayOptions, progress: bool | None,
             embeddings: tuple[str, str] | None) -> RunSummary:
    shards, target, opts, kind = plan.shards, plan.target, plan.opts, plan.kind
    with ray_session(ray, ray_opts):
        resources = ray.cluster_resources()
        gpu = wants_gpu(kind, gpus_here=resources.get("GPU", 0) >= 1)
        workers = plan_workers(resources, gpu, ray_opts.workers, ray_opts.cpus_per_worker)
        actor_device = "cpu" if not gpu else (None if kind == "auto" else kind)
        pool = f"{workers} worker{'s' if workers > 1 else ''} on {'GPU' if gpu else 'CPU'}"
        summary = RunSummary(truncated=None, provider=f"Ray Data, {pool}")
        baseline = Baseline(None) if ray_opts.baseline else None
        log.info("Ray Data: %s, %d %s shard(s)", pool, len(shards.paths), shards.format)
        try:
            ds = _read(ray, shards, plan.columns, opts)
            ds.context.execution_options.preserve_order = True
            if progress is not None:  # else Ray's own choice: bars on a terminal, INFO records (not shown) when piped
                ds.context.enable_progress_bars = progress
            scored = ds.map_batches(
                Scorer, fn_constructor_args=(model_dir, actor_device, opts, ray_opts.cpus_per_worker, embeddings,
                                             ray_opts.decode_timeout, ray_opts.baseline),
                batch_format="pandas", batch_size=opts.chunk_rows, compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=ray_opts.cpus_per_worker,
                num_gpus=1 if gpu else 0)
            if target.folder and baseline is not None:
                _write_folder_here(scored, target, opts, ray_opts.shard_rows, summary, baseline)
            elif target.folder:
                _write_folder(scored, target, opts, ray_opts.shard_rows, summary)
            else:
                _write_file(scored, target, plan.columns, opts, summary, baseline)
        except ray.exceptions.RayError as exc:
            error = job_error(exc)
            if shards.format in (".jsonl", ".json") and isinstance(error, EngineError) and "JSON" in str(error):
                error = EngineError(f"{error}; Ray Data reads JSON with Arrow, one type per column: a column that "
                                    "mixes types (numbers and strings) cannot be read; fix it, or use --engine local")
            raise error from None
    summary.baseline = None if baseline is None else baseline.scores
    return summary


def run_ray(model: str | os.PathLike[str], source: str, destination: str, opts: RunOptions = RunOptions(),
            device: str | None = None, ray_opts: RayOptions = RayOptions(), progress: bool | None = None) -> RunSummary:
    """Score every row of ``source`` (a file, a folder or glob of shards, or a URI) into ``destination`` (a local
    file, or a folder of parquet shards) on Ray Data; ``model`` is any form ``resolve_model_dir`` takes, resolved
    once here, after the run's checks: workers get the folder's path, which must be readable at that path on every
    node.

    >>> run_ray("models/tiny", "shards/", "scored/")              # doctest: +SKIP
    """
    from ..model.resolve import resolve_model_dir

    with plan_ray(source, destination, opts, device, local_ray=ray_opts.address is None) as plan:
        return execute_ray(plan, resolve_model_dir(model), ray_opts, progress)
