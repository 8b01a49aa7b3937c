"""Validation of the simulator's public parameters (one-line :class:`AnomalyInputError`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from anomaly.io import AnomalyInputError
from anomaly.simulate.config import ALL_MODALITIES

__all__ = ["check_count", "check_fraction", "check_modalities", "check_resolution", "check_seed"]


def check_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    """Distinct names among :data:`ALL_MODALITIES` (a single string counts as one)."""
    if isinstance(modalities, str):
        modalities = (modalities,)
    mods = tuple(modalities)
    bad = [m for m in mods if m not in ALL_MODALITIES]
    if not mods or bad or len(set(mods)) != len(mods):
        raise AnomalyInputError(
            f"modalities: expected distinct names among {', '.join(ALL_MODALITIES)}, got {list(mods)}"
        )
    return mods


def check_resolution(resolution: float) -> float:
    """Voxel size in whole mm, 1..8."""
    # nilearn resamples its MNI152 templates to whole-millimetre grids only.
    try:
        value = float(resolution)
    except (TypeError, ValueError):
        raise AnomalyInputError(
            f"resolution: expected a voxel size in mm, got {resolution!r}"
        ) from None
    if not math.isfinite(value) or value != round(value) or not 1 <= value <= 8:
        raise AnomalyInputError(
            "resolution: expected a whole number of mm between 1 and 8 (e.g. 2, 3 or 4), "
            f"got {resolution!r}"
        )
    return value


def check_fraction(value: float, name: str, upper: float | None = 1.0) -> float:
    """A finite number in ``[0, upper]`` (``upper=None``: no upper bound)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise AnomalyInputError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(out) or out < 0 or (upper is not None and out > upper):
        limit = f"between 0 and {upper}" if upper is not None else ">= 0"
        raise AnomalyInputError(f"{name}: expected a number {limit}, got {value!r}")
    return out


def check_count(value: int, name: str) -> int:
    """A non-negative integer (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise AnomalyInputError(f"{name}: expected a non-negative integer, got {value!r}")
    return int(value)


def check_seed(seed: int) -> int:
    """A non-negative integer seed."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise AnomalyInputError(f"seed: expected a non-negative integer, got {seed!r}")
    return int(seed)
