"""CRS-R explanation and group maps: region values painted on an atlas, voxel-wise means.

Painting itself is :func:`anomaly.atlas.paint_regions`; this module resolves the atlas
on the grid of the subjects' maps (once per grid) and builds the maps that
``anomaly predict`` and ``anomaly group`` write. Drawing them is the CLI's business.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from anomaly.atlas import Atlas, paint_regions
from anomaly.constants import SPACE
from anomaly.io import AnomalyInputError, read_map
from anomaly.preprocess import resample_image

__all__ = ["AtlasLabels", "anomaly_map_path", "crs_relevant_map", "load_atlas_on", "load_float_map", "mean_image",
           "paint"]


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
    source = os.fspath(atlas) if isinstance(atlas, os.PathLike) else atlas
    resampled = Atlas.load(source).resample_to(reference_img)
    return nib.Nifti1Image(np.asarray(resampled.label_array(), dtype=np.int32), reference_img.affine)


def paint(label_img: nib.spatialimages.SpatialImage, values: Mapping[int, float]) -> nib.Nifti1Image:
    """Region values painted on the voxels of ``label_img`` (see :func:`anomaly.atlas.paint_regions`)."""
    return paint_regions(np.asarray(label_img.dataobj), label_img.affine, values)


class AtlasLabels:
    """The atlas on the grid of each map, resolved once per grid.

    An atlas that cannot be resolved is not an error for the maps' callers (the tables
    are written anyway): :meth:`on` and :meth:`native` return None from then on and
    :attr:`error` says why.

    Parameters
    ----------
    atlas : str, path or nibabel image
    """

    def __init__(self, atlas: Any) -> None:
        self.atlas = atlas
        self.cache: dict[tuple, Any] = {}
        self.error: str | None = None

    def on(self, ref_img: Any) -> nib.Nifti1Image | None:
        """Label image on the grid of ``ref_img`` (None once resolving failed)."""
        if self.error is not None:
            return None
        key = (tuple(ref_img.shape[:3]), np.round(np.asarray(ref_img.affine), 4).tobytes())
        if key not in self.cache:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.cache[key] = load_atlas_on(self.atlas, ref_img)
            except (AnomalyInputError, OSError, KeyError, ValueError) as exc:
                self.error = f"cannot resolve atlas {self.atlas!r} ({exc}); maps skipped"
                return None
        return self.cache[key]

    def native(self) -> nib.Nifti1Image | None:
        """The atlas on its own grid (when no subject map gives a grid)."""
        if self.error is not None:
            return None
        if isinstance(self.atlas, nib.spatialimages.SpatialImage):
            return self.on(self.atlas)
        if isinstance(self.atlas, (str, os.PathLike)) and str(self.atlas).endswith((".nii", ".nii.gz")):
            return self.on(read_map(self.atlas, str(self.atlas)))
        try:
            return self.on(Atlas.load(self.atlas).image)
        except Exception as exc:  # noqa: BLE001 - any failure means: no maps, say why
            self.error = f"cannot resolve atlas {self.atlas!r} ({exc.__class__.__name__}: {exc}); maps skipped"
            return None


def anomaly_map_path(scores_dir: Path, pid: str) -> Path | None:
    """The subject's combined anomaly map in ``scores_dir`` (template space preferred), or None."""
    found = sorted((scores_dir / pid).glob(f"{pid}_*stat-anomaly_statmap.nii.gz"))
    preferred = [p for p in found if SPACE in p.name]
    return (preferred or found or [None])[0]


def load_float_map(path: Path) -> nib.Nifti1Image:
    """A map as float32 data on its own affine (read through the toolkit's map reader)."""
    img = read_map(path, str(path))
    return nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)


def crs_relevant_map(anomaly_img: nib.spatialimages.SpatialImage, labels: nib.spatialimages.SpatialImage,
                     attention: Mapping[int, float]) -> nib.Nifti1Image:
    """The anomaly map weighted by its region's attention x R (uniform attention leaves it unchanged)."""
    n_regions = len(attention)
    weight = paint(labels, {k: v * n_regions for k, v in attention.items()})
    relevant = np.asarray(anomaly_img.dataobj, dtype=np.float32) * np.asarray(weight.dataobj)
    return type(anomaly_img)(np.nan_to_num(relevant), anomaly_img.affine)


def mean_image(paths: Sequence[Path]) -> nib.Nifti1Image:
    """Voxel-wise mean of maps (resampled to the first map's grid if needed; NaN counts 0)."""
    ref = load_float_map(paths[0])
    acc = np.zeros(ref.shape[:3], dtype=np.float64)
    for p in paths:
        img = load_float_map(p)
        if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine, atol=1e-4):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = resample_image(img, target_affine=ref.affine, target_shape=ref.shape[:3])
        acc += np.nan_to_num(np.asarray(img.dataobj, dtype=np.float64))
    return nib.Nifti1Image((acc / len(paths)).astype(np.float32), ref.affine)
