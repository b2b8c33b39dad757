"""Facts of the LongCLIP model family that every part of the project shares (one home for each)."""

from __future__ import annotations

CLIP_CONTEXT_LENGTH = 77
"""Text context of the original CLIP: most captions fit in it (TensorRT tunes for it, the exporter traces at it)."""

CONTEXT_LENGTH = CLIP_CONTEXT_LENGTH * 4 - 60
"""Text context of LongCLIP, 248; the official ``tokenize`` pads and truncates to it."""

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

MAX_SPARSE_COLUMNS = 4096
"""The most distinct keys a JSON input may have for a CSV or parquet output, where every row gets a cell for every
key (rows x keys cells, written and read whole); a jsonl / json output keeps each row's own keys, at any count."""

DECODE_TIMEOUT = 120.0
"""Seconds one image may take in a worker before it is killed (``--decode-timeout``): generous, since a huge
legitimate image on a loaded machine takes seconds; a stalled network read takes forever."""

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
"""``--device``: where the graphs run (``auto``: a GPU when one works, else the CPU)."""

BATCH_SIZE = 32
"""Images (or texts) per forward: ``--batch-size``, ``RunOptions.batch_size``, the operator's and ``encode_images``'
default. ``encode_texts`` keeps its own default, ``TEXT_BATCH_SIZE`` (text rows are cheaper than images)."""

TEXT_BATCH_SIZE = 64
"""``encode_texts``' and ``embed_ids``' default batch (runs use ``BATCH_SIZE``)."""

LENGTH_BUCKETS = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, CONTEXT_LENGTH)
"""A text batch never mixes lengths from two buckets: short captions never run at a long caption's length."""

MAX_PIXELS = 89_478_485
"""Images with more pixels, or whose resize to the model size would have more, are refused from their header
(``--max-pixels``; Pillow's own default ``Image.MAX_IMAGE_PIXELS``)."""

PRECISIONS = ("fp32", "fp16", "int8")
"""The precisions a model folder's graphs can have (``manifest.json``: ``precision``)."""

ATTENTIONS = ("fused", "explicit")
"""How a model folder's graphs compute attention (``manifest.json``: ``attention``): ONNX Runtime's ``Attention``
op, or plain ONNX."""

OPSET = 18
"""ONNX opset the exporter writes by default (each manifest records the one used)."""

EMBEDDING_DTYPES = ("float32", "float16")
"""How an embeddings folder stores its vectors (``--embeddings-dtype``; the first is the default)."""

WDS_IMAGE_EXT = ("jpg", "jpeg", "png", "webp")
"""A WebDataset sample's image: its first member with one of these extensions, in this order (``--wds-image-ext``)."""

WDS_TEXT = "txt"
"""A WebDataset sample's text: the member with this extension (``--wds-text``)."""

ALLOWED_IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "ICO", "JPEG2000", "PPM", "DDS")
"""Pillow format IDs an image of a row (or a report thumbnail) may be: formats a dataset plausibly holds, each
decoded inside this process (JPEG also opens MPO). Never EPS/PS: Pillow hands those to Ghostscript, another
program, so dataset bytes would reach it. An ID this Pillow build lacks (AVIF before Pillow 11.2) is skipped; an
image of any other format is its row's ``not_an_image``. Deliberately narrower than the spec's bare
``Image.open``."""
