"""Shared test setup: mtlzoo's own testing kit, and a deterministic, single-threaded torch."""

from __future__ import annotations

import os

import pytest
import torch

pytest_plugins = ["mtlzoo.testing"]

torch.set_num_threads(int(os.environ.get("MTLZOO_TEST_THREADS", "1")))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
