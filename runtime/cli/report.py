"""``longclip-report SCORED_FILE -o report.html``: a self-contained HTML report of a scored file."""

from __future__ import annotations

import click

from ..console import column_options, configure_logging
from ..errors import LongCLIPError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("scored_path", metavar="SCORED_FILE", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "html_path", required=True, type=click.Path(dir_okay=False),
              help="The report to write, e.g. report.html (one self-contained file).")
@column_options("Score column; reasons are read from <output-key>_error.")
@click.option("--title", default=None, help="Page title [default: 'LongCLIP scores: <file name>'].")
@click.option("-q", "--quiet", is_flag=True, help="Errors only.")
def main(scored_path: str, html_path: str, image_key: str, text_key: str, output_key: str, image_root: str | None,
         title: str | None, quiet: bool) -> None:
    """Write a report of SCORED_FILE (.jsonl, .json, .csv, .parquet, as longclip-run writes them): score
    histogram with a threshold slider, statistics, lowest/highest pairs, pairs around quantiles, failed rows."""
    configure_logging(quiet)
    from .data import ReportOptions
    from .page import write_report

    opts = ReportOptions(image_key=image_key, text_key=text_key, output_key=output_key, image_root=image_root,
                         title=title)
    try:
        data = write_report(scored_path, html_path, opts)
    except LongCLIPError as exc:
        click.echo(f"longclip-report: error: {exc}", err=True)
        raise SystemExit(1) from None
    if not quiet:
        click.echo(f"report {html_path}: {data.rows} rows, {data.stats.n} scored, {data.failed} failed", err=True)


if __name__ == "__main__":
    main()
