"""The input pipeline at the hardware's limit: is the model ever waiting for the CPU?

    python benchmarks/pipeline.py --rows 8000 --rounds 3                  # decode-bound (a near-zero 336-px model)
    python benchmarks/pipeline.py --model-bound --rows 240 --baseline SRC  # B/16 fp32 and int8, against SRC's code

Decode-bound: a model exported here whose towers cost almost nothing (196 patches of 24 px, one layer of width 64: ~0.4 ms per image on two cores),
on distinct 640x480 JPEGs with 10-60-word captions. Each round runs ``longclip-run`` as a whole process per case
(interleaved, so a noisy machine hits every case alike) and reads its summary; the single-core decode+preprocess
rate is measured in the same run, and each case is reported against cores x that rate.

Model-bound: random-weight B/16 fp32 and int8, the same rows, this checkout against ``--baseline`` (a checkout of
the code to compare with, run through a PYTHONPATH shim with this same interpreter).

Results print as a Markdown table; ``--out FILE`` appends them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ("a photo of the red house with two windows near a quiet river under grey clouds at dusk while children "
         "play football on the wet grass and an old dog sleeps by the door").split()


def make_rows(folder: Path, rows: int, seed: int = 0) -> Path:
    """``rows`` distinct 640x480 JPEGs (smooth noise, ~40 KB each) with captions of 10-60 words; another ``seed``
    gives the same images with other captions."""
    rng = np.random.default_rng(seed)
    images = folder / "images"
    images.mkdir(exist_ok=True)
    data = folder / (f"rows-{rows}.jsonl" if seed == 0 else f"rows-{rows}-captions-{seed}.jsonl")
    with open(data, "w") as f:
        for i in range(rows):
            path = images / f"{i:06d}.jpg"
            base = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)  # drawn either way: captions follow the seed
            if not path.exists():
                Image.fromarray(base).resize((640, 480), Image.Resampling.BICUBIC).save(path, quality=90)
            caption = " ".join(rng.choice(WORDS, int(rng.integers(10, 61))))
            f.write(json.dumps({"image_path": f"images/{i:06d}.jpg", "text": f"{caption} {i}"}) + "\n")
    return data


def export(folder: Path, name: str, make_state, precision: str = "fp32") -> Path:
    out = folder / f"{name}-{precision}"
    if (out / "manifest.json").is_file():
        return out
    import torch

    from longclip.export import export_model

    checkpoint = folder / f"{name}.pt"
    if not checkpoint.exists():
        torch.save(make_state(), checkpoint)
    export_model(checkpoint, out, precision=precision)
    return out


def near_zero_state():
    from longclip.export.model import LongCLIPConfig
    from longclip.export.random_checkpoint import random_state_dict

    return random_state_dict(LongCLIPConfig(embed_dim=32, image_size=336, patch_size=24, vision_width=64,
                                            vision_layers=1, text_width=64, text_layers=1))


def preset_state(preset: str):
    """A function making the random state dict of ``preset`` (``random_checkpoint.PRESETS``)."""
    def make():
        from longclip.export.random_checkpoint import PRESETS, random_state_dict

        return random_state_dict(PRESETS[preset])
    return make


def single_core_rate(data: Path, size: int, n: int = 300) -> float:
    """Images/s of ``decode_image`` on one core (in a fresh process pinned to one CPU), same images."""
    code = f"""
import json, os, time, sys
from longclip.runtime.decode.preprocess import decode_image
os.sched_setaffinity(0, {{sorted(os.sched_getaffinity(0))[0]}})
rows = [json.loads(l) for l in open({str(data)!r})][:{n}]
paths = [os.path.join({str(data.parent)!r}, r["image_path"]) for r in rows]
for p in paths[:20]:
    decode_image(p, {size})
start = time.perf_counter()
for p in paths:
    decode_image(p, {size})
print(len(paths) / (time.perf_counter() - start))
"""
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def run_cli(data: Path, model: Path, extra: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """One ``longclip-run`` as a whole process: its wall time, and what its summary says."""
    out = data.parent / "out.parquet"
    cmd = [sys.executable, "-m", "longclip.runtime.cli.run", str(data), "-m", str(model), "-o", str(out), "--device",
           "cpu", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=data.parent, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr[-2000:]}")
    rows = int(re.search(r"rows (\d+):", proc.stderr).group(1))
    result = {"wall": wall, "rows/s (process)": rows / wall,
              "rows/s (scoring)": float(re.search(r"([\d.]+) rows/s", proc.stderr).group(1))}
    busy = re.search(r"image tower (\d+)%, text tower (\d+)%", proc.stderr)
    if busy:
        result["image busy %"], result["text busy %"] = float(busy.group(1)), float(busy.group(2))
    out.unlink(missing_ok=True)
    return result


def shim(source: Path, folder: Path) -> dict[str, str]:
    """PYTHONPATH that makes ``longclip.runtime`` / ``longclip.export`` the ones in checkout ``source``."""
    root = folder / "shim"
    (root / "longclip").mkdir(parents=True, exist_ok=True)
    for part in ("runtime", "export"):
        link = root / "longclip" / part
        if not link.exists():
            link.symlink_to(source / part)
    return {"PYTHONPATH": str(root)}


def interleaved(cases: dict[str, tuple[Path, Path, list[str], dict[str, str] | None]], rounds: int
                ) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    for r in range(rounds):
        for name, (data, model, extra, env) in cases.items():
            results[name].append(run_cli(data, model, extra, env))
            print(f"round {r + 1} {name}: {results[name][-1]}", file=sys.stderr, flush=True)
    return results


def best(runs: list[dict[str, float]], key: str) -> dict[str, float]:
    return max(runs, key=lambda r: r[key])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model-bound", action="store_true", help="B/16 fp32 and int8 instead of the near-zero model")
    parser.add_argument("--embeddings", action="store_true",
                        help="B/16 fp32: the same images with new captions, a warm --embeddings folder vs none")
    parser.add_argument("--preset", default="b16", help="the random model of --model-bound and --embeddings")
    parser.add_argument("--baseline", type=Path, help="a checkout to compare with (model-bound)")
    parser.add_argument("--workers", type=int, nargs="*", default=[], help="also run with these --decode-workers")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "longclip-bench-pipeline")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from longclip.runtime.decode.cpus import available_cpus

    args.cache.mkdir(parents=True, exist_ok=True)
    data = make_rows(args.cache, args.rows)
    cores = available_cpus()
    label = "B/16" if args.preset == "b16" else args.preset
    lines = []
    if args.embeddings:
        import shutil

        model = export(args.cache, args.preset, preset_state(args.preset))
        filled = args.cache / f"embeddings-{args.rows}"
        shutil.rmtree(filled, ignore_errors=True)
        run_cli(data, model, ["--embeddings", str(filled)])  # the first captions fill the folder
        new = make_rows(args.cache, args.rows, seed=1)
        folder = args.cache / f"embeddings-{args.rows}-round"
        cold, warm = "cold (no embeddings folder)", "warm (--embeddings, images cached)"
        results: dict[str, list[dict[str, float]]] = {cold: [], warm: []}
        for r in range(args.rounds):
            results[cold].append(run_cli(new, model, []))
            shutil.rmtree(folder, ignore_errors=True)  # each warm round: the images cached, the new captions not
            shutil.copytree(filled, folder)
            results[warm].append(run_cli(new, model, ["--embeddings", str(folder)]))
            for name in (cold, warm):
                print(f"round {r + 1} {name}: {results[name][-1]}", file=sys.stderr, flush=True)
        lines += [f"Embeddings as a cache: random {label} fp32, the same {args.rows} distinct 640x480 JPEGs with new "
                  f"10-60-word captions, {cores} CPUs; best of {args.rounds} interleaved rounds.", "",
                  "| case | rows/s (whole process) | wall s | image tower busy | text tower busy |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for name, runs in results.items():
            b = best(runs, "rows/s (process)")
            lines.append(f"| {name} | {b['rows/s (process)']:.2f} | {b['wall']:.1f} | {b.get('image busy %', 0):.0f}% "
                         f"| {b.get('text busy %', 0):.0f}% |")
        ratios = [w["rows/s (process)"] / c["rows/s (process)"] for c, w in zip(results[cold], results[warm])]
        lines += ["", f"warm / cold, each round: {', '.join(f'{x:.1f}x' for x in ratios)}"]
    elif not args.model_bound:
        model = export(args.cache, "near-zero-336-p24", near_zero_state)
        rate = single_core_rate(data, 336)
        cases = {"threads (--decode-workers 0)": (data, model, ["--decode-workers", "0"], None),
                 "default (worker processes)": (data, model, [], None)}
        for n in args.workers:
            cases[f"--decode-workers {n}"] = (data, model, ["--decode-workers", str(n)], None)
        results = interleaved(cases, args.rounds)
        lines += [f"Decode-bound: near-zero 336-px model, {args.rows} distinct 640x480 JPEGs, {cores} CPUs, "
                  f"single-core decode+preprocess {rate:.1f} images/s (so {cores} x = {cores * rate:.1f}); best of "
                  f"{args.rounds} interleaved rounds, whole process.", "",
                  "| case | rows/s (whole process) | vs cores x single-core | rows/s (scoring, model loaded) | "
                  "image tower busy |", "| --- | ---: | ---: | ---: | ---: |"]
        for name, runs in results.items():
            b = best(runs, "rows/s (process)")
            lines.append(f"| {name} | {b['rows/s (process)']:.1f} | {b['rows/s (process)'] / (cores * rate):.2f} | "
                         f"{best(runs, 'rows/s (scoring)')['rows/s (scoring)']:.1f} | {b.get('image busy %', 0):.0f}% |")
    else:
        cases = {}
        for precision in ("fp32", "int8"):
            model = export(args.cache, args.preset, preset_state(args.preset), precision)
            cases[f"{label} {precision}, this checkout"] = (data, model, [], None)
            if args.baseline:
                cases[f"{label} {precision}, baseline"] = (data, model, [], shim(args.baseline, args.cache))
        results = interleaved(cases, args.rounds)
        lines += [f"Model-bound: random {label}, {args.rows} distinct 640x480 JPEGs with 10-60-word captions, {cores} "
                  f"CPUs; best of {args.rounds} interleaved rounds.", "",
                  "| case | rows/s (whole process) | rows/s (scoring) | image tower busy | text tower busy |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for name, runs in results.items():
            b = best(runs, "rows/s (process)")
            lines.append(f"| {name} | {b['rows/s (process)']:.2f} | {best(runs, 'rows/s (scoring)')['rows/s (scoring)']:.2f}"
                         f" | {b.get('image busy %', float('nan')):.0f}% | {b.get('text busy %', float('nan')):.0f}% |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
