"""longclip-serve against a live server on 127.0.0.1: the official openai client, /v1/score equal to longclip-run
and to LongCLIP.score_items bit for bit, batching across 32 concurrent clients (exact, and one batch in /metrics),
every limit a 4xx with the server still ready, paths outside --image-root never opened, SIGTERM drains to exit 0."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from serve_live import live_server  # noqa: E402

from longclip.runtime.contract.errors import error_code  # noqa: E402
from longclip.runtime.model.longclip import LongCLIP  # noqa: E402

GOLDEN = Path(__file__).parents[1] / "goldens" / "images"
NAMES = sorted(p.name for p in GOLDEN.iterdir())
KEY = "sk-test-key"


def data_uri(path: Path) -> str:
    kind = {"jpg": "jpeg"}.get(path.suffix[1:], path.suffix[1:])
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """An image root: the golden images, a corrupt one, a folder; and outside it a secret and a FIFO."""
    base = tmp_path_factory.mktemp("serve")
    root = base / "root"
    shutil.copytree(GOLDEN, root)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "folder").mkdir()
    (base / "secret.png").write_bytes((GOLDEN / NAMES[0]).read_bytes())
    os.mkfifo(base / "outside.fifo")
    (root / "escape.png").symlink_to(base / "secret.png")
    (root / "escape_fifo.png").symlink_to(base / "outside.fifo")
    return root


@pytest.fixture(scope="module")
def model(tiny_model_dir) -> LongCLIP:
    return LongCLIP(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def server(tiny_model_dir, root):
    with live_server(tiny_model_dir, "--image-root", root, "--max-items", "8", "--max-body-mb", "0.5",
                     "--api-key", KEY, "--served-name", "longclip-tiny") as live:
        yield live


def test_openai_client_embeds_texts_and_images_as_the_library_does(server, model, root):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, timeout=120, max_retries=0)
    assert [m.id for m in client.models.list()] == ["longclip-tiny"]
    texts = ["a photo of a cat", "word " * 300]
    inputs = [*texts, data_uri(root / NAMES[0]), data_uri(root / NAMES[5])]
    want = np.concatenate([model.encode_texts(texts), model.encode_images([root / NAMES[0], root / NAMES[5]])])
    for encoding in (None, "base64", "float"):  # unless told, the client asks for base64 and decodes it itself
        extra = {} if encoding is None else {"encoding_format": encoding}
        response = client.embeddings.create(model="anything", input=inputs, **extra)
        got = np.array([np.frombuffer(base64.b64decode(d.embedding), "<f4") if encoding == "base64" else
                        d.embedding for d in response.data], dtype=np.float32)
        np.testing.assert_array_equal(got, want)  # bit for bit
        assert [d.index for d in response.data] == [0, 1, 2, 3] and response.model == "longclip-tiny"
        assert response.usage.prompt_tokens == 7 + 248  # SOT, 5 words, EOT; the long text at the context
    one = client.embeddings.create(model="longclip-tiny", input="a photo of a cat", encoding_format="float")
    np.testing.assert_array_equal(np.array(one.data[0].embedding, np.float32), want[0])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()


def test_score_equals_longclip_run_and_score_items_bit_for_bit(server, model, root, tiny_model_dir, tmp_path):
    rows = [{"image_path": n, "text": f"a picture number {i} " * (1 + 9 * (i % 3))} for i, n in enumerate(NAMES)]
    rows += [{"image_path": "missing.png", "text": "gone"}, {"image_path": NAMES[1], "text": "  "},
             {"image_path": "broken.png", "text": "x"}, {"image_path": "folder", "text": "x"},
             {"image_path": NAMES[2], "text": None}, {"image_path": NAMES[3], "text": "long " * 400}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cli = subprocess.run([sys.executable, "-m", "longclip.runtime.cli.run", str(tmp_path / "in.jsonl"), "-m",
                          str(tiny_model_dir), "-o", str(tmp_path / "out.jsonl"), "--image-root", str(root),
                          "--device", "cpu", "-q"], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    want = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    pairs = [{"image": r["image_path"], "text": r["text"]} for r in rows]
    with server.client(authorization=f"Bearer {KEY}") as http:
        got = [d for start in range(0, len(pairs), 8)  # --max-items 8
               for d in http.post("/v1/score", json={"pairs": pairs[start : start + 8]}).json()["data"]]
    items = model.score_items([r["image_path"] for r in rows], [r["text"] for r in rows], image_root=root)
    for n, (g, w) in enumerate(zip(got, want)):
        assert error_code(g["error"]) == error_code(w["longclip_score_error"]) == error_code(items.errors[n])
        if w["longclip_score"] is None:
            assert g["score"] is None and np.isnan(items.scores[n])
        else:
            assert np.float32(g["score"]) == np.float32(w["longclip_score"]) == items.scores[n]
    codes = [error_code(g["error"]) for g in got[len(NAMES):]]
    assert codes == ["missing_file", "empty_text", "not_an_image", "directory", "null_text", ""]
    assert [g["truncated"] for g in got[len(NAMES):]] == [False] * 5 + [True]


def test_paths_outside_the_root_are_never_opened(server, root):
    fifo = root.parent / "outside.fifo"
    opened = threading.Event()

    def writer() -> None:  # returns only once something opens the FIFO for reading
        fd = os.open(fifo, os.O_WRONLY)
        opened.set()
        os.close(fd)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    images = ["escape_fifo.png", "escape.png", "../secret.png", str(root / NAMES[0]), "/dev/zero",
              "http://127.0.0.1:1/a.png", "file:///etc/passwd", "folder/../../secret.png"]
    with server.client(authorization=f"Bearer {KEY}") as http:
        data = http.post("/v1/score", json={"pairs": [{"image": i, "text": "a"} for i in images]}).json()["data"]
        assert [error_code(d["error"]) for d in data] == ["bad_path"] * len(images)
        assert all(d["score"] is None for d in data)
        assert http.get("/ready").status_code == 200
    assert not opened.is_set()  # the server answered without ever opening the FIFO
    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # free the writer
    thread.join(60)


def _bomb() -> bytes:
    """A PNG whose header claims 30000 x 30000 pixels: refused from the header, never decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 30_000, 30_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("path, body, status, code", [
    ("/v1/embeddings", {"input": ["a"] * 9}, 413, "too_many_items"),
    ("/v1/score", {"pairs": [{"image": NAMES[0], "text": "a"}] * 9}, 413, "too_many_items"),
    ("/v1/embeddings", {"input": "x" * (600 << 10)}, 413, "body_too_large"),
    ("/v1/embeddings", {"input": []}, 400, "empty_input"),
    ("/v1/embeddings", {"input": ["a", " "]}, 400, "empty_input"),
    ("/v1/embeddings", {"input": [[1, 2, 3]]}, 400, "token_ids_not_supported"),
    ("/v1/embeddings", {"input": [1, 2, 3]}, 400, "token_ids_not_supported"),
    ("/v1/embeddings", {"input": ["a", None]}, 400, "invalid_input"),
    ("/v1/embeddings", {"input": "a", "encoding_format": "int8"}, 400, "invalid_input"),
    ("/v1/embeddings", {"input": ["a", "data:image/png;base64,@@"]}, 400, "undecodable"),
    ("/v1/embeddings", {"input": ["a", "data:image/png;base64," + base64.b64encode(b"no image").decode()]}, 400,
     "not_an_image"),
    ("/v1/embeddings", {"input": ["data:image/png;base64," + base64.b64encode(_bomb()).decode()]}, 400,
     "too_many_pixels"),
    ("/v1/score", {"pairs": "a.png"}, 400, "invalid_input"),
    ("/v1/score", {"pairs": [["a.png", "a"]]}, 400, "invalid_input"),
    ("/v1/score", [1], 400, "invalid_json"),
    ("/v1/nothing", {}, 404, "not_found"),
])
def test_each_bad_request_is_its_4xx_in_openai_shape_and_the_server_stays_ready(server, path, body, status, code):
    with server.client(authorization=f"Bearer {KEY}") as http:
        response = http.post(path, json=body)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code and error["type"] == "invalid_request_error" and "\n" not in error["message"]
        if isinstance(body, dict) and isinstance(body.get("input"), list) and len(body["input"]) in (1, 2):
            assert error["message"].startswith(f"input[{len(body['input']) - 1}]")  # names the index
        assert http.get("/ready").status_code == 200


def test_malformed_json_no_key_and_a_bomb_pair(server):
    with server.client() as http:
        assert http.post("/v1/score", json={"pairs": []}).status_code == 401  # --api-key given: required
        assert http.get("/health").status_code == 200
    with server.client(authorization=f"Bearer {KEY}") as http:
        response = http.post("/v1/score", content=b"{not json", headers={"content-type": "application/json"})
        assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_json")
        bomb = "data:image/png;base64," + base64.b64encode(_bomb()).decode()
        data = http.post("/v1/score", json={"pairs": [{"image": bomb, "text": "a"}, {"image": NAMES[0],
                                                                                     "text": "a"}]}).json()["data"]
        assert error_code(data[0]["error"]) == "too_many_pixels" and data[1]["error"] == ""  # costs only itself
    assert server.metric('longclip_requests_total{route="/v1/score",status="401"}') >= 1


def test_32_concurrent_clients_are_batched_together_and_each_is_exact(tiny_model_dir, model, root):
    # the worker waits (up to a minute: a hang guard) until 32 items queue, so the batch is certain, not timed
    with live_server(tiny_model_dir, "--batch-size", "32", "--batch-wait-ms", "60000", "--max-queue", "40",
                     "--image-root", root) as live:
        pairs = [{"image": data_uri(root / NAMES[i % len(NAMES)]) if i % 2 else NAMES[i % len(NAMES)],
                  "text": "a caption of some length " * (i % 11) + f"number {i}"} for i in range(32)]
        with live.client() as http, ThreadPoolExecutor(32) as clients:
            got = list(clients.map(lambda p: http.post("/v1/score", json={"pairs": [p]}).json()["data"][0], pairs))
        assert live.metric("longclip_batch_size_count") == 1
        assert live.metric("longclip_batch_size_sum") == 32
        assert live.metric('longclip_batch_size_bucket{le="16.0"}') == 0
        for i, g in enumerate(got):  # each alone through the library: the same bits, whoever it was batched with
            alone = model.score_items([root / NAMES[i % len(NAMES)]], [pairs[i]["text"]])
            assert g["error"] == "" and np.float32(g["score"]) == alone.scores[0], i

        # a full queue: 429 with Retry-After, and the server goes on
        with live.client() as http, ThreadPoolExecutor(1) as side:
            first = side.submit(http.post, "/v1/score", json={"pairs": [pairs[0]] * 30})
            live.wait_for("30 queued items", lambda: live.metric("longclip_queue_depth") == 30)
            full = http.post("/v1/score", json={"pairs": [pairs[1]] * 20})
            assert full.status_code == 429 and full.headers["retry-after"] == "1"
            assert full.json()["error"]["type"] == "rate_limit_error"
            assert http.post("/v1/score", json={"pairs": [pairs[1]] * 2}).status_code == 200  # fills the batch
            assert first.result(120).status_code == 200
            assert http.get("/ready").status_code == 200

        # a client that goes away: its queued items are dropped, never run
        batches = live.metric("longclip_batch_size_sum")
        with live.client() as impatient:
            with pytest.raises(httpx.ReadTimeout):
                impatient.post("/v1/score", json={"pairs": [pairs[2]] * 5}, timeout=httpx.Timeout(120, read=1))
        live.wait_for("the queue emptied", lambda: live.metric("longclip_queue_depth") == 0)
        live.wait_for("a 499", lambda: live.metric('longclip_requests_total{route="/v1/score",status="499"}') == 1)
        with live.client() as http:
            assert http.post("/v1/score", json={"pairs": [pairs[3]] * 32}).status_code == 200
        assert live.metric("longclip_batch_size_sum") == batches + 32  # the 5 items never ran


def test_sigterm_drains_in_flight_requests_then_exits_0(tiny_model_dir, root):
    with live_server(tiny_model_dir, "--batch-size", "2", "--batch-wait-ms", "60000", "--drain-seconds", "120",
                     "--image-root", root) as live:
        pair = {"image": NAMES[0], "text": "a cat"}
        with live.client() as http, ThreadPoolExecutor(1) as side:
            first = side.submit(http.post, "/v1/score", json={"pairs": [pair]})
            live.wait_for("1 queued item", lambda: live.metric("longclip_queue_depth") == 1)
            live.process.send_signal(signal.SIGTERM)
            live.wait_for("/ready 503", lambda: http.get("/ready").status_code == 503)
            assert http.get("/ready").json() == {"status": "draining"}
            second = http.post("/v1/score", json={"pairs": [pair]})  # still served: it fills the batch
            assert second.status_code == 200 and first.result(120).status_code == 200
            assert first.result().json()["data"][0]["score"] == second.json()["data"][0]["score"]
        assert live.process.wait(120) == 0, live.log()
        assert "draining" in live.log()


def test_a_model_that_cannot_load_stops_the_server_with_one_line(tiny_model_dir, tmp_path):
    def serve(model):  # type: ignore[no-untyped-def]
        cmd = [sys.executable, "-c", "from longclip.runtime.cli.serve import main; main()", "-m", str(model),
               "--port", "0"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    missing = serve(tmp_path / "nope")  # refused before the server starts
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Uvicorn" not in missing.stderr
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "text.onnx").write_bytes(b"not a graph")  # found, but fails to load once the server is up
    failed = serve(broken)
    assert failed.returncode == 1 and "cannot load" in failed.stderr and "Traceback" not in failed.stderr
