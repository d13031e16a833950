"""Shared test set-up: quiet TensorFlow, small-size mode for slow tests."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

# MHMODELS_TEST_FULL=1 runs slow tests at full size; by default they run in a small mode.
FULL = os.environ.get("MHMODELS_TEST_FULL") == "1"


@pytest.fixture
def full_size() -> bool:
    return FULL
