"""Test setup: CPU only, quiet TF, seeded and deterministic."""

import os
import tempfile

os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Scan and weight caches of this test session (subprocesses inherit it).
os.environ["EFFICIENTLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="efficientlab-cache-")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.experimental.enable_op_determinism()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: builds full EfficientNets or runs subprocesses")


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    # tf.test.TestCase defines a deprecated `test_session` context manager
    # that pytest collects and reports as skipped ("Not a test"): drop it.
    items[:] = [item for item in items if item.name != "test_session"]
