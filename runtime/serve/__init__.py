"""``longclip-serve``: the LongCLIP HTTP service (``pip install "longclip[serve]"``).

An ASGI app (Starlette, served by uvicorn) over one model worker that batches across requests; OpenAI-compatible
``/v1/embeddings`` and ``/v1/models``, ``/v1/score`` with the row contract's per-item reasons, ``/health``,
``/ready`` and Prometheus ``/metrics``. Nothing here is imported by the rest of the runtime: Starlette and uvicorn
are needed only when the service is used.
"""
