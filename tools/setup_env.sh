#!/usr/bin/env bash
# Creates ./venv with everything mhmodels needs, on a fresh machine, offline but for PyPI.
# mhmodels itself depends on no TensorFlow distribution (see pyproject.toml); the [cpu] extra
# brings tensorflow-cpu here. tf-keras and tensorflow-model-optimization (QAT) are installed
# with --no-deps, by the command mhmodels.quantize prints when they are missing: their declared
# dependencies would pull the full `tensorflow` wheel beside tensorflow-cpu and cap absl-py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x venv/bin/python ]; then
  "$PYTHON" -m venv venv
fi
venv/bin/pip install -q --upgrade pip >/dev/null
venv/bin/pip install -q -e '.[cpu,test]'
qat_install=$(venv/bin/python -c 'from mhmodels.qat import install_command; print(install_command())')
venv/bin/python -m ${qat_install} -q   # pip install --no-deps tf-keras~=<TF x.y>.0 tensorflow-model-optimization==...
venv/bin/python - <<'PY'
import tensorflow, keras, tf_keras, tensorflow_model_optimization  # noqa: F401
from ai_edge_litert.interpreter import Interpreter  # noqa: F401
print(f"venv ready: tensorflow {tensorflow.__version__}, keras {keras.__version__}")
PY
