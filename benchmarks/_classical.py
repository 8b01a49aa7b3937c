"""The classical voxelwise z-score reference of /work/shared/EVALUATION.md, on a model grid.

PET divided by its cerebellar mean, T1w divided by its brain mean, voxelwise z against
the controls (mean and SD per voxel), anomaly ``max(-z_pet, |z_t1|, 0)`` smoothed with
a 4 mm FWHM Gaussian. The independent evaluation's headline is the tool's focal AUPRC
divided by this reference's, so the detection benchmark computes it in the same run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

FWHM_MM = 4.0


class ClassicalReference:
    """Voxelwise z of PET/cerebellum and T1w/brain mean against controls, ``max(-z_pet, |z_t1|, 0)``.

    Parameters
    ----------
    grid : anomaly.preprocess.Grid
        Grid the images are resampled to (linear interpolation).
    mask : ndarray of bool
        Brain mask on the grid.
    cerebellum : ndarray of bool
        Cerebellum mask on the grid (PET reference region).
    """

    def __init__(self, grid, mask: np.ndarray, cerebellum: np.ndarray) -> None:
        self.grid = grid
        self.mask = mask
        self.cerebellum = cerebellum & mask

    def _normalised(self, images: dict) -> dict[str, np.ndarray]:
        from anomaly.preprocess import resample_to_grid

        out = {}
        if "pet" in images:
            pet = resample_to_grid(images["pet"], self.grid, interpolation="linear")
            out["pet"] = pet / max(float(pet[self.cerebellum].mean()), 1e-6)
        if "T1w" in images:
            t1 = resample_to_grid(images["T1w"], self.grid, interpolation="linear")
            out["T1w"] = t1 / max(float(t1[self.mask].mean()), 1e-6)
        return out

    def fit(self, controls: Sequence) -> ClassicalReference:
        """Voxelwise mean and SD of the normalised control images."""
        sums: dict[str, list[np.ndarray]] = {}
        for subject in controls:
            for m, a in self._normalised(subject.images).items():
                s = sums.setdefault(m, [np.zeros_like(a, np.float64), np.zeros_like(a, np.float64), 0])
                s[0] += a
                s[1] += a.astype(np.float64) ** 2
                s[2] += 1
        self.mean_, self.sd_ = {}, {}
        for m, (s1, s2, n) in sums.items():
            mean = s1 / n
            var = np.maximum(s2 / n - mean**2, 0) * n / max(n - 1, 1)
            sd = np.sqrt(var)
            floor = max(float(np.quantile(sd[self.mask], 0.05)), 1e-6)
            self.mean_[m], self.sd_[m] = mean.astype(np.float32), np.maximum(sd, floor).astype(np.float32)
        return self

    def anomaly(self, images: dict) -> np.ndarray:
        """The smoothed anomaly map of one subject on the grid (0 outside the mask)."""
        norm = self._normalised(images)
        parts = [np.zeros(self.mask.shape, np.float32)]
        if "pet" in norm and "pet" in self.mean_:
            parts.append(-(norm["pet"] - self.mean_["pet"]) / self.sd_["pet"])
        if "T1w" in norm and "T1w" in self.mean_:
            parts.append(np.abs((norm["T1w"] - self.mean_["T1w"]) / self.sd_["T1w"]))
        anomaly = np.maximum.reduce(parts) * self.mask
        sigma = FWHM_MM / math.sqrt(8 * math.log(2)) / float(self.grid.resolution)
        return (ndimage.gaussian_filter(anomaly, sigma) * self.mask).astype(np.float32)
