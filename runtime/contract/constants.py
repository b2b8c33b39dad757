"""Facts of the LongCLIP model family that every part of the project shares (one home for each)."""

from __future__ import annotations

CONTEXT_LENGTH = 248
"""Text context of LongCLIP (``77 * 4 - 60``); the official ``tokenize`` pads and truncates to it."""

POSITION_SPLIT = 20
"""Positions ``[0, 20)`` use ``positional_embedding``, ``[20, 248)`` use ``positional_embedding_res``."""

SOT_TOKEN = 49406
EOT_TOKEN = 49407
VOCAB_SIZE = 49408

IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

TOKENIZER_ID = "openai-clip-bpe-16e6/longclip-248"
"""Identity of the tokenizer recorded in every manifest: CLIP BPE vocab, LongCLIP padding/truncation rules."""

# The public I/O contract of the exported graphs: other runtimes load them by these names.
VISION_GRAPH = "vision.onnx"
TEXT_GRAPH = "text.onnx"
MANIFEST = "manifest.json"
VISION_INPUT = "pixel_values"  # (N, 3, n, n) float32
VISION_OUTPUT = "image_embeds"  # (N, D) float32, not normalized
TEXT_INPUT = "input_ids"  # (N, L) int64, L <= 248
TEXT_OUTPUT = "text_embeds"  # (N, D) float32, not normalized
CHECKPOINT_SUFFIXES = (".pt", ".bin", ".ckpt", ".safetensors")
"""Files taken as checkpoints when a folder is searched (the spec names .pt/.bin/.ckpt)."""

MAX_MEMBER_BYTES = 1 << 30
"""The most bytes of one image or text read into memory whole (a WebDataset member; an image file hashed for an
embeddings folder): a larger one costs its row, never the run's memory."""

CHUNK_ROWS = 1024
"""Rows scored (and, by the local engine, checkpointed) together (``--chunk-rows``)."""

DECODE_TIMEOUT = 120.0
"""Seconds one image may take in a worker before it is killed (``--decode-timeout``): generous, since a huge
legitimate image on a loaded machine takes seconds; a stalled network read takes forever."""

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
"""``--device``: where the graphs run (``auto``: a GPU when one works, else the CPU)."""

BATCH_SIZE = 32
"""Images (or texts) per forward: ``--batch-size``, ``RunOptions.batch_size``, the operator's and ``encode_images``'
default. ``encode_texts`` keeps its own default of 64 (text rows are cheaper than images)."""

PRECISIONS = ("fp32", "fp16", "int8")
"""The precisions a model folder's graphs can have (``manifest.json``: ``precision``)."""

ATTENTIONS = ("fused", "explicit")
"""How a model folder's graphs compute attention (``manifest.json``: ``attention``): ONNX Runtime's ``Attention``
op, or plain ONNX."""

OPSET = 18
"""ONNX opset the exporter writes by default (each manifest records the one used)."""
