#!/usr/bin/env bash
# Runs the Bazel tests offline with this checkout's venv (made by tools/setup_env.sh).
#   tools/bazel_test.sh                         # bazel test //...
#   tools/bazel_test.sh //tests:test_models     # selected targets
#   tools/bazel_test.sh //... --test_arg=-x     # extra Bazel flags pass through
# Flags must be written --flag=value (anything starting with "-" is a flag, except
# negative target patterns "-//..."); everything after "--" is a target.
# Nothing is generated in the tree: @venv_python (third_party/bazel/python_venv.bzl)
# points Bazel's Python toolchain at $PWD/venv/bin/python3 when Bazel sets it up.
# CI=true (any value but empty/false/0) adds --config=ci (--nocache_test_results, plain output).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x venv/bin/python3 ]; then
  echo "error: venv/bin/python3 missing; run tools/setup_env.sh first" >&2
  exit 2
fi
if ! command -v bazel >/dev/null; then
  echo "error: bazel not found (Debian: apt-get install bazel-bootstrap)" >&2
  exit 2
fi

targets=()
flags=()
only_targets=
for arg in "$@"; do
  if [ -n "$only_targets" ]; then targets+=("$arg"); continue; fi
  case "$arg" in
    --) only_targets=1 ;;
    -//* | -@* | -:*) targets+=("$arg") ;;
    -*) flags+=("$arg") ;;
    *) targets+=("$arg") ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=("//...")
case "${CI:-}" in
  "" | false | 0) ;;
  *) flags=(--config=ci ${flags[@]+"${flags[@]}"}) ;;
esac

# venv first on PATH, for anything in the tests that shells out to `python3`/`pip`.
export PATH="$PWD/venv/bin:$PATH"
exec bazel test ${flags[@]+"${flags[@]}"} -- "${targets[@]}" </dev/null
