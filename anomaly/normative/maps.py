"""The maps a normative model gives for one subject, and how modalities combine.

Combined anomaly map: each modality contributes its z in the direction a lesion pushes
it (:data:`anomaly.constants.LESION_SIGN`: lower T1w signal and lower FDG uptake,
higher FLAIR/T2w signal; both ways, ``|z|``, for a two-sided modality such as ADC or
one the toolkit does not know), clipped at zero; the map is the mean of these over the
modalities present, so it is >= 0, in z units, and comparable between subjects missing
different modalities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from anomaly.constants import lesion_sign
from anomaly.preprocess import Grid


@dataclass
class SubjectScore:
    """Voxel maps of one scored subject, all on the model grid.

    Attributes
    ----------
    z : ndarray, shape (C, X, Y, Z)
        Signed z map per modality; NaN for modalities the subject lacks.
    anomaly : ndarray, shape (X, Y, Z)
        Combined non-negative anomaly map.
    present : ndarray of bool, shape (C,)
    modalities : list of str
    data : ndarray, shape (C, X, Y, Z)
        Normalised input intensities (MRI robust z, PET SUVR).
    qc : dict
        Preprocessing quality checks.
    grid : Grid
    """

    z: np.ndarray
    anomaly: np.ndarray
    present: np.ndarray
    modalities: list[str]
    data: np.ndarray
    qc: dict
    grid: Grid

    def to_image(self, array: np.ndarray) -> nib.Nifti1Image:
        """Wrap a map of this subject as a NIfTI image in MNI space."""
        return self.grid.to_image(np.asarray(array, np.float32))


def combine_anomaly(z: np.ndarray, present: np.ndarray, modalities: Sequence[str],
                    mask: np.ndarray, directions: dict[str, str] | None = None) -> np.ndarray:
    """Mean over present modalities of the lesion-direction z, clipped at zero.

    ``directions`` (modality -> "lower" | "higher" | "both") overrides the built-in
    lesion directions (:func:`anomaly.constants.lesion_sign`). NaN voxels of a modality (outside its image's field of view) are left out of the
    mean at that voxel, so a partial scan does not dilute or fake an anomaly.
    """
    total = np.zeros(mask.shape, np.float32)
    count = np.zeros(mask.shape, np.float32)
    for c, m in enumerate(modalities):
        if not present[c]:
            continue
        sign = lesion_sign(m, directions)
        part = np.abs(z[c]) if sign == 0 else np.clip(sign * z[c], 0, None)
        covered = np.isfinite(part)
        total += np.where(covered, part, 0.0)  # sums in place: no stacked copy of the maps
        count += covered
    anomaly = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return (anomaly * mask).astype(np.float32, copy=False)
