#!/usr/bin/env bash
# The project's test command (README, CI): set up the venv, run pytest, then Bazel targets.
#   tools/test.sh                 # everything, slow tests in their small-size mode
#   MHMODELS_TEST_FULL=1 tools/test.sh   # slow tests at full size
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup_env.sh
if ! command -v bazel >/dev/null; then
  echo "installing Debian's bazel-bootstrap (offline Bazel 4)"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq bazel-bootstrap >/dev/null
fi
export TF_CPP_MIN_LOG_LEVEL=2
venv/bin/python -m pytest -n 2 --durations=15 -p no:cacheprovider "$@"
tools/bazel_test.sh //tests:test_spec //tests:test_cli //tests:test_weights
