"""Reading a simulated patient's ground truth for voxel detection scores.

The simulator writes, per patient, under ``derivatives/simulation/sub-<l>/``:

- ``desc-lesion_mask``: voxels where any image differs by more than 10 % from a healthy
  version of the same subject (global hypometabolism, focal damage, distractors);
- ``desc-focal_mask``: voxels that differ by more than 10 % from a version with the same
  global level but no focal damage or distractors;
- ``desc-brain_mask``: the subject's own brain (cohorts simulated before it was written
  have none).

Focal detection is scored over the subject's brain voxels, the focal voxels as positives
and the voxels outside the lesion mask as negatives: voxels abnormal only through the
global level are left out. The brain is the subject's, not the template's: after 3-8 mm
of residual deformation and atrophy, the template mask holds sulcal and ventricular CSF
whose PET carries the blurred cortical drop of global hypometabolism, which the truth
masks (drawn inside the subject's brain) would count as healthy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["TruthMasks", "read_truth"]


@dataclass(frozen=True)
class TruthMasks:
    """One patient's truth on a grid: ``focal``, ``changed`` (the lesion mask), ``brain``."""

    focal: np.ndarray
    changed: np.ndarray
    brain: np.ndarray

    @property
    def focal_evaluated(self) -> np.ndarray:
        """Brain voxels that focal detection is scored on: focal, or unchanged."""
        return self.brain & ~(self.changed & ~self.focal)


def read_truth(truth_dir: str | Path, label: str, grid, fallback_brain: np.ndarray) -> TruthMasks:
    """A simulated patient's truth masks, resampled to ``grid`` (nearest neighbour).

    Parameters
    ----------
    truth_dir : str or Path
        ``derivatives/simulation`` of a simulated cohort.
    label : str
        Participant label without ``sub-``.
    grid : anomaly.preprocess.Grid
        Grid of the maps to score.
    fallback_brain : ndarray of bool
        Brain mask on ``grid`` used where the cohort has no ``desc-brain_mask`` (e.g. the
        model's mask).

    Returns
    -------
    TruthMasks
    """
    from anomaly.preprocess import resample_to_grid

    prefix = Path(truth_dir) / f"sub-{label}" / f"sub-{label}_desc-"

    def mask(desc: str) -> np.ndarray:
        return resample_to_grid(f"{prefix}{desc}_mask.nii.gz", grid, interpolation="nearest") > 0.5

    brain = mask("brain") if Path(f"{prefix}brain_mask.nii.gz").exists() else np.asarray(fallback_brain, bool)
    return TruthMasks(focal=mask("focal"), changed=mask("lesion"), brain=brain)
