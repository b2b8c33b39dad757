"""``longclip-run INPUT -m MODEL -o OUTPUT``: score a table of image/text rows. Parse, plan, run, report."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..contract.constants import (
    BATCH_SIZE,
    CHUNK_ROWS,
    DECODE_TIMEOUT,
    DEVICES,
    EMBEDDING_DTYPES,
    MAX_PIXELS,
    WDS_IMAGE_EXT,
    WDS_TEXT,
)
from ..contract.errors import MISSING_FILE, EngineError, InputError, LongCLIPError
from ..inputs.tables import FORMATS, same_file
from .console import column_options, configure_logging, run_seconds, tolerate_broken_stderr, version_option

if TYPE_CHECKING:
    from ..decode.pool import DecodePool, ThreadPool
    from ..embeddings.store import EmbeddingStore
    from ..engines.options import RunOptions, RunSummary
    from ..engines.ray import RayOptions
    from ..model.longclip import LongCLIP


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@version_option()
@click.argument("input_path", metavar="INPUT")
@click.option("-m", "--model", "model_name", required=True,
              help="Exported model folder, checkpoint file/folder (exported once, cached), or Hugging Face repo id.")
@click.option("-o", "--output", "output_path", default=None,
              help="Output file: .jsonl, .json, .csv or .parquet (independent of INPUT's format); with --engine ray "
                   "also a folder of parquet shards (ends with /, or no suffix).")
@column_options("Score column to add; reasons go to <output-key>_error.")
@click.option("--overwrite-columns", is_flag=True,
              help="Replace input columns named like the score or reason column [default: refuse the run].")
@click.option("--device", default="auto", show_default=True, help=f"One of {', '.join(DEVICES)} (cuda:N too).")
@click.option("--batch-size", default=BATCH_SIZE, show_default=True, type=click.IntRange(1),
              help="Images/texts per forward (int8 models: short texts fill up to this x 64 tokens).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its finished chunks.")
@click.option("--restart", is_flag=True,
              help="Discard an interrupted run's finished chunks and start over [default: such a run is refused].")
@click.option("--chunk-rows", default=CHUNK_ROWS, show_default=True, type=click.IntRange(1),
              help="Rows scored (and checkpointed) together; memory follows --batch-size, not this.")
@click.option("--max-pixels", default=MAX_PIXELS, show_default=True, type=click.IntRange(1),
              help="Refuse images with more pixels, or whose resize to the model size would have more, from their "
                   "header (decompression bombs, very thin images).")
@click.option("--decode-workers", type=click.IntRange(0), default=None,
              help="Processes that decode images and tokenize texts (0: threads of this process) [default: one per "
                   "CPU this process may use, one fewer on a GPU].")
@click.option("--decode-timeout", type=click.FloatRange(min=0, min_open=True), default=DECODE_TIMEOUT,
              show_default=True, help="Seconds one image may take to decode before its worker is stopped "
                                      "(the row gets decode_timeout).")
@click.option("--wds-image-ext", default=",".join(WDS_IMAGE_EXT), show_default=True,
              help="WebDataset INPUT: the image is the sample's first member with one of these extensions, in this "
                   "order of preference.")
@click.option("--wds-text", default=WDS_TEXT, show_default=True,
              help="WebDataset INPUT: the member with this extension is the text, or json:FIELD takes a field of "
                   "the json member (json:caption, json:meta.caption).")
@click.option("--wds-keep", default="", help="WebDataset INPUT: json fields copied to OUTPUT as columns (comma list).")
@click.option("--embeddings", "embeddings_dir", default=None,
              help="Folder that gets every image and text embedding the run computes, and gives those it already "
                   "has (they are not decoded or encoded again); see README, Embeddings.")
@click.option("--embeddings-dtype", type=click.Choice(EMBEDDING_DTYPES), default=EMBEDDING_DTYPES[0], show_default=True,
              help="How --embeddings stores them (fixed when the folder is made).")
@click.option("--embed-only", is_flag=True,
              help="With --embeddings: embed every distinct image and text into the folder, score nothing, write no "
                   "OUTPUT (a table with only an image or only a text column will do).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process, one file. ray: Ray Data workers (needs the ray extra); INPUT may also be a "
                   "folder, a glob or an s3:// / gs:// URI.")
@click.option("--ray-address", default=None,
              help="With --engine ray: join this cluster (HOST:PORT, ray://HOST:PORT, auto) [default: start a local "
                   "Ray for the run].")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="With --engine ray: workers, one model each [default: one per GPU, else one per CPU but one].")
@click.option("--cpus-per-worker", type=click.IntRange(1), default=1, show_default=True,
              help="With --engine ray: CPUs each worker reserves; those beyond the first decode for it (GPU workers "
                   "need them).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Also write an HTML report of OUTPUT (histogram, threshold slider, pairs); see longclip-report.")
@click.option("--baseline", "show_baseline", is_flag=True,
              help="Print the scores that 1 % and 0.1 % of mismatched pairs (images with other rows' captions, "
                   "drawn while scoring at no model cost) reach: thresholds with a known false-positive rate "
                   "(with --engine ray, the embeddings travel to the driver for it).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary; errors only.")
def main(input_path: str, model_name: str, output_path: str, image_key: str, text_key: str, output_key: str,
         overwrite_columns: bool, device: str, batch_size: int, image_root: str | None, resume: bool, restart: bool,
         chunk_rows: int,
         max_pixels: int, decode_workers: int | None, decode_timeout: float, wds_image_ext: str, wds_text: str,
         wds_keep: str, embeddings_dir: str | None, embeddings_dtype: str, embed_only: bool, engine: str,
         ray_address: str | None,
         workers: int | None, cpus_per_worker: int, report_path: str | None, show_baseline: bool,
         quiet: bool) -> None:
    """Score every INPUT row with LongCLIP: OUTPUT gets every input row and column, in order, plus OUTPUT_KEY in
    [0, 1] and OUTPUT_KEY_error (empty when scored; NaN/null score and a reason otherwise).

    Exit status: 0 done; 1 refused or failed (one line, nothing written); 2 usage; 3 done, but not one row could be
    scored (OUTPUT is written: see its reasons); 130 interrupted."""
    tolerate_broken_stderr()
    run_seconds()  # where /proc cannot say when the process started, the clock starts here
    configure_logging(quiet)
    from ..engines.local import work_dir_for
    from ..engines.options import RunOptions

    opts = RunOptions(image_key=image_key, text_key=text_key, output_key=output_key, image_root=image_root,
                      batch_size=batch_size, chunk_rows=chunk_rows, max_pixels=max_pixels,
                      overwrite_columns=overwrite_columns, wds_image_ext=_names(wds_image_ext),
                      wds_text=wds_text, wds_keep=_names(wds_keep))
    if engine == "local" and (ray_address or workers or cpus_per_worker != 1):
        raise click.UsageError("--ray-address, --workers and --cpus-per-worker need --engine ray")
    if embed_only and (embeddings_dir is None or output_path is not None or resume or restart or report_path
                       or engine == "ray"):
        raise click.UsageError("--embed-only takes --embeddings DIR and no -o, --resume, --restart, --report or "
                               "--engine ray (the folder keeps what a stopped run embedded: run it again)")
    if resume and restart:
        raise click.UsageError("--resume continues an interrupted run and --restart discards it: pass one")
    if show_baseline and embed_only:
        raise click.UsageError("--baseline is drawn while rows are scored: not with --embed-only")
    if not embed_only and output_path is None:
        raise click.UsageError("Missing option '-o' / '--output'.")
    try:
        _check_options(input_path, output_path, report_path, engine, resume or restart)
        if embed_only:
            summary = _embed_only(input_path, model_name, opts, device, decode_workers, decode_timeout,
                                  embeddings_dir, embeddings_dtype, quiet)  # type: ignore[arg-type]
        elif engine == "ray":
            from ..engines.ray import RayOptions

            ray_opts = RayOptions(ray_address, workers, cpus_per_worker, embeddings_dir, embeddings_dtype,
                                  decode_timeout, log_level=logging.ERROR if quiet else logging.WARNING,
                                  baseline=show_baseline or report_path is not None)
            summary = _run_ray(input_path, output_path, model_name, opts, device, ray_opts, quiet)
        else:
            summary = _run_local(input_path, output_path, model_name, opts, device, resume, restart, decode_workers,
                                 decode_timeout, embeddings_dir, embeddings_dtype, quiet)
        if not quiet:
            click.echo(summary.report(), err=True)
            written = f"embeddings: {embeddings_dir}" if embed_only else f"output: {output_path}"
            click.echo(f"{written} ({run_seconds():.1f} s in all, start-up included)", err=True)
        if show_baseline:  # asked for: printed even with -q
            click.echo(summary.baseline_line(), err=True)
        hint = missing_hint(summary, image_root)
        if hint:
            click.echo(f"longclip-run: {hint}", err=True)
        if report_path is not None:  # from the committed OUTPUT, exactly as longclip-report would, and the baseline
            from ..report import ReportOptions, write_report

            write_report(output_path, report_path, ReportOptions(image_key=image_key, text_key=text_key,
                                                                 output_key=output_key, image_root=image_root),
                         baseline=summary.baseline)
            if not quiet:
                click.echo(f"report: {report_path}", err=True)
        if summary.nothing_done:
            what = "embedded" if embed_only else "scored"
            click.echo(f"longclip-run: not one of the {summary.rows} rows could be {what}"
                       f"{'' if embed_only else f' ({output_path} has each reason)'}: exit status {NOTHING_DONE}",
                       err=True)
            raise SystemExit(NOTHING_DONE)
    except LongCLIPError as exc:
        click.echo(f"longclip-run: error: {exc}", err=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        kept = ("the embeddings folder keeps what was embedded: run it again to continue" if embed_only else
                "a Ray run leaves no partial output: run it again" if engine == "ray" else
                f"the finished chunks are kept in {str(work_dir_for(Path(output_path)))!r}: run again with --resume "
                "to continue")
        click.echo(f"longclip-run: interrupted; {kept}", err=True)
        raise SystemExit(130) from None


NOTHING_DONE = 3
"""Exit status of a run that finished (OUTPUT written) without scoring one row, or an --embed-only run that embedded
nothing: every image missing, every text empty..."""


def missing_hint(summary: RunSummary, image_root: str | None) -> str:
    """When most failures are ``missing_file`` of relative paths: which folder they resolved against, and
    ``--image-root``; else ``""``."""
    missing = summary.failed.get(MISSING_FILE, 0)
    if not missing or 2 * missing <= sum(summary.failed.values()):
        return ""
    if summary.missing_example and "image not found" not in summary.missing_example:
        return ""  # a WebDataset sample or a folder's key without an image: no path was resolved
    quoted = re.search(r"'([^']*)'", summary.missing_example)
    folder = os.path.abspath(image_root or os.curdir)
    if quoted is not None:  # the first quoted path of the reason: the file (or its folder) looked for
        looked = quoted[1]
        relative = looked.startswith(os.path.join(image_root, "")) if image_root else not os.path.isabs(looked)
        if not relative:
            return ""
    where = f"--image-root {folder!r}" if image_root else f"the current directory {folder!r}"
    example = f" (e.g. {summary.missing_example.split(': ', 1)[1]})" if ": " in summary.missing_example else ""
    return (f"{missing} of {summary.rows} rows failed missing_file{example}: relative image paths were resolved "
            f"against {where}; if the images are elsewhere, pass --image-root FOLDER")


def _names(values: str) -> tuple[str, ...]:
    """``"jpg, png"`` -> ``("jpg", "png")``."""
    return tuple(v.strip() for v in values.split(",") if v.strip())


def _check_options(input_path: str, output_path: str, report_path: str | None, engine: str, resume: bool) -> None:
    """The checks that concern the options themselves, before any engine looks at the files."""
    if engine == "ray" and resume:
        raise EngineError("--resume is for the local engine: a Ray run that stops leaves no partial output; run it "
                          "again, or use --engine local for a resumable run")
    if report_path is not None:
        from ..report import check_report_path

        for other, what in ((input_path, "INPUT"), (output_path, "OUTPUT")):
            if same_file(report_path, other):
                raise InputError(f"--report {report_path!r} is the {what} file: name another .html file")
        check_report_path(report_path)
        if Path(output_path).suffix.lower() not in FORMATS:
            raise InputError(f"--report needs OUTPUT to be one file ({', '.join(FORMATS)}), not {output_path!r}; "
                             "run longclip-report on the scored file instead")


def _run_local(input_path: str, output_path: str, model_name: str, opts: RunOptions, device: str, resume: bool,
               restart: bool, decode_workers: int | None, decode_timeout: float, embeddings_dir: str | None,
               embeddings_dtype: str, quiet: bool) -> RunSummary:
    from ..engines.local import execute, plan_file

    with plan_file(input_path, output_path, opts, resume, restart) as plan, contextlib.ExitStack() as stack:
        model, pool, store = _load(stack, model_name, plan.opts, device, decode_workers, decode_timeout,
                                   embeddings_dir, embeddings_dtype)
        return execute(plan, model, progress=None if not quiet else False, pool=pool, store=store)


def _embed_only(input_path: str, model_name: str, opts: RunOptions, device: str, decode_workers: int | None,
                decode_timeout: float, embeddings_dir: str, embeddings_dtype: str, quiet: bool) -> RunSummary:
    from ..engines.local import embed_file, open_input

    reader = open_input(input_path, opts)  # the input checked before the model loads
    with contextlib.ExitStack() as stack:
        model, pool, store = _load(stack, model_name, opts, device, decode_workers, decode_timeout, embeddings_dir,
                                   embeddings_dtype)
        assert store is not None
        return embed_file(model, reader, store, opts, progress=None if not quiet else False, pool=pool)


def _load(stack: contextlib.ExitStack, model_name: str, opts: RunOptions, device: str, decode_workers: int | None,
          decode_timeout: float, embeddings_dir: str | None, embeddings_dtype: str
          ) -> tuple[LongCLIP, DecodePool | ThreadPool, EmbeddingStore | None]:
    """The model, its decode pool and the embeddings folder (entered on ``stack``): the folder first (another
    model's is refused before the model loads), and the workers start (a fresh interpreter each) while it loads."""
    from ..contract.manifest import read_manifest
    from ..engines.assemble import load_model, open_store, split_cpus, start_pool
    from ..model.resolve import resolve_model_dir

    model_dir = resolve_model_dir(model_name)
    manifest = read_manifest(model_dir)
    store = None
    if embeddings_dir is not None:
        store = stack.enter_context(open_store(embeddings_dir, manifest, embeddings_dtype))
    split = split_cpus(device, decode_workers)
    pool = stack.enter_context(start_pool(manifest, split, opts.batch_size, opts.max_pixels, decode_timeout))
    return load_model(model_dir, device, split, opts.batch_size), pool, store


def _run_ray(input_path: str, output_path: str, model_name: str, opts: RunOptions, device: str,
             ray_opts: RayOptions, quiet: bool) -> RunSummary:
    from ..engines.ray import execute_ray, plan_ray
    from ..model.resolve import resolve_model_dir

    with plan_ray(input_path, output_path, opts, device, local_ray=ray_opts.address is None) as plan:
        return execute_ray(plan, resolve_model_dir(model_name), ray_opts, progress=False if quiet else None)


if __name__ == "__main__":
    main()
