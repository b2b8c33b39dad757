#!/usr/bin/env bash
# Fresh machine -> a scored file, offline. The model is a RANDOM-WEIGHT checkpoint in the official layout:
# this proves the plumbing (export, parity gate, torch-free scoring), not image/text alignment.
# For real scores, export a released checkpoint instead: README, "Real checkpoints".
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -c .ci/constraints.txt ".[export]"   # torch: the tested CPU build (see the file)
python -m longclip.export.random_checkpoint tiny models/tiny-random.pt
longclip-export models/tiny-random.pt -o models/tiny --overwrite
mkdir -p models/demo
cat > models/demo/pairs.jsonl <<'JSONL'
{"image_path": "tests/goldens/images/rgb_333x517.png", "text": "A colourful abstract pattern of diagonal stripes."}
{"image_path": "tests/goldens/images/small_41x97.jpg", "text": "The image shows a man and a woman in what appears to be a car."}
{"image_path": "tests/goldens/images/missing.png", "text": "This row fails: its image does not exist."}
JSONL
longclip-run models/demo/pairs.jsonl -m models/tiny -o models/demo/scored.jsonl
cat models/demo/scored.jsonl
