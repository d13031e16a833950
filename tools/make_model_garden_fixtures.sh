#!/usr/bin/env bash
# Make tests/fixtures/model_garden: Model Garden MobileNet classifiers (tf-models-official)
# with random weights, written as TF2 checkpoints, plus their logits on real photos.
#
# Why a side venv: tf-models-official pins another TensorFlow (2.20) than the project's, so it
# is installed apart (about 2 min, 3.3 GB, from PyPI) and only this script uses it; the tests
# read the checkpoints with tf.train.load_checkpoint and need no tf-models-official.
#
#   tools/make_model_garden_fixtures.sh          # MG_VENV=/tmp/mhmodels-mg-venv by default
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MG_VENV="${MG_VENV:-/tmp/mhmodels-mg-venv}"
PROJECT_PY="${PROJECT_PY:-$ROOT/venv/bin/python}"
[ -x "$PROJECT_PY" ] || PROJECT_PY=/work/main/venv/bin/python
OUT="$ROOT/tests/fixtures/model_garden"
mkdir -p "$OUT"
if [ ! -x "$MG_VENV/bin/python" ]; then
  python3 -m venv "$MG_VENV"
  "$MG_VENV/bin/pip" install -q --upgrade pip
  "$MG_VENV/bin/pip" install -q "tf-models-official==2.20.*"
fi
# The real photos come from the project's environment (scikit-learn's sample photos).
"$PROJECT_PY" - "$OUT" <<'PY'
import sys
import numpy as np
sys.path.insert(0, ".")
from mhmodels.images import sample_photos
np.save(f"{sys.argv[1]}/photos_64.npy", sample_photos(size=64, crops_per_image=2))
PY
"$MG_VENV/bin/python" "$ROOT/tools/make_model_garden_fixtures.py" --out="$OUT"
rm -f "$OUT/photos_64.npy"
