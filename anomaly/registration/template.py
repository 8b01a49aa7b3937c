"""The registration target: nilearn's MNI152 2009 T1 template and brain mask on a grid.

The target grid is the model grid of :func:`anomaly.preprocess.make_grid` (MNI152 space
cropped to the brain), so that prepared images need no further resampling by the
models. The templates ship with nilearn: nothing is downloaded.
"""

from __future__ import annotations

import nibabel as nib

from anomaly.preprocess import Grid, make_grid, template_images

__all__ = ["SPACE", "target_images"]

#: The BIDS ``space-`` label of the prepared images (nilearn's MNI152 2009 template).
SPACE = "MNI152NLin2009cAsym"


def target_images(resolution: float) -> tuple[Grid, nib.Nifti1Image, nib.Nifti1Image]:
    """The target grid, T1 template and brain mask at a resolution.

    Parameters
    ----------
    resolution : float
        Voxel size in mm (at least 1).

    Returns
    -------
    grid : Grid
        The model grid at ``resolution``.
    template : nibabel.Nifti1Image
        float32 T1 template (0..1) on ``grid``.
    mask : nibabel.Nifti1Image
        uint8 brain mask (0 or 1) on ``grid``.
    """
    grid = make_grid(resolution)
    images = template_images(grid)
    return grid, grid.to_image(images["t1"], "float32"), grid.to_image(images["mask"] > 0.5, "uint8")
