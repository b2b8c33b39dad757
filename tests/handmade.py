"""A hand-built LongCLIP model folder (two ONNX graphs made with onnx.helper, a manifest in the export format)
whose scores are known: an image's embedding is its mean normalized colour, a text's the sum of one-hot rows
for the words "red", "green" and "blue". A pure red image with a caption saying "red" scores about 0.82, with a
caption saying "green" or "blue" about 0.2: matched pairs high, mismatched low, by construction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from longclip.runtime.contract.manifest import sha256_file, write_manifest
from longclip.runtime.decode.tokenizer import Tokenizer

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
SIZE = 32
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def build(folder: Path) -> Path:
    """Write the model folder at ``folder`` and return it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    vision = helper.make_graph(
        [helper.make_node("ReduceMean", ["pixel_values", "axes"], ["mean"], keepdims=0)],
        "vision", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(np.array([2, 3], np.int64), "axes")])
    vision.node[0].output[0] = "image_embeds"
    table = np.zeros((49408, 3), np.float32)
    for c, word in enumerate(COLOURS):
        table[word_id(word), c] = 1.0
    text = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["rows"]),
         helper.make_node("ReduceSum", ["rows", "axis"], ["text_embeds"], keepdims=0)],
        "text", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "length"])],
        [helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([1], np.int64), "axis")])
    for name, graph in (("vision", vision), ("text", text)):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 9
        onnx.checker.check_model(model)
        onnx.save(model, folder / f"{name}.onnx")
    write_manifest(folder, manifest(folder))
    return folder


def word_id(word: str) -> int:
    ids, _ = Tokenizer().batch([word], 248)
    return int(ids[0, 1])  # after the start token


def manifest(folder: Path) -> dict:
    def graph(name: str, input_name: str, dims: list, dtype: str, output: str) -> dict:
        return {"file": f"{name}.onnx", "files": [f"{name}.onnx"], "sha256": sha256_file(folder / f"{name}.onnx"),
                "data_sha256": {}, "input": {"name": input_name, "dims": dims, "dtype": dtype},
                "output": {"name": output, "dims": ["batch", 3], "dtype": "float32", "normalized": False}}

    return json.loads(json.dumps({
        "variant": "handmade-colours", "precision": "fp32", "attention": "explicit", "opset": 18, "embed_dim": 3,
        "config": {"embed_dim": 3, "image_size": SIZE, "context_length": 248, "vocab_size": 49408},
        "image": {"size": SIZE, "mean": list(MEAN), "std": list(STD), "steps": []},
        "text": {"context_length": 248, "tokenizer": "openai-clip-bpe-16e6/longclip-248", "sot_token": 49406,
                 "eot_token": 49407, "position_split": 20, "pooling": "sum of one-hot word rows",
                 "dynamic_length": True},
        "graphs": {"vision": graph("vision", "pixel_values", ["batch", 3, SIZE, SIZE], "float", "image_embeds"),
                   "text": graph("text", "input_ids", ["batch", "length"], "int64", "text_embeds")},
        "checkpoint": None, "parity": None, "accuracy": None, "exporter": {},
    }))


def colour_images(folder: Path, copies: int = 1) -> dict[str, list[str]]:
    """``copies`` distinct files of each colour (a pixel's shade differs, so no two files are the same bytes):
    ``{colour: [file names]}``."""
    folder.mkdir(parents=True, exist_ok=True)
    names: dict[str, list[str]] = {}
    for colour, rgb in COLOURS.items():
        for k in range(copies):
            pixels = np.full((40, 40, 3), rgb, np.uint8)
            pixels[0, 0] = (k % 256, k // 256 % 256, 7)
            name = f"{colour}-{k}.png"
            Image.fromarray(pixels).save(folder / name)
            names.setdefault(colour, []).append(name)
    return names
