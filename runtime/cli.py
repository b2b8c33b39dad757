"""``longclip-run INPUT -m MODEL -o OUTPUT``: score a JSON Lines file of image/text rows."""

from __future__ import annotations

import time

import click
import numpy as np

from .console import configure_logging
from .errors import LongCLIPError
from .session import DEVICES


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False))
@click.option("-m", "--model", "model_dir", required=True, help="Exported model folder (from longclip-export).")
@click.option("-o", "--output", "output_path", required=True, type=click.Path(dir_okay=False), help="Output .jsonl.")
@click.option("--image-key", default="image_path", show_default=True, help="Column holding image paths.")
@click.option("--text-key", default="text", show_default=True, help="Column holding texts.")
@click.option("--output-key", default="longclip_score", show_default=True, help="Score column to add.")
@click.option("--device", default="auto", show_default=True, help=f"One of {', '.join(DEVICES)} (cuda:N too).")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors.")
def main(input_path: str, model_dir: str, output_path: str, image_key: str, text_key: str, output_key: str,
         device: str, quiet: bool) -> None:
    """Score every INPUT row with LongCLIP: adds OUTPUT_KEY in [0, 1] and OUTPUT_KEY_error (empty when scored).

    Relative image paths resolve against the current directory.
    """
    configure_logging(quiet)
    from .dataset import check_columns, score_frame
    from .model import LongCLIP
    from .tables import read_table, write_table

    try:
        start = time.perf_counter()
        frame = read_table(input_path)
        check_columns(list(frame.columns), image_key, text_key)
        model = LongCLIP(model_dir, device=None if device == "auto" else device)
        scored = score_frame(model, frame, image_key, text_key, output_key)
        write_table(scored, output_path)
    except LongCLIPError as exc:
        click.echo(f"longclip-run: error: {exc}", err=True)
        raise SystemExit(1) from None
    if not quiet:
        failed = int(np.isnan(scored[output_key].to_numpy()).sum())
        seconds = time.perf_counter() - start
        click.echo(f"{len(scored)} rows, {len(scored) - failed} scored, {failed} failed, "
                   f"{len(scored) / max(seconds, 1e-9):.1f} rows/s on {model.provider} -> {output_path}", err=True)


if __name__ == "__main__":
    main()
