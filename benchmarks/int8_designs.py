"""int8 designs side by side: whole-process speed against fp32, drift from fp32, and row invariance, in one run.

    python benchmarks/int8_designs.py --fp32 models/bench/b16-fp32 --fused models/bench/b16-fused --rows 48 \
        --out docs/benchmarks.md

``--fp32``: an fp32 export (plain ONNX); ``--fused``: the same checkpoint exported with ``--attention fused`` at
fp32, which each int8 design quantizes here:

- ``dynamic``: ONNX Runtime's ``quantize_dynamic`` (``QAttention``, ``DynamicQuantizeLinear``: per-tensor
  activation scales computed per call; the int8 export before issue 25);
- ``row-wise, MatMulIntegerToFloat``: per-row activation scales, the fused contrib GEMM (the export's default);
- ``row-wise, standard ops``: per-row activation scales, ``MatMulInteger`` -> ``Cast`` -> ``Mul`` (plain ONNX);
- ``row-wise, MatMulIntegerToFloat, QKV int8``: the attention's QKV projection row-wise int8 too, its core a fp32
  ``MultiHeadAttention``.

Invariance: each row's image and text embedding alone vs in batches of 32 (``LongCLIP.encode_*``), counted in rows
whose bits move. Drift: max |Δscore| from the fp32 run's scores, same rows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import ROOT, machine, make_rows, prepend_section, timed  # noqa: E402

DESIGNS = ("dynamic", "row-wise, MatMulIntegerToFloat", "row-wise, standard ops",
           "row-wise, MatMulIntegerToFloat, QKV int8")


def quantize(design: str, src: Path, dst: Path) -> None:
    if design == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Attention"], extra_options={"MatMulConstBOnly": True})
    else:
        from longclip.export.quantize import quantize_rowwise

        quantize_rowwise(src, dst, "fused" if "MatMulIntegerToFloat" in design else "standard", qkv="QKV" in design)


def int8_folder(design: str, fused: Path, out: Path) -> Path:
    """A copy of the fused fp32 folder with int8 graphs and a manifest that says so."""
    from longclip.runtime.contract.manifest import sha256_file

    if (out / "manifest.json").exists():
        return out
    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    manifest = json.loads((fused / "manifest.json").read_text())
    for tower in ("vision", "text"):
        graph = manifest["graphs"][tower]
        quantize(design, fused / graph["file"], work / graph["file"])
        graph.update(files=[graph["file"]], sha256=sha256_file(work / graph["file"]), data_sha256={})
    manifest.update(precision="int8", row_invariant=design != "dynamic",
                    activation_scales=None if design == "dynamic" else "per-row")
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2))
    work.rename(out)
    return out


def moved_rows(folder: Path, rows: Path) -> int:
    """Rows whose image or text embedding gets other bits alone than in batches of 32."""
    from longclip.runtime import LongCLIP

    table = pd.read_json(rows, lines=True)
    model = LongCLIP(folder, device="cpu")
    images = [str(rows.parent / p) for p in table.image_path]
    texts = list(table.text)
    img, txt = model.encode_images(images, 32), model.encode_texts(texts, 32)
    img1 = np.concatenate([model.encode_images([p], 1) for p in images])
    txt1 = np.concatenate([model.encode_texts([t], 1) for t in texts])
    return int(((img != img1).any(axis=1) | (txt != txt1).any(axis=1)).sum())


def scores(path: Path) -> np.ndarray:
    return pd.read_json(path, lines=True)["longclip_score"].to_numpy(dtype=np.float64)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", required=True, type=Path)
    parser.add_argument("--fused", required=True, type=Path)
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", default=str(ROOT / "models" / "bench"), type=Path)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    folders = {"fp32": args.fp32}
    for design in DESIGNS:
        slug = design.split(",", 1)[-1].strip().replace(", ", "-").replace(" ", "-").lower()
        folders[f"int8 {design}"] = int8_folder(design, args.fused, args.work / f"int8-{slug}")
    rows = make_rows(args.work / f"data-{args.rows}-1", args.rows)
    run = [sys.executable, "-m", "longclip.runtime.cli.run", str(rows), "--device", "cpu", "-q"]
    outs = {name: rows.parent / f"out-{i}.jsonl" for i, name in enumerate(folders)}
    seconds = {name: float("inf") for name in folders}
    for _ in range(args.repeats):  # interleaved: the shared machine's drift hits every contender alike
        for name, folder in folders.items():
            seconds[name] = min(seconds[name], timed([*run, "-m", str(folder), "-o", str(outs[name])], rows.parent))
            print(f"{name}: {args.rows / seconds[name]:.2f} rows/s", file=sys.stderr, flush=True)
    want = scores(outs["fp32"])
    lines = [f"## int8 designs, b16 on CPU — {datetime.date.today()}", "",
             f"Machine: {machine()} (a shared 2-core machine: compare ratios within this section only). "
             f"{args.rows} rows, 1 caption per 640x480 JPEG, captions of ~12 / ~60 / >248 tokens in turn; "
             f"whole `longclip-run` process each, best of {args.repeats}, interleaved in one run. Random weights.", "",
             "| model | rows/s | vs fp32 | max \\|Δscore\\| vs fp32 | rows whose bits move (alone vs batch 32) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, folder in folders.items():
        drift = float(np.abs(scores(outs[name]) - want).max())
        moved = moved_rows(folder, rows)
        lines.append(f"| {name} | {args.rows / seconds[name]:.2f} | {seconds['fp32'] / seconds[name]:.2f}x | "
                     f"{drift:.2e} | {moved} of {args.rows} |")
        print(lines[-1], file=sys.stderr, flush=True)
    report = "\n".join([*lines, ""])
    print(report)
    if args.out:
        prepend_section(Path(args.out), report)


if __name__ == "__main__":
    main()
