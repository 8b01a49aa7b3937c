"""Which controls a normative model learns from, on which modalities, and how they split.

The autoencoder trains on part of the controls and is calibrated on the others, which
it never saw; the z-score model calibrates on all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from anomaly.io import AnomalyInputError, Subject

#: Preferred order of the usual modalities in a model; others follow alphabetically.
MODALITY_ORDER = ("T1w", "T2w", "FLAIR", "pet")
#: Fewer controls than this cannot give a training and a calibration set.
MIN_CONTROLS = 4


def select_controls(subjects: Sequence[Subject]) -> list[Subject]:
    """The subjects of group ``control``, at least :data:`MIN_CONTROLS` of them."""
    controls = [s for s in subjects if s.group == "control"]
    if len(controls) < MIN_CONTROLS:
        raise AnomalyInputError(
            f"fit-normative needs at least {MIN_CONTROLS} controls (group 'control' in "
            f"participants.tsv); found {len(controls)}")
    return controls


def choose_modalities(controls: Sequence[Subject], wanted: Sequence[str] | None) -> list[str]:
    """The modalities asked for, or else every modality that all controls have."""
    if wanted:
        wanted = list(wanted)
        unknown = [m for m in wanted if not any(m in s.images for s in controls)]
        if unknown:
            raise AnomalyInputError(
                f"--modalities: no control has {', '.join(unknown)}; "
                f"available: {', '.join(sorted(set().union(*(s.images for s in controls))))}")
        return wanted
    available = set.intersection(*(set(s.images) for s in controls))
    if not available:
        raise AnomalyInputError("no modality is shared by all controls; choose with --modalities")
    order = list(MODALITY_ORDER)
    return sorted(available, key=lambda m: (order.index(m) if m in order else len(order), m))


def calibration_size(n_controls: int, val_fraction: float) -> int:
    """Number of controls held out for calibration: the fraction, but at least
    ``min(8, n_controls // 2)``."""
    fraction = int(round(val_fraction * n_controls))  # noqa: RUF046 - a numpy float rounds to a float
    return max(fraction, min(8, n_controls // 2), 2)


@dataclass(frozen=True)
class ControlSplit:
    """Indices of the controls that train the network and of those that calibrate."""

    train: np.ndarray
    calibration: np.ndarray


def split_controls(n_controls: int, val_fraction: float, *, method: str, seed: int) -> ControlSplit:
    """Seeded split: held-out calibration controls for a network method, all controls for ``zscore``."""
    order = np.random.default_rng(seed).permutation(n_controls)
    if method == "zscore":
        return ControlSplit(train=order, calibration=order)
    n_cal = calibration_size(n_controls, val_fraction)
    return ControlSplit(train=order[n_cal:], calibration=order[:n_cal])
