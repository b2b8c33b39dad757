"""The ASGI app: routes, OpenAI-shaped errors, the ready/draining state, auth, metrics per request."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..contract.rows import ItemScores
from .batcher import Batcher, Embedded, Job
from .limits import Limits, RequestError, embedding_inputs, score_pairs
from .metrics import Metrics

log = logging.getLogger(__name__)

_PARSE_OFF_LOOP = 1 << 20  # bodies larger than this are parsed on a thread, not on the event loop


@dataclass
class Service:
    """What the routes share: the model's batcher once loaded, limits, metrics, and the draining flag.

    ``load`` builds the :class:`Batcher` (loading the model, minutes for a large one on a cold disk); it runs
    on a thread after the server is up, so ``/health`` answers at once and ``/ready`` says when it is done.
    ``on_fatal`` is called when loading fails (the CLI stops the server then)."""

    load: Callable[[Metrics], Batcher]
    served_name: str
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None
    metrics: Metrics = field(default_factory=Metrics)
    on_fatal: Callable[[BaseException], None] = lambda exc: None
    batcher: Batcher | None = None
    draining: bool = False
    inflight: int = 0
    created: int = field(default_factory=lambda: int(time.time()))

    def _load_and_start(self) -> Batcher:
        batcher = self.load(self.metrics)
        batcher.start()  # starts the decode workers: also off the event loop
        return batcher

    async def start(self) -> None:
        try:
            self.batcher = await asyncio.to_thread(self._load_and_start)
            log.info("model %s loaded: ready", self.served_name)
        except Exception as exc:  # noqa: BLE001 - reported in one line, and the server stops
            log.error("cannot load %s: %s", self.served_name, exc)
            self.on_fatal(exc)


def error_body(message: str, kind: str, code: str) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def error_response(status: int, message: str, kind: str, code: str) -> JSONResponse:
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return JSONResponse(error_body(message, kind, code), status_code=status, headers=headers)


def _route(name: str, service: Service, counted: bool = True
           ) -> Callable[[Callable[[Request], Awaitable[Response]]], Callable[[Request], Awaitable[Response]]]:
    """Each request's metrics, its place among those in flight (a drain waits for them), its auth, and its
    :class:`RequestError` as OpenAI's error JSON."""
    def wrap(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            start = time.perf_counter()
            service.inflight += int(counted)
            try:
                _check_key(request, service.api_key)
                response = await handler(request)
            except RequestError as exc:
                response = error_response(exc.status, str(exc), exc.kind, exc.code)
            finally:
                service.inflight -= int(counted)
            service.metrics.requests.labels(name, str(response.status_code)).inc()
            service.metrics.latency.labels(name).observe(time.perf_counter() - start)
            return response
        return endpoint
    return wrap


def _check_key(request: Request, api_key: str | None) -> None:
    if api_key is None or not request.url.path.startswith("/v1/"):
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
        raise RequestError(401, "missing or wrong API key: send 'Authorization: Bearer <--api-key>'",
                           "invalid_api_key")


async def read_json(request: Request, limit: int) -> tuple[dict[str, Any], int]:
    """The body as a JSON object and its size in bytes, refusing it (413) as soon as it passes ``limit``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body is {declared} bytes, more than --max-body-mb allows ({limit} bytes)",
                           "body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body is more than --max-body-mb allows ({limit} bytes)", "body_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = await asyncio.to_thread(json.loads, raw) if size > _PARSE_OFF_LOOP else json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError is one
        raise RequestError(400, f"the body is not JSON: {str(exc)[:200]}", "invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError(400, f"the body must be a JSON object, got {type(body).__name__}", "invalid_json")
    return body, size


async def _off_loop(size: int, check: Callable[..., Any], *args: Any) -> Any:
    """``check(*args)`` (base64 decoding of data URIs, path checks) on a thread when the body is large."""
    return await asyncio.to_thread(check, *args) if size > _PARSE_OFF_LOOP else check(*args)


def _batcher(service: Service) -> Batcher:
    if service.batcher is None:
        raise RequestError(503, "the model is still loading: retry when /ready answers 200", "not_ready",
                           "server_error")
    return service.batcher


async def _until_done(request: Request, batcher: Batcher, job: Job) -> Any:
    """The job's result; a client that disconnects first has its queued work dropped."""
    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({job.future, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not job.future.done():
        batcher.cancel(job)
        job.future.cancel()
        # nobody reads this answer; it is counted as nginx counts a client that closed first
        raise RequestError(499, "the client disconnected", "client_disconnected")
    return job.future.result()


async def _submit(request: Request, service: Service, kind: str, payload: tuple[Any, ...], size: int) -> Any:
    batcher = _batcher(service)
    loop = asyncio.get_running_loop()
    job = Job(kind, payload, size, loop.create_future(), loop)
    batcher.submit(job)
    return await _until_done(request, batcher, job)


def build_app(service: Service) -> Starlette:
    """The service's Starlette app; its lifespan loads the model in the background and stops the batcher."""
    limits, metrics = service.limits, service.metrics

    @_route("/v1/embeddings", service)
    async def embeddings(request: Request) -> Response:
        body, size = await read_json(request, limits.max_body_bytes)
        inputs, encoding = await _off_loop(size, embedding_inputs, body, limits)
        metrics.items.labels("/v1/embeddings").inc(len(inputs))
        result: Embedded = await _submit(request, service, "embed", (inputs,), len(inputs))
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if encoding == "base64"
                 else v.tolist()} for i, v in enumerate(result.vectors)]
        return JSONResponse({"object": "list", "data": data, "model": service.served_name,
                             "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens}})

    @_route("/v1/score", service)
    async def score(request: Request) -> Response:
        body, size = await read_json(request, limits.max_body_bytes)
        images, texts, reasons = await _off_loop(size, score_pairs, body, limits)
        names = [f"pairs[{i}].image" for i in range(len(images))]
        metrics.items.labels("/v1/score").inc(len(images))
        result: ItemScores = await _submit(request, service, "score", (images, texts, reasons, names), len(images))
        data = [{"index": i, "score": None if math.isnan(s) else float(s), "error": e, "truncated": bool(t)}
                for i, (s, e, t) in enumerate(zip(result.scores.tolist(), result.errors, result.truncated))]
        return JSONResponse({"object": "list", "data": data, "model": service.served_name})

    @_route("/v1/models", service, counted=False)
    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": service.served_name, "object": "model",
                                                         "created": service.created, "owned_by": "longclip"}]})

    @_route("/health", service, counted=False)
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @_route("/ready", service, counted=False)
    async def ready(request: Request) -> Response:
        if service.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if service.batcher is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        metrics.requests.labels("other", str(exc.status_code)).inc()
        return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                              "invalid_request_error", code)

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal error (logged on the server)", "server_error", "internal_error")

    @asynccontextmanager
    async def lifespan(app: Starlette):  # type: ignore[no-untyped-def]
        loading = asyncio.create_task(service.start())
        try:
            yield
        finally:
            loading.cancel()
            if service.batcher is not None:
                await asyncio.to_thread(service.batcher.stop)

    routes = [Route("/v1/embeddings", embeddings, methods=["POST"]), Route("/v1/score", score, methods=["POST"]),
              Route("/v1/models", models, methods=["GET"]), Route("/health", health, methods=["GET"]),
              Route("/ready", ready, methods=["GET"]), Route("/metrics", prometheus, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error, Exception: internal_error})
