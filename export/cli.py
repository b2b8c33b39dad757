"""``longclip-export CHECKPOINT -o OUT_DIR``: parse, call, report."""

from __future__ import annotations

import click

from longclip.runtime.cli.console import configure_logging, tolerate_broken_stderr, version_option
from longclip.runtime.contract.constants import OPSET
from longclip.runtime.contract.errors import LongCLIPError, ParityError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@version_option()
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder to write vision.onnx, text.onnx and manifest.json into.")
@click.option("--opset", default=OPSET, show_default=True, type=click.IntRange(17), help="ONNX opset (>= 17).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="int8: CPU (int8 GEMMs, one activation scale per row: row-invariant; gate |Δscore| <= 0.01); "
                   "fp16: GPU (gate 2e-3).")
@click.option("--attention", type=click.Choice(["auto", "fused", "explicit"]), default="auto", show_default=True,
              help="auto: fused into ONNX Runtime's Attention op for int8 and fp16, plain ONNX for fp32; "
                   "explicit: plain ONNX (TensorRT).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors.")
def main(checkpoint: str, out_dir: str, opset: int, precision: str, attention: str, overwrite: bool,
         quiet: bool) -> None:
    """Export a LongCLIP CHECKPOINT (.pt/.bin/.ckpt/.safetensors file, a transformers CLIP folder with
    config.json, or a folder holding a checkpoint) to two ONNX graphs and a manifest, and prove them against the
    PyTorch reference before saying done."""
    tolerate_broken_stderr()
    configure_logging(quiet)
    try:
        from .build import export_model
    except ImportError as exc:
        click.echo(f"longclip-export: error: {exc.name or exc} is not installed; the exporter needs the export "
                   "extra: pip install 'longclip[export]' (or '.[export]' from a checkout)", err=True)
        raise SystemExit(1) from None

    try:
        result = export_model(checkpoint, out_dir, opset=opset, overwrite=overwrite, precision=precision,
                              attention=attention)
    except ParityError as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(1) from None
    except LongCLIPError as exc:
        click.echo(f"longclip-export: error: {exc}", err=True)
        raise SystemExit(1) from None
    if not quiet:
        click.echo(result.report.table())
        if result.accuracy is not None:
            click.echo(f"\n{result.precision} accuracy gate\n{result.accuracy.table()}")
        click.echo(f"done: {result.variant} {result.precision} from {result.checkpoint} -> {result.model_dir} "
                   f"(parity passed, {result.seconds:.1f} s)")


if __name__ == "__main__":
    main()
