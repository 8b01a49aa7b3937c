"""The healthy template: nilearn's MNI152 tissue maps and the atlas on one grid.

**Grid.** nilearn's MNI152 2009 template grid at the requested resolution (whole mm,
RAS+, e.g. 99 x 117 x 95 voxels at 2 mm). Nothing is downloaded: the templates ship
with nilearn and the Neuromorphometrics atlas with this package.

Tissue probability maps are nilearn's grey matter (GM) and white matter (WM)
templates inside the brain mask (cerebrospinal fluid is the rest, see
:mod:`anomaly.simulate.anatomy`). Atlas labels (nearest neighbour, holes in the brain
filled with the nearest label) follow the tissue maps. Everything is cropped to a box
around the brain, where subjects are computed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache

import nibabel as nib
import numpy as np
from scipy import ndimage

from anomaly.simulate.config import ATLAS, CAUSAL_FAMILIES, DISTRACTOR_REGIONS

__all__ = ["Template", "load_template"]

_VENTRICLES = ("Left_Lateral_Ventricle", "Right_Lateral_Ventricle")


@dataclass(frozen=True, eq=False)
class Template:
    """Per-resolution anatomy, computed once per process (see :func:`load_template`)."""

    resolution: float
    shape: tuple[int, int, int]
    affine: np.ndarray
    box: tuple[slice, slice, slice]  # computation box inside the full grid
    gm: np.ndarray  # float32, box
    wm: np.ndarray
    mask: np.ndarray
    outside_mm: np.ndarray  # distance to the brain mask (mm), box
    ventricle_mm: np.ndarray  # distance to the lateral ventricles (mm), box
    labels: np.ndarray  # int32, box; brain holes filled with the nearest label
    names: dict[str, int]  # region name -> label index

    @property
    def box_shape(self) -> tuple[int, int, int]:
        """Shape of the computation box."""
        return self.gm.shape


@lru_cache(maxsize=2)
def load_template(resolution: float) -> Template:
    """Load nilearn's MNI152 templates and the atlas on the template grid (cached)."""
    t1, mask, gm, wm = _tissue_maps(int(round(resolution)))  # nilearn wants an int
    labels, names = _atlas_labels(t1, mask, resolution)
    outside = ndimage.distance_transform_edt(~mask).astype(np.float32) * resolution
    ventricle = _ventricle_distance(mask, gm, wm, labels, names, resolution)
    box = _brain_box(mask, resolution)

    def crop(a: np.ndarray) -> np.ndarray:
        out = np.ascontiguousarray(a[box])
        out.setflags(write=False)
        return out

    return Template(
        resolution=float(resolution),
        shape=tuple(int(n) for n in t1.shape),
        affine=np.array(t1.affine, dtype=np.float64),
        box=box,
        gm=crop(gm),
        wm=crop(wm),
        mask=crop(mask.astype(np.float32)),
        outside_mm=crop(outside),
        ventricle_mm=crop(ventricle),
        labels=crop(labels),
        names=names,
    )


def _tissue_maps(mm: int) -> tuple[nib.Nifti1Image, np.ndarray, np.ndarray, np.ndarray]:
    """T1 template image, brain mask (bool) and GM, WM probabilities (float32, GM + WM <= 1)."""
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=mm)
    maps = {
        "gm": datasets.load_mni152_gm_template(resolution=mm),
        "wm": datasets.load_mni152_wm_template(resolution=mm),
        "mask": datasets.load_mni152_brain_mask(resolution=mm),
    }
    arrays = {}
    for key, img in maps.items():
        if img.shape != t1.shape or not np.allclose(img.affine, t1.affine):
            raise RuntimeError(f"nilearn's MNI152 {key} template is not on the T1 grid")
        arrays[key] = np.asarray(img.get_fdata(dtype=np.float32))
    mask = arrays["mask"] > 0.5
    gm = np.where(mask, np.clip(arrays["gm"], 0, 1), 0).astype(np.float32)
    wm = np.where(mask, np.clip(arrays["wm"], 0, 1), 0).astype(np.float32)
    wm = np.minimum(wm, 1.0 - gm)  # keep GM + WM <= 1
    return t1, mask, gm, wm


def _atlas_labels(t1: nib.Nifti1Image, mask: np.ndarray,
                  resolution: float) -> tuple[np.ndarray, dict[str, int]]:
    """Atlas label of every brain voxel (int32) and the region name -> index map."""
    from anomaly.atlas import Atlas

    with warnings.catch_warnings():
        # Tiny regions (vessels, optic chiasm) vanish at 3-4 mm; none is used here.
        warnings.simplefilter("ignore", UserWarning)
        atlas = Atlas.load(ATLAS).resample_to(t1)
    labels = atlas.label_array().astype(np.int32)
    names = {str(n): int(i) for i, n in zip(atlas.labels["index"], atlas.labels["name"])}
    needed = [r for family in CAUSAL_FAMILIES.values() for r in family]
    needed += [*DISTRACTOR_REGIONS, *_VENTRICLES]
    absent = [r for r in needed if r not in names]
    if absent:
        raise RuntimeError(f"atlas {ATLAS!r} lacks regions {absent} at {resolution} mm")
    # Every brain voxel needs a label (the atlas and nilearn's mask disagree at edges).
    _, nearest = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    return np.where(mask, labels[tuple(nearest)], 0).astype(np.int32), names


def _ventricle_distance(mask: np.ndarray, gm: np.ndarray, wm: np.ndarray, labels: np.ndarray,
                        names: dict[str, int], resolution: float) -> np.ndarray:
    """Distance (mm) to the lateral ventricles: atlas ventricles where the template is CSF."""
    csf = mask - gm - wm
    seed = np.isin(labels, [names[r] for r in _VENTRICLES])
    seed &= csf > 0.5
    return ndimage.distance_transform_edt(~seed).astype(np.float32) * resolution


def _brain_box(mask: np.ndarray, resolution: float) -> tuple[slice, slice, slice]:
    """The brain plus room for deformation and for the PET point-spread function."""
    margin = int(math.ceil(30.0 / resolution))
    hits = np.argwhere(mask)
    lo = np.maximum(hits.min(0) - margin, 0)
    hi = np.minimum(hits.max(0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
