"""Shared test setup: deterministic seeds and a small thread count for the 2-core CI machine."""

import os
import random

# Idle OpenMP threads sleep instead of spinning: on a 2-core machine shared with other jobs, spinning
# workers that wait for a descheduled sibling make every parallel region ~10x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
