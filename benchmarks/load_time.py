"""``LongCLIP(...)`` load time: graphs hashed (a first load), stamped (every later load), and unchecked (sha256 and
I/O checks patched out: the load as it was before them). Each load runs in a fresh process and only the
constructor is timed (imports excluded); the modes are interleaved over the rounds, and the files stay in the page
cache throughout (a first load straight after a download or copy also reads them from disk).

    python benchmarks/load_time.py models/longclip-L-336 --rounds 5
    python benchmarks/load_time.py models/longclip-L-336 --also "today=/path/to/an/older/checkout"

``--also NAME=DIR`` times the ``LongCLIP`` that ``DIR`` (a folder holding a ``longclip`` package, e.g. an older
commit's ``runtime`` unpacked as ``DIR/longclip/runtime``) provides, as one more column.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

TIMED = """
import sys, time
from longclip.runtime.model import longclip as model
if sys.argv[2] == "unchecked":
    for name in ("verify_graph", "check_io"):  # AttributeError, not a silently checked load, once they move
        getattr(model, name)
        setattr(model, name, lambda *args: None)
start = time.perf_counter()
model.LongCLIP(sys.argv[1], device="cpu")
print(time.perf_counter() - start)
"""


def load_seconds(model_dir: str, mode: str, cache: str, path: str | None = None) -> float:
    env = {**os.environ, "LONGCLIP_CACHE": cache, **({"PYTHONPATH": path} if path else {})}
    proc = subprocess.run([sys.executable, "-c", TIMED, model_dir, mode], env=env, capture_output=True, text=True,
                          check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--also", action="append", default=[], metavar="NAME=DIR")
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.also)
    times: dict[str, list[float]] = {name: [] for name in ("unchecked", *extra, "first (hashing)", "stamped")}
    with tempfile.TemporaryDirectory() as stamped:
        load_seconds(args.model_dir, "checked", stamped)  # prime the stamps (and the page cache)
        for _ in range(args.rounds):
            times["unchecked"].append(load_seconds(args.model_dir, "unchecked", stamped))
            for name, path in extra.items():
                times[name].append(load_seconds(args.model_dir, "plain", stamped, path))
            with tempfile.TemporaryDirectory() as empty:
                times["first (hashing)"].append(load_seconds(args.model_dir, "checked", empty))
            times["stamped"].append(load_seconds(args.model_dir, "checked", stamped))
    print(f"| {args.model_dir} | " + " | ".join(times) + " |")
    print("| --- |" + " ---: |" * len(times))
    print("| median s | " + " | ".join(f"{statistics.median(v):.3f}" for v in times.values()) + " |")
    print("| min-max s | " + " | ".join(f"{min(v):.3f}-{max(v):.3f}" for v in times.values()) + " |")


if __name__ == "__main__":
    main()
