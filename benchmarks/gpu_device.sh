#!/usr/bin/env bash
# benchmarks/gpu.py on a lent GPU machine (Python 3.12, torch + CUDA 13, CPU onnxruntime, no onnxruntime-gpu).
#
# onnxruntime-gpu is larger than one call may carry, so it travels as an xz'd tree, in four parts (git-ignored):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#       --platform manylinux2014_x86_64 -d /tmp/whl onnxruntime-gpu==1.31.1 ftfy wcwidth
#   mkdir -p /tmp/ortsite && for w in /tmp/whl/*.whl; do unzip -q -o -d /tmp/ortsite "$w"; done
#   tar -C /tmp/ortsite -cf - . | xz -T0 -6 > /tmp/ortsite.tar.xz   # 195 MiB; put its sha256 in SHA256 below
#   split -b 49M -d -a 1 /tmp/ortsite.tar.xz .whl/ort.txz. && for i in 0 1 2 3; do mkdir -p .whl/p$((i+1)) && \
#       mv .whl/ort.txz.$i .whl/p$((i+1))/; done
#   mkdir -p .whl/deps && (cd /tmp/ortsite && tar -cf "$OLDPWD/.whl/deps/deps.tar" ftfy ftfy-*.dist-info wcwidth \
#       wcwidth-*.dist-info)   # globs expand inside /tmp/ortsite
# Then, while the machine stays warm (30 s between calls), one call per part:
#   bash benchmarks/gpu_device.sh first    (carry .whl/p1 and .whl/deps): also starts the exports, in the
#                                          background, on the machine's CPU onnxruntime, while the parts travel
#   bash benchmarks/gpu_device.sh stage    (carry .whl/p2, then .whl/p3)
#   bash benchmarks/gpu_device.sh run      (carry .whl/p4): unpacks, proves CUDA, waits for the exports, measures
# (`check` instead of `run` stops after proving CUDA; `stage` instead of `first` starts no exports.)
set -euo pipefail
SHA256=af332a5dce4c6d3c6e807cfceac872d2ae7085abc0907b830fdcae615135f09c
WORK=${WORK:-/tmp/gpu}
PRESET=${PRESET:-l14-336}
export PYTHONUNBUFFERED=1

mkdir -p /tmp/w
cp .whl/p*/ort.txz.* /tmp/w/
ls -l /tmp/w
# longclip itself from this checkout, without a build (the machine's setuptools may predate pyproject's license field)
mkdir -p /tmp/shim/longclip && ln -sfn "$PWD/runtime" /tmp/shim/longclip/runtime && ln -sfn "$PWD/export" /tmp/shim/longclip/export

case "${1:-}" in
first)
    mkdir -p /tmp/deps && tar -x -C /tmp/deps -f .whl/deps/deps.tar  # ftfy and wcwidth, for the tokenizer
    PYTHONPATH=/tmp/deps:/tmp/shim setsid nohup python3 benchmarks/gpu.py --preset "$PRESET" --work "$WORK" --export-only \
        >/tmp/export.log 2>&1 < /dev/null &
    echo $! > /tmp/export.pid
    sleep 5; cat /tmp/export.log; exit 0 ;;
stage)
    tail -5 /tmp/export.log || true; exit 0 ;;
run|check) ;;
*) echo "usage: $0 first|stage|check|run [gpu.py options]" >&2; exit 2 ;;
esac

cat /tmp/w/ort.txz.0 /tmp/w/ort.txz.1 /tmp/w/ort.txz.2 /tmp/w/ort.txz.3 > /tmp/ortsite.tar.xz
echo "$SHA256  /tmp/ortsite.tar.xz" | sha256sum -c -
mkdir -p /tmp/site && xz -T0 -dc /tmp/ortsite.tar.xz | tar -x -C /tmp/site
export PYTHONPATH=/tmp/site:/tmp/shim
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 - <<'PY' | tee -a "$OUT/gpu.txt"
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

print(ort.__version__, ort.__file__, ort.get_available_providers())
x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "xy")
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
onnx.save(model, "/tmp/relu.onnx")
# raises unless CUDAExecutionProvider really initializes (with the CUDA and cuDNN of the nvidia-* wheels)
from longclip.runtime.model.session import create_session
print("a session on", create_session("/tmp/relu.onnx", "cuda").get_providers())
PY
[ "$1" = check ] && exit 0
# the background exports: wait for them (gpu.py exports again whatever they did not finish)
while [ -f /tmp/export.pid ] && kill -0 "$(cat /tmp/export.pid)" 2>/dev/null; do sleep 2; done
cp /tmp/export.log "$OUT/export.log" 2>/dev/null || true
tail -3 /tmp/export.log 2>/dev/null || true
python3 benchmarks/gpu.py --preset "$PRESET" --work "$WORK" --json "$OUT/gpu.json" --out "$OUT/benchmarks.md" "${@:2}" 2>&1 \
    | tee "$OUT/log"
