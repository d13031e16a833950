"""Shared test set-up: quiet TensorFlow, small-size mode for slow tests."""
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

# The user's own mhmodels data must neither steer the tests nor be written by them: a host
# calibrated CPU cost model in ~/.cache/mhmodels (which `python -m search` writes on a user's
# first search) is preferred by the loader over the shipped one, and shipped-model tests then
# failed on a machine that had run the README's main job. So the session gets an empty home,
# and every test a fresh one of its own (below); variables that point elsewhere are cleared.
_USER_VARS = ("MHMODELS_HOME", "MHMODELS_ZOO_PATH", "MHMODELS_WEIGHTS_MANIFEST")
_SESSION_HOME = tempfile.mkdtemp(prefix="mhmodels-test-home-")
for _var in _USER_VARS:
    os.environ.pop(_var, None)
os.environ["MHMODELS_HOME"] = _SESSION_HOME


def pytest_unconfigure(config):
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def _own_mhmodels_home(tmp_path_factory, monkeypatch):
    """Each test starts from an empty $MHMODELS_HOME (subprocesses inherit it): no test sees
    what another wrote there, e.g. a calibrated cost model or a user zoo entry."""
    monkeypatch.setenv("MHMODELS_HOME", str(tmp_path_factory.mktemp("mhmodels_home")))

# MHMODELS_TEST_FULL=1 runs slow tests at full size; by default they run in a small mode.
FULL = os.environ.get("MHMODELS_TEST_FULL") == "1"


@pytest.fixture
def full_size() -> bool:
    return FULL
