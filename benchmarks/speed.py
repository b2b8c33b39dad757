"""Side-by-side speed of longclip-run against the PyTorch ways to score, in one run on one machine.

    python benchmarks/speed.py --preset b16 --rows 64 --out docs/benchmarks.md

Every contender is a whole process (start-up, model load, decode, preprocess, tokenize, forward, score) over
the same rows: unique 640x480 JPEGs and captions of mixed length (a third ~12 tokens, a third ~60, a third cut
at 248), measured in turn, best of --repeats. Also: text cost by caption length, and the image tower's FLOP/s
as a fraction of a large fp32 GEMM's, both measured here, now. Random weights in the official layout: speed
does not depend on the values.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("a photo of the red house with two windows near a quiet river under grey clouds at dusk while "
         "children play football on the wet grass and an old man walks his dog").split()


def caption(rng: np.random.Generator, n_words: int) -> str:
    return " ".join(rng.choice(WORDS, n_words))


def make_rows(folder: Path, n: int, seed: int = 0, captions_per_image: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        path = folder / "images" / f"{i // captions_per_image:05d}.jpg"
        if not path.exists():
            small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            Image.fromarray(small).resize((640, 480), Image.Resampling.BILINEAR).save(path, quality=85)
        words = (10, 58, 300)[i % 3]  # ~12, ~60 and >248 tokens
        lines.append(json.dumps({"image_path": path.relative_to(folder).as_posix(), "text": caption(rng, words)}))
    rows = folder / "rows.jsonl"
    rows.write_text("\n".join(lines) + "\n")
    return rows


def ensure_model(work: Path, preset: str, precision: str) -> tuple[Path, Path]:
    checkpoint = work / f"longclip-{preset}.pt"
    if not checkpoint.exists():
        subprocess.run([sys.executable, "-m", "longclip.export.random_checkpoint", preset, str(checkpoint)], check=True)
    out = work / f"{preset}-{precision}"
    if not (out / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "longclip.export.cli", str(checkpoint), "-o", str(out), "--precision",
                        precision, "--overwrite", "-q"], check=True)
    return checkpoint, out


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def text_length_cost(model_dir: Path, repeats: int) -> tuple[float, float]:
    from longclip.runtime import LongCLIP

    model = LongCLIP(model_dir, device="cpu")
    rng = np.random.default_rng(1)
    short = [caption(rng, 10) for _ in range(96)]
    long = [caption(rng, 300) for _ in range(96)]
    model.encode_texts(short[:8])

    def best(texts: list[str]) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.encode_texts(texts)
            times.append(time.perf_counter() - start)
        return min(times)

    return best(short), best(long)


def int8_tower_speedup(fp32: Path, int8: Path, repeats: int) -> tuple[float, float]:
    """int8 over fp32, in one process with start-up left out: (image tower at batch 32, 96 mixed captions)."""
    from longclip.runtime import LongCLIP

    models = {"fp32": LongCLIP(fp32, device="cpu"), "int8": LongCLIP(int8, device="cpu")}
    n = models["fp32"].image_size
    pixels = np.random.default_rng(2).standard_normal((32, 3, n, n), dtype=np.float32)
    rng = np.random.default_rng(3)
    ids = models["fp32"].tokenizer([caption(rng, (10, 58, 300)[i % 3]) for i in range(96)])
    best = {(p, tower): float("inf") for p in models for tower in ("image", "text")}
    for _ in range(repeats + 1):  # the first round warms up
        for p, model in models.items():
            best[p, "image"] = min(best[p, "image"], _time(lambda: model.embed_pixels(pixels)))
            best[p, "text"] = min(best[p, "text"], _time(lambda: model.embed_ids(ids)))
    return tuple(best["fp32", t] / best["int8", t] for t in ("image", "text"))


def gemm_and_tower_flops(model_dir: Path, repeats: int, n: int = 4096) -> tuple[float, float]:
    """(fp32 ``n``x``n`` GEMM FLOP/s via ONNX Runtime's own MatMul, image tower FLOP/s at batch 32)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from longclip.runtime.contract.manifest import read_manifest
    from longclip.runtime.model.session import create_session

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    gemm = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                .SerializeToString(), providers=["CPUExecutionProvider"])
    a = np.random.rand(n, n).astype(np.float32)
    feeds = {"a": a, "b": a}
    gemm.run(None, feeds)
    cfg = read_manifest(model_dir).raw["config"]
    w, layers, p, size = cfg["vision_width"], cfg["vision_layers"], cfg["patch_size"], cfg["image_size"]
    tokens = (size // p) ** 2 + 1
    # Useful FLOPs: full blocks, then the last block for the class token only (keys and values for every token).
    block = tokens * 12 * w * w + 2 * tokens * tokens * w
    last = tokens * 3 * w * w + 2 * tokens * w + 9 * w * w
    flops_per_image = 2 * ((layers - 1) * block + last + (tokens - 1) * w * 3 * p * p)
    vision = create_session(read_manifest(model_dir).vision_graph, "cpu")
    x = np.random.randn(32, 3, size, size).astype(np.float32)
    vision.run(None, {"pixel_values": x})
    gemm_time = tower_time = float("inf")
    for _ in range(max(3, repeats)):  # alternate, so a slow spell of this shared machine cannot favour either
        gemm_time = min(gemm_time, _time(lambda: gemm.run(None, feeds)))
        tower_time = min(tower_time, _time(lambda: vision.run(None, {"pixel_values": x})))
    return 2 * n**3 / gemm_time, 32 * flops_per_image / tower_time


def ort_tuning(model_dir: Path, repeats: int) -> list[str]:
    """Image tower (batch 16) under each ONNX Runtime setting that could matter here, measured in turn."""
    import onnxruntime as ort

    from longclip.runtime.contract.manifest import read_manifest

    m = read_manifest(model_dir)
    x = np.random.randn(16, 3, m.image_size, m.image_size).astype(np.float32)
    settings = {
        "ORT_ENABLE_ALL (default here)": ({}, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
        "ORT_ENABLE_BASIC": ({}, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        "no thread spinning": ({"session.intra_op.allow_spinning": "0"}, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
    }
    sessions = {}
    for name, (entries, level) in settings.items():
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        opts.log_severity_level = 3
        for key, value in entries.items():
            opts.add_session_config_entry(key, value)
        sessions[name] = ort.InferenceSession(str(m.vision_graph), opts, providers=["CPUExecutionProvider"])
        sessions[name].run(None, {"pixel_values": x})
    best = {name: float("inf") for name in sessions}
    for _ in range(repeats + 1):
        for name, session in sessions.items():
            best[name] = min(best[name], _time(lambda: session.run(None, {"pixel_values": x})))
    base = best["ORT_ENABLE_ALL (default here)"]
    return [f"  - {name}: {16 / t:.2f} images/s ({base / t:.2f}x)" for name, t in best.items()]


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime
    import torch

    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, "
            f"torch {torch.__version__}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="b16")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--captions-per-image", type=int, default=1,
                        help="Rows sharing each image (datasets often hold several captions per image).")
    parser.add_argument("--work", default=str(ROOT / "models" / "bench"))
    parser.add_argument("--out", default=None, help="Markdown file to write the table to (e.g. docs/benchmarks.md).")
    parser.add_argument("--no-torch", action="store_true",
                        help="longclip-run fp32 vs int8 only (PyTorch takes ~0.5 s a row: for runs of many rows).")
    parser.add_argument("--gemm-size", type=int, default=4096,
                        help="side of the fp32 GEMM the image tower is set against")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint, fp32 = ensure_model(work, args.preset, "fp32")
    _, int8 = ensure_model(work, args.preset, "int8")
    rows = make_rows(work / f"data-{args.rows}-{args.captions_per_image}", args.rows,
                     captions_per_image=args.captions_per_image)
    run = [sys.executable, "-m", "longclip.runtime.cli.run", str(rows), "--device", "cpu", "-q"]
    ref = [sys.executable, str(ROOT / "benchmarks" / "torch_reference.py"), str(checkpoint), str(rows)]
    contenders = {
        "longclip-run fp32": run + ["-m", str(fp32), "-o", str(rows.parent / "out-fp32.jsonl")],
        "longclip-run int8": run + ["-m", str(int8), "-o", str(rows.parent / "out-int8.jsonl")],
        "PyTorch fp32, batched (32)": ref + ["--mode", "batched"],
        "PyTorch fp32, row by row (status quo)": ref + ["--mode", "row-by-row"],
    }
    if args.no_torch:
        contenders = {name: cmd for name, cmd in contenders.items() if name.startswith("longclip-run")}
    seconds = {name: float("inf") for name in contenders}
    for _ in range(args.repeats):
        for name, cmd in contenders.items():
            seconds[name] = min(seconds[name], timed(cmd, rows.parent))
            print(f"{name}: {args.rows / seconds[name]:.2f} rows/s", file=sys.stderr, flush=True)
    heading = [
        f"## {args.preset} on CPU — {datetime.date.today()}",
        "",
        f"Machine: {machine()}. {args.rows} rows, {args.captions_per_image} caption(s) per 640x480 JPEG, captions "
        f"of ~12 / ~60 / >248 tokens in turn; "
        f"whole process each, best of {args.repeats}, measured in turn in one run.",
        "",
    ]
    int8_x = seconds["longclip-run fp32"] / seconds["longclip-run int8"]
    if args.no_torch:
        lines = [*heading, "| contender | rows/s |", "| --- | ---: |",
                 *(f"| {name} | {args.rows / s:.2f} |" for name, s in seconds.items()), "",
                 f"- int8 vs fp32 export: {int8_x:.2f}x whole process", ""]
    else:
        lines = [*heading, *torch_comparison(args, fp32, int8, seconds, int8_x)]
    report = "\n".join(lines)
    print(report)
    if args.out:
        prepend_section(Path(args.out), report)


def torch_comparison(args: argparse.Namespace, fp32: Path, int8: Path, seconds: dict[str, float],
                     int8_x: float) -> list[str]:
    """The full section's body: every contender against PyTorch, then the in-process measurements."""
    short, long = text_length_cost(fp32, args.repeats)
    image_x, text_x = int8_tower_speedup(fp32, int8, args.repeats)
    gemm, tower = gemm_and_tower_flops(fp32, args.repeats, args.gemm_size)
    tuning = ort_tuning(fp32, args.repeats)
    base = seconds["PyTorch fp32, batched (32)"]
    lines = [
        "| contender | rows/s | vs PyTorch batched | vs row by row |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, s in seconds.items():
        lines.append(f"| {name} | {args.rows / s:.2f} | {base / s:.2f}x | "
                     f"{seconds['PyTorch fp32, row by row (status quo)'] / s:.2f}x |")
    lines += [
        "",
        f"- int8 vs fp32 export: {int8_x:.2f}x whole process; "
        f"towers alone (start-up left out): image {image_x:.2f}x, text {text_x:.2f}x",
        f"- 96 captions: ~12 tokens {short * 1e3:.0f} ms, 248 tokens {long * 1e3:.0f} ms "
        f"(long/short = {long / short:.1f}x; the text graph runs at each batch's own length)",
        f"- image tower (fp32, batch 32): {tower / 1e9:.0f} GFLOP/s = {tower / gemm:.0%} of a {args.gemm_size}² "
        "fp32 GEMM "
        f"({gemm / 1e9:.0f} GFLOP/s, ONNX Runtime MatMul, same run)",
        "- ONNX Runtime settings, image tower fp32 batch 16:",
        *tuning,
        "",
    ]
    return lines


def prepend_section(out: Path, section: str) -> None:
    """Put ``section`` (a ``## `` heading and its body) first among the sections of ``out``, newest first."""
    previous = out.read_text() if out.exists() else "# Benchmarks\n\nNewest first.\n\n"
    head, _, rest = previous.partition("\n## ")
    out.write_text(head.rstrip() + "\n\n" + section + ("\n## " + rest if rest else ""))


if __name__ == "__main__":
    main()
