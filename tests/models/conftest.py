"""Model tests run tiny tensors: one intra-op thread avoids thread contention on shared CPUs (10x faster here)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
