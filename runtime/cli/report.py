"""``longclip-report SCORED_FILE -o report.html``: a self-contained HTML report of a scored file."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..contract.errors import LongCLIPError
from ..model.baseline import SAMPLE_ROWS
from .console import column_options, configure_logging, tolerate_broken_stderr, version_option

if TYPE_CHECKING:
    import numpy as np

    from ..inputs.tables import TableReader
    from ..report.data import ReportOptions


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@version_option()
@click.argument("scored_path", metavar="SCORED_FILE", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "html_path", required=True, type=click.Path(dir_okay=False),
              help="The report to write, e.g. report.html (one self-contained file).")
@column_options("Score column; reasons are read from <output-key>_error.")
@click.option("--title", default=None, help="Page title [default: 'LongCLIP scores: <file name>'].")
@click.option("-m", "--model", "model_name", default=None,
              help="Draw a baseline of mismatched pairs with this model (the one that scored the file): a sample of "
                   "--baseline-rows rows is embedded again [default: no baseline; longclip-run --report draws one "
                   "while scoring].")
@click.option("--baseline-rows", default=SAMPLE_ROWS, show_default=True, type=click.IntRange(2),
              help="With -m: rows sampled for the baseline (about as many pairs).")
@click.option("--device", default="auto", show_default=True, help="With -m: the device the model runs on.")
@click.option("-q", "--quiet", is_flag=True, help="Errors only.")
def main(scored_path: str, html_path: str, image_key: str, text_key: str, output_key: str, image_root: str | None,
         title: str | None, model_name: str | None, baseline_rows: int, device: str, quiet: bool) -> None:
    """Write a report of SCORED_FILE (.jsonl, .json, .csv, .parquet, as longclip-run writes them): score
    histogram with a threshold slider, statistics, lowest/highest pairs, pairs around quantiles, failed rows; with
    -m, how often mismatched pairs pass each threshold."""
    tolerate_broken_stderr()
    configure_logging(quiet)
    from ..report.data import ReportOptions
    from ..report.page import write_report

    opts = ReportOptions(image_key=image_key, text_key=text_key, output_key=output_key, image_root=image_root,
                         title=title)
    try:
        if model_name is None:
            data = write_report(scored_path, html_path, opts)
        else:
            reader, baseline = _baseline(scored_path, html_path, opts, model_name, device, baseline_rows)
            data = write_report(reader, html_path, opts, baseline=baseline)
    except LongCLIPError as exc:
        click.echo(f"longclip-report: error: {exc}", err=True)
        raise SystemExit(1) from None
    if not quiet:
        click.echo(f"report {html_path}: {data.rows} rows, {data.stats.n} scored, {data.failed} failed", err=True)


def _baseline(scored_path: str, html_path: str, opts: ReportOptions, model_name: str, device: str,
              rows: int) -> tuple[TableReader, np.ndarray]:
    """The scored file's reader and the baseline drawn on a sample of its rows; everything that can be checked is
    checked before the model loads."""
    from ..contract.rows import check_image_root
    from ..engines.assemble import load_model, split_cpus, start_pool
    from ..engines.sample import sample_baseline
    from ..inputs.tables import TableReader
    from ..model.resolve import resolve_model_dir
    from ..report.data import check_report_columns
    from ..report.page import check_report_path

    check_report_path(html_path, scored_path)
    check_image_root(opts.image_root)
    reader = TableReader(scored_path)
    check_report_columns(reader, opts)
    split = split_cpus(device)
    model = load_model(resolve_model_dir(model_name), device, split)
    with start_pool(model.manifest, split) as pool:
        return reader, sample_baseline(model, reader, opts, pool, rows)


if __name__ == "__main__":
    main()
