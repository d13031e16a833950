"""Repository rule registering the project's venv Python as Bazel's Python toolchain.

The interpreter path must be absolute, so it is computed on each machine when Bazel
sets up the external repository `@venv_python` (no network involved):
<workspace root>/venv/bin/python3, or $MHMODELS_PYTHON if set. The venv is created by
tools/setup_env.sh; TensorFlow & co. come from its site-packages, not from Bazel.
"""

_BUILD = """\
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

py_runtime(
    name = "py3_runtime",
    interpreter_path = "{python}",
    python_version = "PY3",
    # The py_binary/py_test launcher stub is itself Python: run it with the venv too.
    stub_shebang = "#!{python}",
)

py_runtime_pair(
    name = "py_runtime_pair",
    py3_runtime = ":py3_runtime",
)

toolchain(
    name = "py_toolchain",
    toolchain = ":py_runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
"""

def _python_venv_impl(rctx):
    python = rctx.os.environ.get("MHMODELS_PYTHON", "")
    if not python:
        root = rctx.path(Label("@//:WORKSPACE")).dirname
        python = "%s/venv/bin/python3" % root
    if " " in python:
        fail("Python path %r contains a space; it cannot be used in a #! line" % python)
    rctx.file("WORKSPACE", "workspace(name = \"%s\")\n" % rctx.name)
    rctx.file("BUILD", _BUILD.format(python = python))

python_venv = repository_rule(
    implementation = _python_venv_impl,
    environ = ["MHMODELS_PYTHON"],
    local = True,
)
