"""`main` of every py_test in //tests: runs the test file given as argv[1] through pytest.

The tests are pytest style (plain `def test_...`, fixtures such as tmp_path), which the
native py_test cannot run by itself. Extra arguments (`--test_arg=-k --test_arg=foo`)
pass through to pytest.
"""
import os
import sys

import pytest


def _hermetic_sys_path() -> None:
    """Imports come from the runfiles tree only, never from the source checkout.

    Python puts this file's real directory (third_party/bazel in the checkout) first on
    sys.path, and the venv's editable install (`pip install -e .`) adds the checkout root;
    either would hide a file missing from a BUILD file's srcs/data.
    """
    here = os.path.dirname(os.path.realpath(__file__))
    checkout = os.path.dirname(os.path.dirname(here))
    sys.path[:] = [p for p in sys.path
                   if os.path.realpath(p or ".") not in (here, checkout)]


def main() -> int:
    _hermetic_sys_path()
    args = list(sys.argv[1:]) + [
        "-q",
        "-p", "no:cacheprovider",  # do not write .pytest_cache into the runfiles tree
    ]
    tmp = os.environ.get("TEST_TMPDIR")
    if tmp:
        # Bazel gives tests no HOME; Keras, matplotlib & co. want a writable one.
        if not os.environ.get("HOME"):
            os.environ["HOME"] = os.path.join(tmp, "home")
            os.makedirs(os.environ["HOME"], exist_ok=True)
        # tmp_path & co. inside Bazel's per-test scratch directory.
        args.append("--basetemp=" + os.path.join(tmp, "pytest"))
    xml = os.environ.get("XML_OUTPUT_FILE")
    if xml:  # per-test-case results in bazel-testlogs/<target>/test.xml
        args.append("--junitxml=" + xml)
    return int(pytest.main(args))


if __name__ == "__main__":
    sys.exit(main())
