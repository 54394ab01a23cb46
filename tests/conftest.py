"""Shared test fixtures: keep torch's global thread count from leaking between tests."""

import sys

import pytest


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    # train(config) with threads=N sets torch's process-wide thread count; put it back.
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    if before is not None:
        torch.set_num_threads(before)
