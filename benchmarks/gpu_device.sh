#!/usr/bin/env bash
# benchmarks/gpu.py on a lent GPU machine (Python 3.12, torch + CUDA 13, CPU onnxruntime, no onnxruntime-gpu).
#
# The onnxruntime-gpu wheel is larger than one call may carry, so it travels in five parts (git-ignored):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#       -d .whl onnxruntime-gpu==1.31.1 ftfy wcwidth
#   (cd .whl && mkdir -p deps && mv ftfy-* wcwidth-* deps/ && split -b 56M -d -a 1 onnxruntime_gpu-*.whl ort.part \
#       && for i in 0 1 2 3 4; do mkdir -p p$((i+1)); mv ort.part$i p$((i+1))/; done && rm onnxruntime_gpu-*.whl)
# Then, while the machine stays warm, one call per part and the run in the last:
#   bash benchmarks/gpu_device.sh stage      (carry .whl/p1; then .whl/p2, .whl/p3, .whl/p4)
#   bash benchmarks/gpu_device.sh run        (carry .whl/p5 and .whl/deps)
set -euo pipefail
WHEEL=onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
SHA256=05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7

mkdir -p /tmp/w
cp .whl/p*/ort.part* /tmp/w/
ls -l /tmp/w
[ "${1:-}" = stage ] && exit 0

cat /tmp/w/ort.part0 /tmp/w/ort.part1 /tmp/w/ort.part2 /tmp/w/ort.part3 /tmp/w/ort.part4 > "/tmp/$WHEEL"
echo "$SHA256  /tmp/$WHEEL" | sha256sum -c -
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "/tmp/$WHEEL" .whl/deps/*.whl
# longclip itself from this checkout, without a build (the machine's setuptools may predate pyproject's license field)
mkdir -p /tmp/shim/longclip && ln -sfn "$PWD/runtime" /tmp/shim/longclip/runtime && ln -sfn "$PWD/export" /tmp/shim/longclip/export
export PYTHONPATH=/tmp/site:/tmp/shim PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 - <<'EOF' | tee -a "$OUT/gpu.txt"
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels that torch brought
print(ort.__version__, ort.__file__, ort.get_available_providers())
x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "xy")
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), "/tmp/relu.onnx")
from longclip.runtime.session import create_session  # raises unless CUDAExecutionProvider really initializes
print("a session on", create_session("/tmp/relu.onnx", "cuda").get_providers())
EOF
python3 benchmarks/gpu.py --work /tmp/gpu --json "$OUT/gpu.json" --out "$OUT/benchmarks.md" "${@:2}" 2>&1 \
    | tee "$OUT/log"
