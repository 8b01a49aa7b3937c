"""The controls' PET levels, recorded at fit for the focal log ratios and the global level.

At ``fit-normative`` every control with PET contributes, from its preprocessed PET on
the model grid (the fit's cache):

- per shipped atlas and region, ``log(region mean PET / own cortical mean PET)``;
- its best-hemisphere and whole-cortex cortical levels, as % of the normative mean
  image over the same voxels.

:func:`fit_pet_norms` reduces them to means and SDs
(:class:`anomaly.atlas.petlevels.PETNorms`), which the model stores as plain JSON in
``metadata.json`` (key ``pet_levels``); scoring compares each subject with them
(:func:`anomaly.atlas.region_table`, :func:`anomaly.atlas.global_cortical_pet`).
All controls count (training and calibration): ratios need no held-out set.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

from anomaly.atlas import DEFAULT_ATLAS, Atlas, RegionStats, cortex_mask, list_atlases
from anomaly.atlas.petlevels import (
    GlobalLevelNorm,
    LogRatioNorm,
    PETNorms,
    cortical_mean,
    covered_pet,
    hemisphere_levels,
    hemisphere_masks,
    pet_log_ratios,
)
from anomaly.preprocess import Grid

__all__ = ["PETLevelAccumulator", "fit_pet_norms"]


class PETLevelAccumulator:
    """Collects the controls' PET ratios and levels one control at a time.

    Parameters
    ----------
    grid : Grid
        The model grid.
    mask : ndarray of bool
        The model's brain mask.
    normative_pet : ndarray
        The controls' mean PET SUVR image (the model's ``control_mean_`` PET channel).
    atlases : sequence of str, optional
        Atlas names (default: every shipped atlas).
    """

    def __init__(self, grid: Grid, mask: np.ndarray, normative_pet: np.ndarray,
                 atlases: Sequence[str] | None = None) -> None:
        self.normative_pet = np.asarray(normative_pet, np.float64)
        self.stats: dict[str, RegionStats] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # regions lost on a coarse grid are recorded elsewhere
            for name in atlases or list_atlases():
                self.stats[name] = RegionStats(Atlas.load(name).resample_to(grid), mask)
            main = Atlas.load(DEFAULT_ATLAS).resample_to(grid)
        # The same cortex as scoring uses (anomaly.cli.scorer builds it the same way).
        self.cortex = cortex_mask(grid, mask, main)
        self.hemispheres = hemisphere_masks(grid.affine, self.cortex)
        self.ratios: dict[str, list[np.ndarray]] = {name: [] for name in self.stats}
        self.best: list[float] = []
        self.whole: list[float] = []

    def add(self, pet: np.ndarray) -> None:
        """Add one control's PET SUVR on the grid (0 where its image does not cover)."""
        values = covered_pet(pet)
        own_cortex = cortical_mean(values, self.cortex)
        for name, stats in self.stats.items():
            self.ratios[name].append(pet_log_ratios(stats.means(values), own_cortex))
        levels = [v for v in hemisphere_levels(values, self.normative_pet, self.hemispheres).values()
                  if np.isfinite(v)]  # on whole grids here: speed does not matter at fit
        self.best.append(max(levels) if levels else np.nan)
        covered = self.cortex & np.isfinite(values)
        normal = float(self.normative_pet[covered].mean()) if covered.any() else np.nan
        self.whole.append(100.0 * own_cortex / normal if normal > 0 else np.nan)

    def finalise(self) -> PETNorms:
        """The norms of the controls added so far."""
        log_ratio = {}
        for name, stats in self.stats.items():
            ratios = np.array(self.ratios[name]).reshape(-1, len(stats.index))
            log_ratio[name] = LogRatioNorm.from_ratios(stats.index, stats.n_voxels, ratios)
        return PETNorms(log_ratio=log_ratio, global_level=GlobalLevelNorm.from_levels(self.best, self.whole))


def fit_pet_norms(loaders: Sequence[Callable[[], np.ndarray | None]], grid: Grid, mask: np.ndarray,
                  normative_pet: np.ndarray) -> PETNorms:
    """The controls' PET norms from a loader per control.

    Parameters
    ----------
    loaders : sequence of callable
        Each returns one control's PET SUVR on the grid, or None for a control
        without PET (read one at a time, so memory stays flat).
    grid : Grid
    mask : ndarray of bool
        The model's brain mask.
    normative_pet : ndarray
        The controls' mean PET SUVR image.

    Returns
    -------
    PETNorms
    """
    acc = PETLevelAccumulator(grid, mask, normative_pet)
    for load in loaders:
        pet = load()
        if pet is not None:
            acc.add(pet)
    return acc.finalise()
