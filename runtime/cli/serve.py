"""``longclip-serve -m MODEL``: parse, check the model and the options, then serve until SIGTERM drains it."""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import click

from ..contract.constants import BATCH_SIZE, DECODE_TIMEOUT, DEVICES, MAX_PIXELS
from ..contract.errors import LongCLIPError
from ..contract.rows import check_image_root
from ..serve.limits import MAX_BODY_MB, MAX_ITEMS, Limits
from .console import configure_logging, tolerate_broken_stderr, version_option

log = logging.getLogger("longclip.serve")

DRAIN_SECONDS = 30.0


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@version_option()
@click.option("-m", "--model", "model_name", required=True,
              help="Exported model folder, checkpoint file/folder (exported once, cached), or Hugging Face repo id.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free one, logged).")
@click.option("--device", default="auto", show_default=True, help=f"One of {', '.join(DEVICES)} (cuda:N too).")
@click.option("--batch-size", default=BATCH_SIZE, show_default=True, type=click.IntRange(1),
              help="Items (across requests) the model worker runs together.")
@click.option("--batch-wait-ms", default=5.0, show_default=True, type=click.FloatRange(0),
              help="How long the worker waits for a batch to fill once an item came.")
@click.option("--max-queue", default=1024, show_default=True, type=click.IntRange(1),
              help="Items waiting for the model; more are refused with 429 and Retry-After.")
@click.option("--image-root", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Folder /v1/score may read image paths from (relative paths, resolving inside it); "
                   "[default: paths are refused, only data URIs].")
@click.option("--max-items", default=MAX_ITEMS, show_default=True, type=click.IntRange(1),
              help="Inputs or pairs per request (more: 413).")
@click.option("--max-body-mb", default=float(MAX_BODY_MB), show_default=True, type=click.FloatRange(0, min_open=True),
              help="Request body size (more: 413).")
@click.option("--max-pixels", default=MAX_PIXELS, show_default=True, type=click.IntRange(1),
              help="Refuse images with more pixels, from their header (decompression bombs), as longclip-run does.")
@click.option("--decode-timeout", type=click.FloatRange(min=0, min_open=True), default=DECODE_TIMEOUT,
              show_default=True, help="Seconds one image may take to decode (the item gets decode_timeout).")
@click.option("--decode-workers", type=click.IntRange(0), default=None,
              help="Processes that decode images (0: threads) [default: one per CPU, one fewer on a GPU].")
@click.option("--drain-seconds", default=DRAIN_SECONDS, show_default=True, type=click.FloatRange(0),
              help="On SIGTERM, /ready answers 503 while requests in flight finish, for up to this long.")
@click.option("--api-key", envvar="LONGCLIP_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on /v1/ routes (env LONGCLIP_API_KEY) [default: none].")
@click.option("--served-name", default=None, help="The model name responses carry [default: -m as given].")
def main(model_name: str, host: str, port: int, device: str, batch_size: int, batch_wait_ms: float,
         max_queue: int, image_root: Path | None, max_items: int, max_body_mb: float, max_pixels: int,
         decode_timeout: float, decode_workers: int | None, drain_seconds: float, api_key: str | None,
         served_name: str | None) -> None:
    """Serve MODEL over HTTP: OpenAI-compatible /v1/embeddings, /v1/score, /health, /ready, /metrics."""
    tolerate_broken_stderr()
    configure_logging(quiet=False)
    try:
        import uvicorn  # noqa: F401

        from ..serve.app import Service, build_app
    except ImportError as exc:
        raise click.ClickException(f"longclip-serve needs the serve extra: pip install \"longclip[serve]\" "
                                   f"({exc})") from None
    from ..model.resolve import resolve_model_dir

    try:
        check_image_root(image_root)
        model_dir = resolve_model_dir(model_name)  # a wrong -m fails here, in one line, before the server starts
    except LongCLIPError as exc:
        raise click.ClickException(str(exc)) from None
    root = image_root.resolve() if image_root is not None else None
    limits = Limits(max_items, int(max_body_mb * (1 << 20)), max_pixels, decode_timeout, root)
    service = Service(_loader(model_dir, device, batch_size, batch_wait_ms / 1000, max_queue, limits,
                              decode_workers), served_name or model_name, limits, api_key)
    config = uvicorn.Config(build_app(service), host=host, port=port, lifespan="on", log_level="info",
                            timeout_graceful_shutdown=max(1, int(drain_seconds)))
    server = DrainingServer(config, service, drain_seconds)
    service.on_fatal = server.fail
    server.run()
    sys.exit(1 if server.failed else 0)


def _loader(model_dir: Path, device: str, batch_size: int, batch_wait: float, max_queue: int, limits: Limits,
            decode_workers: int | None):
    """What the service calls on a thread once the server is up: the model, its decode pool, the batcher."""
    def load(metrics):  # type: ignore[no-untyped-def]
        from ..engines.assemble import load_model, split_cpus, start_pool
        from ..serve.batcher import Batcher

        split = split_cpus(device, decode_workers)
        model = load_model(model_dir, device, split, batch_size)
        return Batcher(model, lambda: start_pool(model.manifest, split, batch_size, limits.max_pixels,
                                                 limits.decode_timeout),
                       metrics, batch_size, batch_wait, max_queue, mix_requests=model.manifest.row_invariant)
    return load


try:
    from uvicorn import Server as _Server
except ImportError:  # the serve extra is missing: main() says so
    _Server = object  # type: ignore[assignment,misc]


class DrainingServer(_Server):  # type: ignore[misc,valid-type]
    """uvicorn's server, draining on SIGTERM or Ctrl-C: ``/ready`` answers 503 while the requests in flight
    finish (new ones are still served), for up to ``drain_seconds``; then it stops and the process exits 0.
    uvicorn's own handler closes the sockets at once and raises the signal again (exit 143). A second signal
    stops it at once."""

    def __init__(self, config, service, drain_seconds: float):  # type: ignore[no-untyped-def]
        super().__init__(config)
        self.service, self.drain_seconds = service, drain_seconds
        self.failed: BaseException | None = None
        self._deadline = 0.0

    def fail(self, exc: BaseException) -> None:
        self.failed = exc
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.service.draining:  # a second signal: stop now
            self.should_exit = True
            self.force_exit = sig == signal.SIGINT
            return
        self.service.draining = True
        self._deadline = time.monotonic() + self.drain_seconds
        log.info("%s: draining (%d requests in flight, up to %gs); /ready answers 503",
                 signal.Signals(sig).name, self.service.inflight, self.drain_seconds)

    async def on_tick(self, counter: int) -> bool:
        if self.service.draining and not self.should_exit:
            if self.service.inflight == 0 or time.monotonic() >= self._deadline:
                if self.service.inflight:
                    log.warning("drain time is up with %d requests in flight", self.service.inflight)
                self.should_exit = True
        return await super().on_tick(counter)
