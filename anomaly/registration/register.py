"""ANTs registrations: T1w to the template, other volumes to the T1w, applying transforms.

ANTsPy (``antspyx``) is imported inside the functions: importing it is slow and only
``anomaly prepare`` needs it. No ANTs data fetcher is ever called (they download):
the target images come from :mod:`anomaly.registration.template`.

Transforms follow the ANTs convention: a list applied last-to-first, mapping points of
the fixed image to the moving image (so that the moving image is resampled onto the
fixed grid). :func:`register_t1w` writes composite ``.h5`` files; :func:`coregister`
writes one ``.mat`` affine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from anomaly.io import AnomalyInputError

__all__ = ["MODES", "RegistrationMode", "apply_transforms", "coregister", "register_t1w"]


@dataclass(frozen=True)
class RegistrationMode:
    """Settings of one ``--registration`` choice.

    Attributes
    ----------
    transform : str
        ANTsPy ``type_of_transform`` of the T1w-to-template registration (rigid, then
        affine, then SyN).
    template_mm : float
        Finest voxel size of the template the T1w is registered to: the template is
        at the output resolution, but never finer than this (a finer template costs
        time and gives a finer warp).
    """

    transform: str
    template_mm: float


#: ``--registration`` choices. "fast": ANTs' quick SyN script (mutual information, fewer
#: iterations, no full-resolution SyN level), template at 2 mm or coarser; "accurate":
#: the full SyN script (cross-correlation, more iterations at every level), template at
#: the output resolution down to 1 mm. Both "Repro" variants, with a fixed ANTs seed and
#: one ITK thread (see :func:`_ants`): the same subject gives the same images every run.
MODES: dict[str, RegistrationMode] = {
    "fast": RegistrationMode("antsRegistrationSyNQuickRepro[s]", 2.0),
    "accurate": RegistrationMode("antsRegistrationSyNRepro[s]", 1.0),
}


#: Voxel size (mm) of the working grid of the rigid co-registrations (images finer than
#: this are resampled to it first). Dense mutual information is computed over the whole
#: T1w grid, so the native 1 x 1 x 1.3 mm grid cost about 100 CPU-seconds per volume;
#: at 3 mm it costs about 15, and the measured error against the simulated truth stayed
#: 0.2-0.4 mm (0.2-0.4 mm on a 2 mm working grid too): README, "Native-space input".
COREGISTER_MM = 3.0
#: Rigid co-registration schedule on the working grid: iterations, shrink factors and
#: smoothing sigmas (voxels) per level.
COREGISTER_LEVELS = ((200, 100, 25), (4, 2, 1), (2, 1, 0))


def _ants() -> Any:
    """The ``ants`` module, set up so that registrations are reproducible.

    ANTs draws its metric samples from a clock seed unless told otherwise: a fixed seed
    makes them the same from run to run. Mattes mutual information on several ITK
    threads still differs slightly between runs (measured: a PET co-registration moved
    by up to 0.6 degrees), so ANTs runs on one thread per process unless the user set
    ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` (``prepare --jobs`` registers subjects in
    parallel instead). Both are read when ITK starts: set before the first import.
    """
    import os

    os.environ.setdefault("ANTS_RANDOM_SEED", "1")
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    import ants  # slow import: only when registering

    return ants


def to_ants(img: nib.spatialimages.SpatialImage) -> Any:
    """An ANTs image of a 3D nibabel image (float32)."""
    data = np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32)
    plain = nib.Nifti1Image(data, img.affine)
    plain.header.set_xyzt_units("mm", "sec")  # else ANTs prints a warning per image
    return _ants().from_nibabel_nifti(plain)


def to_nibabel(img: Any) -> nib.Nifti1Image:
    """A nibabel image (float32) of an ANTs image."""
    out = _ants().to_nibabel_nifti(img)
    return nib.Nifti1Image(np.asarray(out.dataobj, dtype=np.float32), out.affine)


def register_t1w(t1w: nib.spatialimages.SpatialImage, template: nib.spatialimages.SpatialImage,
                 mode: RegistrationMode, prefix: Path, label: str) -> tuple[Path, Path]:
    """Register a native T1w to the template: rigid, affine, then SyN.

    Parameters
    ----------
    t1w : nibabel image
        The subject's native T1w.
    template : nibabel image
        The T1 template (fixed image).
    mode : RegistrationMode
        Transform type (see :data:`MODES`).
    prefix : pathlib.Path
        Output prefix of the ANTs files (a scratch folder).
    label : str
        Name of the image in error messages.

    Returns
    -------
    forward, inverse : pathlib.Path
        Composite transforms: template points to T1w points (resamples the T1w onto
        the template grid) and the inverse (resamples template-space images onto the
        T1w grid).

    Raises
    ------
    AnomalyInputError
        If ANTs fails (e.g. the image holds no usable signal).
    """
    ants = _ants()
    try:
        result = ants.registration(fixed=to_ants(template), moving=to_ants(t1w),
                                   type_of_transform=mode.transform, outprefix=str(prefix),
                                   write_composite_transform=True)
    except (RuntimeError, ValueError) as exc:
        raise AnomalyInputError(f"{label}: registration to the MNI152 template failed ({exc})") from exc
    return Path(result["fwdtransforms"]), Path(result["invtransforms"])


def coregister(moving: nib.spatialimages.SpatialImage, fixed: nib.spatialimages.SpatialImage,
               prefix: Path, label: str) -> Path:
    """Rigid registration of one volume to the subject's T1w by mutual information.

    Mattes mutual information copes with any pair of contrasts (PET to T1w included). It
    is computed on every voxel (ANTs' "DenseRigid"): the default random 20% sample made
    the result change from run to run, and now and then land a FLAIR far off the T1w.
    Both images are first resampled to a :data:`COREGISTER_MM` grid (a rigid transform
    maps world coordinates, so it does not depend on the grids it was estimated on).

    Parameters
    ----------
    moving : nibabel image
        The volume (FLAIR, PET, ADC...).
    fixed : nibabel image
        The subject's native T1w.
    prefix : pathlib.Path
        Output prefix of the ANTs file.
    label : str
        Name of the moving image in error messages.

    Returns
    -------
    pathlib.Path
        The ``.mat`` affine: T1w points to ``moving`` points.
    """
    ants = _ants()
    iterations, shrink, sigmas = COREGISTER_LEVELS
    try:
        result = ants.registration(fixed=_working_grid(to_ants(fixed)), moving=_working_grid(to_ants(moving)),
                                   type_of_transform="Rigid", aff_metric="mattes", aff_random_sampling_rate=1.0,
                                   aff_iterations=iterations, aff_shrink_factors=shrink,
                                   aff_smoothing_sigmas=sigmas, outprefix=str(prefix))
    except (RuntimeError, ValueError) as exc:
        raise AnomalyInputError(f"{label}: rigid registration to the T1w failed ({exc})") from exc
    return Path(result["fwdtransforms"][0])


def _working_grid(img: Any) -> Any:
    """An ANTs image on a :data:`COREGISTER_MM` grid (same field of view, linear
    interpolation); an image already that coarse is returned as it is."""
    if min(img.spacing) >= COREGISTER_MM:
        return img
    return _ants().resample_image(img, (COREGISTER_MM,) * 3, use_voxels=False, interp_type=0)


def apply_transforms(img: nib.spatialimages.SpatialImage, reference: nib.spatialimages.SpatialImage,
                     transforms: list[Path], *, labels: bool = False) -> nib.Nifti1Image:
    """Resample ``img`` onto the grid of ``reference`` through ANTs transforms.

    Parameters
    ----------
    img : nibabel image
        Image to move.
    reference : nibabel image
        Defines the output grid.
    transforms : list of pathlib.Path
        ANTs transforms, applied last to first (reference points to ``img`` points).
    labels : bool, default=False
        Nearest-neighbour interpolation (masks, label images) instead of linear.

    Returns
    -------
    nibabel.Nifti1Image
        float32 image on the grid of ``reference``.
    """
    ants = _ants()
    moved = ants.apply_transforms(fixed=to_ants(reference), moving=to_ants(img),
                                  transformlist=[str(t) for t in transforms],
                                  interpolator="nearestNeighbor" if labels else "linear")
    return to_nibabel(moved)
