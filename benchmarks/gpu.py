"""GPU throughput of the towers: ONNX Runtime CUDA fp16 and fp32 against PyTorch fp16 eager, one GPU, one run.

    python benchmarks/gpu.py --preset l14-336 --work /tmp/gpu --json $OUT/gpu.json --out docs/benchmarks.md

Writes a random-weight checkpoint of the preset, exports it at fp32, fp16 (attention fused, the default) and fp16
with explicit attention (each with its parity gate, all at once), then runs each contender in a process of its
own, in turn: images/s and texts/s at each batch size and text length (host arrays in, host embeddings out, so the
copies are counted for everyone), the GPU memory the process holds at the end (both ORT's arena and PyTorch's
caching allocator keep their peak), and embeddings of one fixed set of pairs. Score drift is then computed against
ORT fp32. PyTorch fp16 eager is the released code's way: ``nn.MultiheadAttention`` blocks in half precision with
LayerNorm kept fp32 (CLIP's ``convert_weights``), texts padded to 248. A contender that fails is reported as such
and the others still run.

``--device cpu --preset tiny`` runs the same path on a CPU (PyTorch in fp32 there), which is how it is tested.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DRIFT_ROWS = 64
EXPORTS = {"fp32": ("fp32", "auto"), "fp16": ("fp16", "auto"), "fp16-explicit": ("fp16", "explicit")}
"""Model folder -> (precision, attention) of ``longclip-export``."""


def gpu_memory_used_mib() -> float | None:
    """Memory in use on GPU 0 (MiB), or None without nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
        return float(out.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def inputs(image_size: int, batch: int, length: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Normalized-looking pixels and ids of ``length`` tokens (SOT ... EOT), the same for every contender."""
    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((batch, 3, image_size, image_size), dtype=np.float32)
    ids = rng.integers(1000, 40000, (batch, length), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 49406, 49407
    return pixels, ids


def rate(fn, items: int, min_seconds: float) -> float:
    """Items per second of ``fn`` after two warm-up calls, timed over at least ``min_seconds`` and 3 calls."""
    fn()
    fn()
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < min_seconds:
        fn()
        calls += 1
    return items * calls / (time.perf_counter() - start)


def ort_worker(args: argparse.Namespace) -> dict:
    from longclip.runtime import LongCLIP

    model = LongCLIP(args.model, device=args.device, max_batch=max(args.batches))
    out = measure(model.provider, model.image_size, args, model.embed_pixels, model.embed_ids)
    pixels, ids = inputs(model.image_size, DRIFT_ROWS, args.text_lengths[0], seed=1)
    np.savez(args.embeddings, image=model.embed_pixels(pixels), text=model.embed_ids(ids))
    out["memory_used_mib"] = gpu_memory_used_mib()  # while the sessions live: ORT frees its arena with them
    return out


def measure(provider: str, image_size: int, args: argparse.Namespace, images, texts) -> dict:
    """images/s at each batch size and texts/s at each batch size and text length."""
    out: dict = {"provider": provider, "images_per_s": {}, "texts_per_s": {length: {} for length in args.text_lengths}}
    for batch in args.batches:
        pixels, _ = inputs(image_size, batch, 2)
        out["images_per_s"][batch] = rate(lambda: images(pixels, batch), batch, args.min_seconds)
        for length in args.text_lengths:
            _, ids = inputs(image_size, batch, length)
            out["texts_per_s"][length][batch] = rate(lambda: texts(ids, batch), batch, args.min_seconds)
    return out


def torch_worker(args: argparse.Namespace) -> dict:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from torch_reference import OfficialLongCLIP

    from longclip.export.checkpoint import load_reference
    from longclip.export.model import LayerNorm

    device = torch.device("cuda" if args.device.startswith("cuda") else "cpu")
    half = device.type == "cuda"
    model = OfficialLongCLIP(load_reference(args.checkpoint)[0]).eval().to(device)
    if half:  # CLIP's convert_weights: everything in half precision but LayerNorm
        model.half()
        for module in model.modules():
            if isinstance(module, LayerNorm):
                module.float()
    dtype = torch.float16 if half else torch.float32
    sync = torch.cuda.synchronize if half else (lambda: None)
    n = model.ref.config.image_size

    def images(pixels: np.ndarray, batch: int = 0) -> np.ndarray:
        with torch.inference_mode():
            x = model.encode_image(torch.from_numpy(pixels).to(device, dtype)).float().cpu().numpy()
        sync()
        return x

    def texts(ids: np.ndarray, batch: int = 0) -> np.ndarray:
        padded = np.zeros((len(ids), 248), dtype=np.int64)  # the released tokenize() always pads to 248
        padded[:, : ids.shape[1]] = ids
        with torch.inference_mode():
            x = model.encode_text(torch.from_numpy(padded).to(device)).float().cpu().numpy()
        sync()
        return x

    provider = f"torch {torch.__version__} {device.type} {str(dtype).removeprefix('torch.')}"
    out = measure(provider, n, args, images, texts)
    pixels, ids = inputs(n, DRIFT_ROWS, args.text_lengths[0], seed=1)
    np.savez(args.embeddings, image=images(pixels), text=texts(ids))
    if half:
        out["torch_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def scores(path: Path) -> np.ndarray:
    """The spec's scores of the saved pairs (image i with text i)."""
    from longclip.runtime.model.scoring import score_rows

    saved = np.load(path)
    return score_rows(saved["image"], saved["text"])


def ensure_models(work: Path, preset: str) -> tuple[Path, dict[str, Path]]:
    checkpoint = work / f"longclip-{preset}.pt"
    if not checkpoint.exists():
        from longclip.export.random_checkpoint import save_random_checkpoint

        save_random_checkpoint(checkpoint, preset)
    models = {name: work / f"{preset}-{name}" for name in EXPORTS}
    # All exports at once: tracing is mostly one Python thread, and device time is short.
    start = time.perf_counter()
    exports = [subprocess.Popen([sys.executable, "-m", "longclip.export.cli", str(checkpoint), "-o", str(out),
                                 "--precision", EXPORTS[name][0], "--attention", EXPORTS[name][1], "--overwrite",
                                 "-q"])
               for name, out in models.items() if not (out / "manifest.json").exists()]
    failed = [e.args for e in exports if e.wait() != 0]
    if failed:
        raise SystemExit(f"export failed: {failed}")
    if exports:
        print(f"{len(exports)} exports in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return checkpoint, models


def run_worker(kind: str, args: argparse.Namespace, embeddings: Path, **extra: str) -> dict:
    """One contender in a process of its own; ``{"error": ...}`` when it fails, so that the others still run."""
    cmd = [sys.executable, __file__, "--worker", kind, "--device", args.device, "--embeddings", str(embeddings),
           "--text-lengths", ",".join(map(str, args.text_lengths)), "--min-seconds", str(args.min_seconds),
           "--batches", ",".join(map(str, args.batches))]
    for key, value in extra.items():
        cmd += [f"--{key}", value]
    base = gpu_memory_used_mib()
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        error = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        print(f"{kind} {extra}: FAILED\n{done.stderr[-4000:]}", file=sys.stderr, flush=True)
        return {"error": error}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - start
    if base is not None and result.get("memory_used_mib") is not None:
        result["gpu_memory_mib"] = result["memory_used_mib"] - base
    print(f"{kind}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def report(args: argparse.Namespace, results: dict[str, dict], drift: dict[str, float], base: str) -> str:
    device = next((r["device_name"] for r in results.values() if r.get("device_name")), None)
    device = device or platform.processor() or "CPU"
    lines = [f"## {args.preset} on {device} — {datetime.date.today()}", "",
             "`benchmarks/gpu.py`, one process per contender, in turn. Texts of "
             f"{' and '.join(map(str, args.text_lengths))} tokens: PyTorch pads them to 248 as the released "
             "`tokenize` does; the ONNX graphs run at the batch's own length. Host arrays in, host embeddings out. "
             "Random weights in the official layout.", "",
             "| contender | tower | " + " | ".join(f"batch {b}" for b in args.batches) + f" | vs {base}, batch "
             f"{' / '.join(map(str, args.batches))} | GPU memory (MiB) |",
             "| --- | --- | " + " | ".join("---:" for _ in args.batches) + " | ---: | ---: |"]
    towers = [("images/s", ("images_per_s",))]
    towers += [(f"texts/s, {n} tokens", ("texts_per_s", str(n))) for n in args.text_lengths]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:120]} |")
            continue
        for tower, keys in towers:
            speeds, baseline = r, results[base]
            for key in keys:
                speeds, baseline = speeds[key], baseline.get(key, {}) if "error" not in baseline else {}
            ratio = " / ".join(f"{speeds[str(b)] / baseline[str(b)]:.2f}x" for b in args.batches if str(b) in baseline)
            memory = r.get("gpu_memory_mib")
            lines.append(f"| {name} | {tower} | " + " | ".join(f"{speeds[str(b)]:,.1f}" for b in args.batches) +
                         f" | {ratio} | {'' if memory is None else f'{memory:,.0f}'} |")
    lines += ["", f"Score drift on {DRIFT_ROWS} fixed pairs ({args.text_lengths[0]} tokens), max |Δscore| against "
              "ORT fp32:"]
    lines += [f"- {name}: {value:.2e}" for name, value in drift.items()]
    return "\n".join(lines) + "\n"


def lengths(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="l14-336")
    parser.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (a dry run of the script)")
    parser.add_argument("--batches", type=lengths, default=[1, 32, 128])
    parser.add_argument("--text-lengths", type=lengths, default=[248, 77],
                        help="text lengths in tokens; the first is also used for the drift")
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--work", default=str(ROOT / "models" / "gpu-bench"))
    parser.add_argument("--json", help="write all results here too")
    parser.add_argument("--out", help="Markdown file to put the table in (e.g. docs/benchmarks.md)")
    parser.add_argument("--export-only", action="store_true", help="write the checkpoint and the exports, then stop")
    parser.add_argument("--worker", choices=["ort", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--embeddings", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = ort_worker(args) if args.worker == "ort" else torch_worker(args)
        result.setdefault("memory_used_mib", gpu_memory_used_mib())
        if args.device != "cpu":
            import torch

            result["device_name"] = torch.cuda.get_device_name(0)
        print(json.dumps(result))
        return

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint, models = ensure_models(work, args.preset)
    if args.export_only:
        return
    on_gpu = args.device != "cpu"
    label, base = ("CUDA", "PyTorch fp16 eager") if on_gpu else ("CPU", "PyTorch fp32 eager")
    names = {"fp16": f"ORT {label} fp16", "fp16-explicit": f"ORT {label} fp16, explicit attention",
             "fp32": f"ORT {label} fp32"}
    results = {names[m]: run_worker("ort", args, work / f"ort-{m}.npz", model=str(models[m])) for m in names}
    results[base] = run_worker("torch", args, work / "torch.npz", checkpoint=str(checkpoint))
    files = {**{names[m]: f"ort-{m}.npz" for m in names}, base: "torch.npz"}
    drift = {}
    if "error" not in results[names["fp32"]]:
        reference = scores(work / files[names["fp32"]])
        drift = {name: float(np.abs(scores(work / f) - reference).max())
                 for name, f in files.items() if name != names["fp32"] and "error" not in results[name]}
    text = report(args, results, drift, base)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "drift": drift, "preset": args.preset,
                                               "text_lengths": args.text_lengths}, indent=1))
    if args.out:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from speed import prepend_section

        prepend_section(Path(args.out), text)


if __name__ == "__main__":
    main()
