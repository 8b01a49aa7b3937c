"""Which controls a normative model learns from, on which modalities, and how they split.

The autoencoder trains on part of the controls and is calibrated on the others, which
it never saw; the z-score model calibrates on all of them. With cross-fitting
(``cross_fit`` K >= 2) the controls fall into K folds: network k trains on every fold
but k, and every control is calibrated with the network that did not see it.
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
    """Indices of the controls that train the network and of those that calibrate.

    ``folds`` is empty for a single split; with cross-fitting it holds K index arrays
    (``train`` and ``calibration`` are then all controls): network k trains on every
    control outside ``folds[k]`` and calibrates on ``folds[k]``.
    """

    train: np.ndarray
    calibration: np.ndarray
    folds: tuple[np.ndarray, ...] = ()

    def network_of(self) -> dict[int, int]:
        """Control index -> the network that did not train on it (empty: single split)."""
        return {int(i): k for k, fold in enumerate(self.folds) for i in fold}

    def fold_train(self, k: int) -> np.ndarray:
        """The controls that train network ``k`` (all but fold ``k``)."""
        return np.concatenate([f for j, f in enumerate(self.folds) if j != k])


def check_cross_fit(cross_fit: object, n_controls: int | None = None) -> int:
    """``cross_fit`` as an int, checked: a whole number >= 1 and, given the number of
    controls, at most ``n_controls // 2`` (every fold needs two controls to calibrate).

    Raises
    ------
    AnomalyInputError
    """
    if not isinstance(cross_fit, (int, np.integer)) or isinstance(cross_fit, bool) or cross_fit < 1:
        raise AnomalyInputError(f"cross_fit: expected a whole number >= 1; got {cross_fit!r}")
    if n_controls is not None and cross_fit > 1 and cross_fit > n_controls // 2:
        raise AnomalyInputError(f"--cross-fit {cross_fit}: {n_controls} controls give at most "
                                f"{n_controls // 2} folds of two controls")
    return int(cross_fit)


def split_controls(n_controls: int, val_fraction: float, *, method: str, seed: int,
                   cross_fit: int = 1) -> ControlSplit:
    """Seeded split: held-out calibration controls for a network method, all controls for ``zscore``.

    With ``cross_fit`` K >= 2 (network methods) the same seeded order is cut into K
    folds of near-equal size instead, and every control calibrates.
    """
    order = np.random.default_rng(seed).permutation(n_controls)
    if method == "zscore":
        return ControlSplit(train=order, calibration=order)
    if check_cross_fit(cross_fit, n_controls) > 1:
        return ControlSplit(train=order, calibration=order, folds=tuple(np.array_split(order, cross_fit)))
    n_cal = calibration_size(n_controls, val_fraction)
    return ControlSplit(train=order[n_cal:], calibration=order[:n_cal])
