"""Region masks that QC needs on a model grid: PET reference regions and the cortex."""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np

from anomaly.atlas import DEFAULT_ATLAS, Atlas, cortex_mask
from anomaly.preprocess import Grid, template_images

#: Neuromorphometrics name patterns of the PET reference regions ("global" is the brain).
REFERENCE_PATTERNS = {"cerebellum": "Cerebell", "brainstem": "Brain_Stem"}


def qc_masks(grid: Grid) -> dict[str, np.ndarray]:
    """Boolean masks on ``grid``: "brain", "cerebellum", "brainstem", "global" and "cortex".

    Parameters
    ----------
    grid : Grid
        The model grid.

    Returns
    -------
    dict of str to numpy.ndarray
        Read-only masks (cached per grid). "global" is the brain mask.
    """
    return dict(_qc_masks(grid))


@lru_cache(maxsize=4)
def _qc_masks(grid: Grid) -> dict[str, np.ndarray]:
    brain = template_images(grid)["mask"] > 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # labels too small for a coarse grid do not matter here
        atlas = Atlas.load(DEFAULT_ATLAS).resample_to(grid)
        masks = {name: atlas.region_mask(pattern) & brain for name, pattern in REFERENCE_PATTERNS.items()}
    masks.update(brain=brain, cortex=cortex_mask(grid, brain, atlas))
    masks["global"] = brain
    for mask in masks.values():
        mask.setflags(write=False)
    return masks
