"""Painting region values on an atlas grid and drawing glass brains for the CRS-R maps."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

__all__ = ["load_atlas_on", "paint_regions", "plot_glass_brain"]


def load_atlas_on(atlas: Any, reference_img: nib.spatialimages.SpatialImage) -> nib.Nifti1Image:
    """Integer label image of ``atlas`` on the grid of ``reference_img``.

    Parameters
    ----------
    atlas : str, path or nibabel image
        A shipped atlas name, or a user atlas label NIfTI (with its dseg.tsv next to
        it), as accepted by :meth:`anomaly.atlas.Atlas.load`.
    reference_img : nibabel image
        Target grid (nearest-neighbour resampling: labels are never blended).

    Raises
    ------
    anomaly.io.AnomalyInputError
        Unknown atlas name or unreadable atlas file.
    """
    from anomaly.atlas import Atlas

    source = os.fspath(atlas) if isinstance(atlas, os.PathLike) else atlas
    resampled = Atlas.load(source).resample_to(reference_img)
    return nib.Nifti1Image(np.asarray(resampled.label_array(), dtype=np.int32), reference_img.affine)


def paint_regions(label_img: nib.spatialimages.SpatialImage, values: Mapping[int, float]) -> nib.Nifti1Image:
    """One value per region label painted on the voxels of ``label_img`` (float32, 0 elsewhere)."""
    labels = np.asarray(label_img.dataobj).astype(np.int64)
    lut_index = np.fromiter((int(k) for k in values), dtype=np.int64, count=len(values))
    lut_value = np.fromiter((float(v) for v in values.values()), dtype=np.float64, count=len(values))
    out = np.zeros(labels.shape, dtype=np.float32)
    if lut_index.size:
        # Vectorised lookup: position of each voxel's label among the painted ones.
        order = np.argsort(lut_index)
        pos = np.clip(np.searchsorted(lut_index[order], labels), 0, lut_index.size - 1)
        hit = lut_index[order][pos] == labels
        out[hit] = np.nan_to_num(lut_value[order][pos][hit]).astype(np.float32)
    return nib.Nifti1Image(out, label_img.affine)


def plot_glass_brain(img: Any, out_png: str | os.PathLike, *, title: str | None = None, signed: bool = False) -> Path:
    """Glass-brain PNG via :mod:`anomaly.report.figures` (imported here, at call time).

    Non-negative maps (attention, anomaly) use ``plot_anomaly_glass_brain``; signed maps
    (correlations) ``plot_signed_glass_brain`` with ``plot_abs=False``, a symmetric
    colour bar and every non-zero region drawn.
    """
    # Plotting sits above crs in the layering; the import is local to this helper
    # so that importing anomaly.crs never pulls in matplotlib.
    from anomaly.report.figures import plot_anomaly_glass_brain, plot_signed_glass_brain

    if signed:
        return Path(plot_signed_glass_brain(img, out_png, title=title, threshold=0.0))
    return Path(plot_anomaly_glass_brain(img, out_png, title=title))
