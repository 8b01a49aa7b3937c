"""Shared pytest fixtures: seeded random generator, headless matplotlib, one torch thread."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded random generator so that every test is reproducible."""
    return np.random.default_rng(20261129)


@pytest.fixture(autouse=True, scope="session")
def _single_torch_thread():
    """Keep torch on one thread: CI has 2 cores and tests run small tensors."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        yield
        return
    torch.set_num_threads(1)
    yield
