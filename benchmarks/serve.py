"""longclip-serve under load: requests/s and p50/p99 latency at concurrency 1, 8, 32 for single pairs, against
``LongCLIP.score`` in-process one pair at a time, in one run on one machine.

    python benchmarks/serve.py -m /tmp/b16 --requests 96 --out docs/benchmarks.md

Each request is one ``/v1/score`` pair: a unique 640x480 JPEG sent as a data URI and a caption of mixed length
(a third ~12 tokens, a third ~60, a third cut at 248). Clients are threads of this process, each with its own
HTTP connection, sending their next request as soon as the last one answered; latency is from send to answer.
The in-process baseline scores the same pairs (the JPEG's bytes, the caption) with ``LongCLIP.score`` one at a
time in this process, with the server idle. Random weights: speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import platform
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from PIL import Image

WORDS = ("a photo of the red house with two windows near a quiet river under grey clouds at dusk while "
         "children play football on the wet grass and an old man walks his dog").split()


def make_pairs(n: int, seed: int = 0) -> list[tuple[bytes, str]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        pixels = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
        words = (10, 50, 300)[i % 3]
        pairs.append((buffer.getvalue(), " ".join(rng.choice(WORDS, words))))
    return pairs


def start_server(model: str, batch_size: int, batch_wait_ms: float) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-c", "from longclip.runtime.cli.serve import main; main()", "-m", model, "--port", "0",
           "--device", "cpu", "--batch-size", str(batch_size), "--batch-wait-ms", str(batch_wait_ms)]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    deadline = time.monotonic() + 300
    url = ""
    for line in process.stderr:
        if match := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line):
            url = match[1]
            break
        if time.monotonic() > deadline:
            break
    threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()  # type: ignore[union-attr]
    if not url:
        process.kill()
        raise SystemExit("the server did not start")
    while httpx.get(f"{url}/ready", timeout=30).status_code != 200:
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit("the server did not become ready")
        time.sleep(0.1)
    return process, url


def load(url: str, pairs: list[tuple[bytes, str]], concurrency: int, requests: int) -> dict[str, float]:
    bodies = [{"pairs": [{"image": "data:image/jpeg;base64," + base64.b64encode(img).decode(), "text": text}]}
              for img, text in pairs]
    local = threading.local()

    def one(n: int) -> float:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=600)
        start = time.perf_counter()
        response = local.client.post("/v1/score", json=bodies[n % len(bodies)])
        assert response.status_code == 200 and response.json()["data"][0]["error"] == "", response.text
        return time.perf_counter() - start

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # warm-up: connections, the first batch
        start = time.perf_counter()
        latencies = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - start
    return summary(latencies, wall)


def summary(latencies: list[float], wall: float) -> dict[str, float]:
    ms = np.array(latencies) * 1000
    return {"rps": len(latencies) / wall, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def in_process(model_name: str, pairs: list[tuple[bytes, str]], requests: int) -> dict[str, float]:
    from longclip.runtime.model.longclip import LongCLIP

    model = LongCLIP(model_name, device="cpu")
    model.score([io.BytesIO(pairs[0][0])], [pairs[0][1]])  # warm-up
    latencies = []
    start = time.perf_counter()
    for n in range(requests):
        image, text = pairs[n % len(pairs)]
        t0 = time.perf_counter()
        model.score([io.BytesIO(image)], [text])
        latencies.append(time.perf_counter() - t0)
    return summary(latencies, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", required=True)
    parser.add_argument("--requests", type=int, default=96, help="timed requests per concurrency level")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    args = parser.parse_args(argv)
    pairs = make_pairs(args.requests)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible; model {args.model}; "
          f"--batch-size {args.batch_size} --batch-wait-ms {args.batch_wait_ms}; {args.requests} timed requests "
          "a level\n\n| way | concurrency | requests/s | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|", flush=True)
    row("in-process `LongCLIP.score`, one pair a call", 1, in_process(args.model, pairs, args.requests))
    process, url = start_server(args.model, args.batch_size, args.batch_wait_ms)
    try:
        for c in map(int, args.concurrency.split(",")):
            row("longclip-serve `/v1/score`, one pair a request", c, load(url, pairs, c, args.requests))
        batches = httpx.get(f"{url}/metrics", timeout=30).text
        count = float(re.search(r"^longclip_batch_size_count (\S+)", batches, re.M)[1])  # type: ignore[index]
        total = float(re.search(r"^longclip_batch_size_sum (\S+)", batches, re.M)[1])  # type: ignore[index]
        print(f"\nThe server ran {count:.0f} batches of {total / count:.1f} items on average.")
    finally:
        process.terminate()
        process.wait(120)


def row(name: str, concurrency: int, r: dict[str, float]) -> None:
    print(f"| {name} | {concurrency} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p99']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
