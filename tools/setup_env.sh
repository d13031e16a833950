#!/usr/bin/env bash
# Creates ./venv with everything mhmodels needs, on a fresh machine, offline but for PyPI.
# tf-keras and tensorflow-model-optimization are installed with --no-deps: their declared
# dependencies would pull the full CUDA `tensorflow` wheel over tensorflow-cpu and cap absl-py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x venv/bin/python ]; then
  "$PYTHON" -m venv venv
fi
venv/bin/pip install -q --upgrade pip >/dev/null
venv/bin/pip install -q -e '.[test]'
venv/bin/pip install -q --no-deps tf-keras==2.21.0 tensorflow-model-optimization==0.8.1
venv/bin/python - <<'PY'
import tensorflow, keras, tf_keras, tensorflow_model_optimization  # noqa: F401
from ai_edge_litert.interpreter import Interpreter  # noqa: F401
print(f"venv ready: tensorflow {tensorflow.__version__}, keras {keras.__version__}")
PY
