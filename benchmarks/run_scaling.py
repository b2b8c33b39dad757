"""longclip-run at scale: peak RSS against row count, and rows/s, as a subprocess per case (whole process).

    python benchmarks/run_scaling.py MODEL_DIR --rows 10000 200000 --unique-images 64
    python benchmarks/run_scaling.py MODEL_DIR --rows 512 --unique-images 512   # every row a new image + text

Images are generated JPEGs (640x480); captions are ~40-token sentences. Prints one line per case.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_inputs(folder: Path, rows: int, unique_images: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    images = folder / "images"
    images.mkdir(exist_ok=True)
    for i in range(unique_images):
        path = images / f"{i:06d}.jpg"
        if not path.exists():
            base = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
            Image.fromarray(base).resize((640, 480), Image.Resampling.BILINEAR).save(path, quality=85)
    words = "a photo of the red house with two windows near a quiet river under grey clouds at dusk".split()
    data = folder / f"rows-{rows}-{unique_images}.jsonl"
    with open(data, "w") as f:
        for i in range(rows):
            caption = " ".join(rng.choice(words, 40)) + f" number {i % max(unique_images, 1)}"
            f.write(json.dumps({"image_path": f"images/{i % unique_images:06d}.jpg", "text": caption}) + "\n")
    return data


def run_case(model: str, data: Path, out: Path, batch_size: int) -> tuple[float, int, float]:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "longclip.runtime.cli.run", str(data), "-m", model, "-o",
           str(out), "--device", "cpu", "--batch-size", str(batch_size)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=data.parent, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    rate = float(re.search(r"([\d.]+) rows/s", proc.stderr).group(1))
    return seconds, rss_kb, rate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 200_000])
    parser.add_argument("--unique-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work", type=Path, help="a folder for the inputs and out.jsonl, kept (default: a temporary "
                        "one, removed after)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() if args.work is None else contextlib.nullcontext(args.work) as tmp:
        folder = Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for rows in args.rows:
            data = make_inputs(folder, rows, args.unique_images)
            seconds, rss_kb, rate = run_case(args.model, data, folder / "out.jsonl", args.batch_size)
            print(f"rows={rows} unique_images={args.unique_images} wall={seconds:.1f}s "
                  f"peak_rss={rss_kb / 1024:.0f}MiB scoring_rate={rate:.1f} rows/s", flush=True)


if __name__ == "__main__":
    main()
