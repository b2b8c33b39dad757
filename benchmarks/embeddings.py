"""The embeddings store (``runtime/embeddings/store.py``): content hashing against decoding, write throughput, disk per
record, and lookups of 1,000 keys in stores of 10k, 100k and 1M records.

    python benchmarks/embeddings.py                 # all of it, in a temporary folder (about 4 GB, a few minutes)
    python benchmarks/embeddings.py --only hash --only lookup --sizes 10000,100000

Lookups (``get_images`` / ``has_images``, a read-only store): ``random`` takes 1,000 keys anywhere in the store,
``in order`` 1,000 keys written one after another (a run over the same table again), ``has`` the random keys'
membership alone. Each is the median of ``--rounds`` fresh draws, on a warm page cache.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from longclip.runtime.decode.preprocess import decode_image
from longclip.runtime.embeddings.identity import StoreIdentity
from longclip.runtime.embeddings.keys import bytes_sha256
from longclip.runtime.embeddings.store import EmbeddingStore
from longclip.runtime.model.scoring import l2_normalize


def jpegs(count: int = 20, target: int = 50_000) -> list[bytes]:
    """640x480 JPEGs of about ``target`` bytes: gradients and noise, the quality lowered until they fit."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640]
    out = []
    for i in range(count):
        base = np.stack([(x * (i + 1)) % 256, (y * 2 + i) % 256, ((x + y) // 3) % 256], -1).astype(np.float32)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        for quality in range(95, 5, -5):
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
            if buffer.tell() <= target * 1.05:
                break
        out.append(buffer.getvalue())
    return out


def per_item_ms(fn, items: list[bytes], repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        for item in items:
            fn(item)
    return (time.perf_counter() - start) / (repeat * len(items)) * 1e3


def hashing(count: int = 20) -> None:
    images = jpegs(count)
    print(f"\n### Hashing {len(images)} JPEGs of {np.mean([len(b) for b in images]) / 1e3:.1f} KB (640x480)\n")
    decode = {size: per_item_ms(lambda b, s=size: decode_image(b, s), images, 5) for size in (224, 336)}
    print("| what | µs per image | % of decode_image 224 | % of decode_image 336 |\n| --- | ---: | ---: | ---: |")
    for name in ("sha256", "sha1", "md5", "blake2b", "blake2s", "sha3_256"):
        ms = per_item_ms(lambda b, n=name: hashlib.new(n, b).hexdigest(), images, 200)
        print(f"| {name} | {ms * 1e3:.1f} | {ms / decode[224] * 100:.2f} | {ms / decode[336] * 100:.2f} |")
    for size, ms in decode.items():
        print(f"| decode_image(bytes, {size}) | {ms * 1e3:.0f} | | |")


def identity(dim: int, dtype: str = "float32") -> StoreIdentity:
    return StoreIdentity("a" * 64, "b" * 64, "bench", "fp32", dim, dtype)


def fill(root: Path, n: int, dim: int, dtype: str = "float32", batch: int = 256) -> tuple[list[str], float]:
    """A store of ``n`` image records (random unit vectors); its keys and the seconds adding them took."""
    rng = np.random.default_rng(n)
    keys = [bytes_sha256(f"{root}:{i}".encode()) for i in range(n)]
    seconds = 0.0
    with EmbeddingStore(root, identity(dim, dtype)) as store:
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            vectors = l2_normalize(rng.standard_normal((stop - start, dim), dtype=np.float32))
            paths = [f"/data/images/{i:08d}.jpg" for i in range(start, stop)]
            began = time.perf_counter()
            store.add_images(paths, paths, [50_000] * len(paths), [1_700_000_000_000_000_000] * len(paths),
                             keys[start:stop], vectors)
            seconds += time.perf_counter() - began
        began = time.perf_counter()
        store.close()
        seconds += time.perf_counter() - began
    return keys, seconds


def disk(root: Path) -> tuple[int, int]:
    """Bytes of the parts, bytes of the index."""
    parts = sum(f.stat().st_size for f in (root / "images").iterdir())
    index = sum(f.stat().st_size for f in root.iterdir() if f.name.startswith("index.sqlite"))
    return parts, index


def writing(work: Path, records: int = 100_000) -> None:
    print("\n### Writing (add_images in batches of 256, then close; fsync per part)\n")
    print("| D | dtype | records | records/s | MB/s of parts | parts B/record | index B/record |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for dim, dtype, n in ((768, "float32", records), (768, "float16", records), (64, "float32", records)):
        root = work / f"write-{dim}-{dtype}"
        _, seconds = fill(root, n, dim, dtype)
        parts, index = disk(root)
        print(f"| {dim} | {dtype} | {n:,} | {n / seconds:,.0f} | {parts / seconds / 1e6:.0f} | {parts / n:.0f} | "
              f"{index / n:.0f} |")
    root = work / "write-one"
    keys = [bytes_sha256(str(i).encode()) for i in range(max(1, records // 5))]
    vectors = l2_normalize(np.random.default_rng(0).standard_normal((len(keys), 768), dtype=np.float32))
    with EmbeddingStore(root, identity(768)) as store:
        began = time.perf_counter()
        for i, key in enumerate(keys):
            store.add_image(f"{i}.jpg", f"/data/{i}.jpg", 50_000, 1, key, vectors[i])
        store.close()
    print(f"\nadd_image one record at a time, D=768: {len(keys) / (time.perf_counter() - began):,.0f} records/s")


def lookups(work: Path, sizes: list[int], rounds: int) -> None:
    print(f"\n### Lookups of 1,000 keys (read-only store; median of {rounds})\n")
    print("| records | D | parts | random get ms | in order get ms | has ms |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    rng = np.random.default_rng(1)
    for n in sizes:
        for dim in ((768, 64) if n <= 100_000 else (64,)):
            root = work / f"lookup-{n}-{dim}"
            keys, _ = fill(root, n, dim)
            with EmbeddingStore(root, write=False) as store:
                times: dict[str, list[float]] = {"random": [], "order": [], "has": []}
                for _ in range(rounds):
                    start = int(rng.integers(0, n - 1000))
                    draws = {"random": [keys[i] for i in rng.choice(n, 1000, replace=False)],
                             "order": keys[start:start + 1000]}
                    for name, wanted in draws.items():
                        began = time.perf_counter()
                        assert len(store.get_images(wanted)) == 1000
                        times[name].append(time.perf_counter() - began)
                    began = time.perf_counter()
                    assert len(store.has_images(draws["random"])) == 1000
                    times["has"].append(time.perf_counter() - began)
            parts = len(os.listdir(root / "images"))
            print(f"| {n:,} | {dim} | {parts} | " + " | ".join(f"{statistics.median(v) * 1e3:.1f}"
                                                              for v in times.values()) + " |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=("hash", "write", "lookup"))
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=20, help="JPEGs to hash and decode")
    parser.add_argument("--records", type=int, default=100_000,
                        help="records per store when writing (a fifth of them one at a time)")
    parser.add_argument("--work", help="a folder for the stores (default: a temporary one, removed after)")
    args = parser.parse_args(argv)
    only = set(args.only or ("hash", "write", "lookup"))
    sizes = [int(s) for s in args.sizes.split(",")]
    if "lookup" in only and min(sizes) <= 1000:
        parser.error(f"--sizes {args.sizes}: each store must hold more than the 1,000 keys looked up")
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        if "hash" in only:
            hashing(args.images)
        if "write" in only:
            writing(Path(work), args.records)
        if "lookup" in only:
            lookups(Path(work), sizes, args.rounds)


if __name__ == "__main__":
    main()
