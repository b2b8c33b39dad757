"""Every intermediate tensor of a graph, row 0 alone vs row 0 in batches of 3 and 17: does a batch of one take
another path anywhere? (issue 25: pad singleton batches only if it does)

    python benchmarks/batch_of_one_probe.py models/tiny/text.onnx text

Every node's first output becomes a graph output (which can keep ONNX Runtime from fusing some nodes: a probe of
the paths that remain), at the sessions' own optimization level.
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import helper

from longclip.runtime.model.session import create_session


def main(path: str, tower: str) -> None:
    model = onnx.load(path)
    have = {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.output and node.output[0] and node.op_type not in ("Shape", "Constant") and node.output[0] not in have:
            model.graph.output.append(helper.ValueInfoProto(name=node.output[0]))
    probe = path + ".probe.onnx"
    onnx.save(model, probe)
    session = create_session(probe, "cpu")
    names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(0)
    if tower == "vision":
        n = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
        x, feed = rng.standard_normal((17, 3, n, n)).astype(np.float32), "pixel_values"
    else:
        x, feed = rng.integers(1, 49000, (17, 16)), "input_ids"
        x[:, 0], x[:, 9], x[:, 10:] = 49406, 49407, 0
    results = {b: session.run(None, {feed: x[:b]}) for b in (1, 3, 17)}
    compared = moved = 0
    for i, name in enumerate(names):
        alone = results[1][i]
        for b in (3, 17):
            other = results[b][i]
            if alone.ndim and alone.shape[0] == 1 and other.shape == (b, *alone.shape[1:]):
                compared += 1
                if not np.array_equal(alone[0], other[0]):
                    moved += 1
                    print(f"moves: {name} (batch {b})")
    print(f"{tower}: {compared} comparisons of {len(names)} tensors; {moved} differ for row 0 between batch 1 and "
          "batches 3/17")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
